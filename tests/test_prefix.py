"""The frozen-prefix cache: where it cuts, that the head computes what the student computes,
when it is off and why, and that a cached run trains as an uncached one does."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from adntn_cli.data import Datasets
from adntn_cli.layers import GeneratedLinear
from adntn_cli.models import build_model
from adntn_cli.pipeline import compress
from adntn_cli.prefix import cache_frozen_prefix
from adntn_cli.runtime import MixedPrecision
from adntn_cli.tn import StructureSpec

CPU = torch.device("cpu")


def _data(n: int = 24, size: int = 12, augmented: bool = False) -> Datasets:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(n, 3, size, size, generator=g), torch.randint(0, 10, (n,), generator=g)
    return Datasets(TensorDataset(x[8:], y[8:]), TensorDataset(x[:8], y[:8]), 10, "toy", augmented)


def _replicating() -> nn.Sequential:
    """A VGG at a small input in miniature: the pool after the features replicates 8 values
    into 392, then the classifier."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        nn.AdaptiveAvgPool2d(7), nn.Flatten(), nn.Linear(392, 64), nn.ReLU(), nn.Dropout(0.5),
        nn.Linear(64, 10),
    )  # fmt: skip


def _student(teacher: nn.Module) -> nn.Module:
    student = copy.deepcopy(teacher)
    student[5] = GeneratedLinear.from_module(teacher[5], StructureSpec("ttn", bond_dim=3))
    student.requires_grad_(False)
    student[5].requires_grad_(True)
    return student


def _cache(student, teacher, data, **kw):
    options = {"train": "replaced", "mode": "auto", "device": CPU,
               "precision": MixedPrecision(), "batch": 8, **kw}  # fmt: skip
    return cache_frozen_prefix(student, teacher, data, ["5"], **options)


def test_the_cut_goes_before_a_pool_that_replicates_and_the_head_matches_the_student():
    teacher = _replicating().eval()
    student = _student(teacher).eval()
    data = _data()
    cache, decision = _cache(student, teacher, data)
    assert decision.used and decision.cut == "_2", decision  # the 1x1 pool's output: 8 values
    h, _, t = cache.data.train[:4]
    assert h.shape == (4, 8, 1, 1)
    x = torch.stack([data.train[i][0] for i in range(4)])
    with torch.no_grad():
        torch.testing.assert_close(cache.head(h), student(x))
        torch.testing.assert_close(t, teacher(x))
    held = [*cache.data.train[:][::2], cache.data.val[:][0]]  # outputs, teacher logits; val
    assert decision.bytes == sum(v.numel() * v.element_size() for v in held)


@pytest.mark.parametrize(
    ("kw", "augmented", "reason"),
    [
        ({"mode": "off"}, False, "distill.cache_frozen_prefix is off"),
        ({"train": "all"}, False, "distill.train is all"),
        ({}, True, "the training data is augmented"),
        ({"budget": 1000}, False, "the cache would take"),
    ],
)
def test_the_cache_is_off_with_its_reason(kw, augmented, reason):
    teacher = _replicating().eval()
    cache, decision = _cache(_student(teacher), teacher, _data(augmented=augmented), **kw)
    assert cache is None and not decision.used and reason in decision.reason


def test_a_prefix_never_holds_dropout():
    torch.manual_seed(0)
    teacher = nn.Sequential(
        nn.Dropout(0.1), nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(400, 64), nn.Linear(64, 10)
    ).eval()  # fmt: skip
    student = copy.deepcopy(teacher)
    student[3] = GeneratedLinear.from_module(teacher[3], StructureSpec("ttn", bond_dim=3))
    options = {"train": "replaced", "mode": "auto", "device": CPU,
               "precision": MixedPrecision(), "batch": 8}  # fmt: skip
    cache, decision = cache_frozen_prefix(student, teacher, _data(), ["3"], **options)
    assert cache is None and "before any dropout" in decision.reason


RECIPE = """\
version: 1
model: {{arch: demo_vgg, num_classes: 10, input_size: 32}}
layers:
  - {{select: classifier.0, bond_dim: 3}}
  - {{select: classifier.3, structure: tt, bond_dim: 3}}
distill:
  layerwise: {{steps: 5, batches: 1}}
  finetune: {{epochs: 2, lr: 1.0e-3, checkpoint_every: 100}}
  train: replaced
  cache_frozen_prefix: {mode}
data: {{batch_size: 16}}
"""


@pytest.mark.slow
def test_a_run_on_the_cached_prefix_ends_where_an_uncached_run_ends(tmp_path):
    from safetensors.torch import load_file

    torch.manual_seed(0)
    torch.save(build_model("demo_vgg", 10).state_dict(), tmp_path / "t.pt")
    runs = {}
    for mode in ("auto", "off"):
        (tmp_path / f"{mode}.yaml").write_text(RECIPE.format(mode=mode))
        report = compress(
            str(tmp_path / "t.pt"), tmp_path / f"{mode}.yaml", data="synthetic:96",
            out=tmp_path / mode, device="cpu",
        )  # fmt: skip
        runs[mode] = (report, load_file(str(tmp_path / mode / "model.safetensors")))
    assert runs["auto"][0]["frozen_prefix"]["used"] and runs["auto"][0]["frozen_prefix"]["cut"]
    assert not runs["off"][0]["frozen_prefix"]["used"]
    cached, plain = runs["auto"][1], runs["off"][1]
    assert cached.keys() == plain.keys()
    for key in cached:  # the same computation, the prefix's sums batched otherwise
        torch.testing.assert_close(cached[key], plain[key], rtol=1e-4, atol=1e-5, msg=key)
    frozen = "features.0.weight"
    teacher = torch.load(tmp_path / "t.pt", weights_only=True)
    assert torch.equal(cached[frozen], teacher[frozen])  # train: replaced left it alone
