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
    train, val = TensorDataset(x[12:], y[12:]), TensorDataset(x[:8], y[:8])
    select = TensorDataset(x[8:12], y[8:12])
    return Datasets(train, val, 10, "toy", augmented, select=select)


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
    h, _, t = cache.train[:4]
    assert h.shape == (4, 8, 1, 1)
    x = torch.stack([data.train[i][0] for i in range(4)])
    with torch.no_grad():
        torch.testing.assert_close(cache.head(h), student(x))
        torch.testing.assert_close(t, teacher(x))  # the teacher's head on the cached outputs
        h_select, y_select = cache.select[:]
        torch.testing.assert_close(cache.head(h_select), student(data.select[:][0]))
    assert torch.equal(y_select, data.select[:][1])
    held = [*cache.train[:][::2], h_select]  # outputs, teacher logits; selection outputs
    assert decision.bytes == sum(v.numel() * v.element_size() for v in held)


def _recalibrated(data: Datasets):
    """A teacher with a BatchNorm before the replaced layer "4", a student whose copy of it was
    recalibrated (as recalibrate_batchnorm leaves it: not the teacher's), and its cache."""
    torch.manual_seed(0)
    teacher = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(400, 32),
        nn.ReLU(), nn.Linear(32, 10),
    ).eval()  # fmt: skip
    student = copy.deepcopy(teacher)
    student[4] = GeneratedLinear.from_module(teacher[4], StructureSpec("ttn", bond_dim=3))
    student[1].running_mean += 1.0
    student.requires_grad_(False)
    cache, decision = cache_frozen_prefix(
        student, teacher, data, ["4"], train="replaced", mode="auto", device=CPU,
        precision=MixedPrecision(), batch=8,
    )  # fmt: skip
    assert decision.used
    return teacher, student, cache


def test_a_prefix_whose_batchnorm_was_recalibrated_gets_the_teachers_own_logits():
    data = _data()
    teacher, student, cache = _recalibrated(data)
    x = data.train[:][0]
    with torch.no_grad():
        torch.testing.assert_close(cache.train[:][2], teacher(x))
        torch.testing.assert_close(cache.head(cache.train[:][0]), student(x))


def test_the_validation_split_is_read_once_and_both_heads_compute_the_whole_models(tmp_path):
    teacher = _replicating().eval()
    student = _student(teacher).eval()
    data = _data()
    cache, _ = _cache(student, teacher, data, store=tmp_path)
    items, how = cache.validation()
    assert how.startswith("the validation images' output of _2 computed once")
    h, y = items[:]
    x, labels = data.val[:]
    assert torch.equal(y, labels) and h.shape == (8, 8, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(cache.head(h), student(x))
        torch.testing.assert_close(cache.teacher_head(h), teacher(x))
    stored, how = cache.validation(tmp_path)
    assert "written to" in how and len(list(tmp_path.glob("prefix-*.safetensors"))) == 2
    again, how = _cache(_student(teacher), teacher, data, store=tmp_path)[0].validation(tmp_path)
    assert "read from" in how and torch.equal(again[:][0], stored[:][0])


def test_the_validation_split_goes_through_the_teacher_when_its_prefix_is_another():
    _, _, cache = _recalibrated(_data())  # the dense model is not the teacher's head
    assert cache.validation() == (None, "the whole models on the validation images: the "
                                  "student's prefix is not the teacher's")  # fmt: skip


def test_validation_outputs_over_the_budget_are_not_cached(monkeypatch):
    teacher = _replicating().eval()
    cache, decision = _cache(_student(teacher), teacher, _data())
    monkeypatch.setattr("adntn_cli.prefix.CACHE_BUDGET", decision.bytes + 8 * 4 * 7)
    items, why = cache.validation()  # 8 images of 8 float32 values: one over
    assert items is None and "would take the cache over" in why


@pytest.mark.parametrize(
    ("kw", "augmented", "reason"),
    [
        ({"mode": "off"}, False, "distill.cache_frozen_prefix is off"),
        ({"train": "all"}, False, "distill.train is all"),
        ({}, True, "the training data is augmented"),
        ({"CACHE_BUDGET": 1000}, False, "the cache would take"),
    ],
)
def test_the_cache_is_off_with_its_reason(kw, augmented, reason, monkeypatch):
    kw = dict(kw)
    if "CACHE_BUDGET" in kw:
        monkeypatch.setattr("adntn_cli.prefix.CACHE_BUDGET", kw.pop("CACHE_BUDGET"))
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


PLAIN_RECIPE = """\
version: 1
model: {num_classes: 10, input_size: 16}
layers:
  - {select: "4", bond_dim: 3}
distill:
  layerwise: {steps: 5, batches: 1}
  finetune: {epochs: 1, lr: 1.0e-3}
  train: replaced
  cache_frozen_prefix: MODE
data: {batch_size: 16}
"""


def test_the_final_evaluation_on_the_cached_prefix_measures_what_the_whole_models_give(tmp_path):
    torch.manual_seed(0)
    teacher = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(512, 64), nn.ReLU(), nn.Linear(64, 10),
    )  # fmt: skip
    torch.save(teacher, tmp_path / "t.pt")  # a whole pickled module: no BatchNorm to recalibrate
    reports = {}
    for mode in ("auto", "off"):
        (tmp_path / f"{mode}.yaml").write_text(PLAIN_RECIPE.replace("MODE", mode))
        reports[mode] = compress(
            str(tmp_path / "t.pt"), tmp_path / f"{mode}.yaml", data="synthetic:96",
            out=tmp_path / mode, device="cpu", allow_pickle=True, prefix_cache=tmp_path / "store",
        )  # fmt: skip
    how = reports["auto"]["frozen_prefix"]["validation"]
    assert how.startswith("the validation images' output of") and "written to" in how
    assert reports["off"]["frozen_prefix"]["validation"] == ""
    for model in ("dense", "compressed"):
        cached, whole = reports["auto"]["accuracy"][model], reports["off"]["accuracy"][model]
        assert cached == pytest.approx(whole, rel=1e-4), model
    assert reports["auto"]["accuracy"]["agreement"] == reports["off"]["accuracy"]["agreement"]
    again = compress(
        str(tmp_path / "t.pt"), tmp_path / "auto.yaml", data="synthetic:96",
        out=tmp_path / "again", device="cpu", allow_pickle=True, prefix_cache=tmp_path / "store",
    )  # fmt: skip
    assert "read from" in again["frozen_prefix"]["validation"]
    assert again["accuracy"] == reports["auto"]["accuracy"]


def test_a_stored_prefix_is_read_back_and_a_changed_teacher_gets_another_file(tmp_path):
    teacher = _replicating().eval()
    data = _data()
    first, decision = _cache(_student(teacher), teacher, data, store=tmp_path)
    assert "written to" in decision.reason
    files = list(tmp_path.glob("prefix-*.safetensors"))
    assert len(files) == 1
    again, decision = _cache(_student(teacher), teacher, data, store=tmp_path)
    assert "read from" in decision.reason and str(files[0]) in decision.reason
    for a, b in zip([*first.train.tensors, *first.select.tensors],
                    [*again.train.tensors, *again.select.tensors], strict=True):  # fmt: skip
        assert torch.equal(a, b)
    with torch.no_grad():
        teacher[8].bias += 1.0  # the head alone changed: the teacher's logits differ
    _, decision = _cache(_student(teacher), teacher, data, store=tmp_path)
    assert "written to" in decision.reason
    assert len(list(tmp_path.glob("prefix-*.safetensors"))) == 2


def test_a_damaged_stored_prefix_is_an_error_that_says_what_to_do(tmp_path):
    from adntn_cli.errors import AdntnError

    teacher = _replicating().eval()
    _cache(_student(teacher), teacher, _data(), store=tmp_path)
    (path,) = tmp_path.glob("prefix-*.safetensors")
    path.write_bytes(b"not a safetensors file")
    with pytest.raises(AdntnError, match="delete it, and it is recomputed"):
        _cache(_student(teacher), teacher, _data(), store=tmp_path)


@pytest.mark.parametrize(
    ("train", "trains"),
    [("all", {"0", "5", "8"}), ("replaced", {"5"}), ("head", {"5", "8"})],
)
def test_distill_train_freezes_what_it_says_and_head_keeps_the_prefix_cacheable(train, trains):
    from adntn_cli.job import freeze

    teacher = _replicating().eval()
    student = _student(teacher).requires_grad_(True)
    freeze(student, ["5"], train)
    trained = {n.split(".")[0] for n, p in student.named_parameters() if p.requires_grad}
    assert trained == trains
    _, decision = _cache(student, teacher, _data(), train=train)
    assert decision.used == (train != "all")
