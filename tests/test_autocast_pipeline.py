"""The whole ``compress`` job under CPU bf16 autocast: the code path a CUDA run takes.

Two runs of demo_vgg (benchmarks/recipes/every-structure-{a,b}.yaml) put every structure on a
Conv2d and on a Linear layer (layer-wise fit, distillation, evaluation, save), with channels-last
forced on as it is on CUDA; the files then load and give the reported accuracy under the same
precision.
"""

from __future__ import annotations

import collections
import json
import math
from pathlib import Path

import pytest
import torch

from adntn_cli.data import loaders, make_datasets
from adntn_cli.evaluate import accuracy
from adntn_cli.io import load_compressed
from adntn_cli.layers import GeneratedLinear
from adntn_cli.models import build_model
from adntn_cli.pipeline import compress
from adntn_cli.runtime import MixedPrecision

RECIPES = Path(__file__).resolve().parent.parent / "benchmarks" / "recipes"  # gpu_checks.sh's too
SCHEDULES = {"contract", "materialise"}


@pytest.fixture()
def schedules(monkeypatch) -> collections.Counter:
    """(structure, schedule) of every generated Linear forward that ran under autocast."""
    seen: collections.Counter = collections.Counter()
    forward = GeneratedLinear.forward

    def spy(self, x):
        y = forward(self, x)
        if torch.is_autocast_enabled("cpu"):
            seen[(self.generator.spec.structure, self.last_schedule)] += 1
        return y

    monkeypatch.setattr(GeneratedLinear, "forward", spy)
    return seen


@pytest.mark.slow
@pytest.mark.parametrize(("run", "expected"), [("a", {"contract"}), ("b", SCHEDULES)])
def test_compress_under_cpu_bf16_autocast_trains_saves_and_loads(
    tmp_path, run, expected, schedules
):
    torch.manual_seed(0)
    torch.save(build_model("demo_vgg", 10).state_dict(), tmp_path / "t.pt")
    report = compress(
        str(tmp_path / "t.pt"), RECIPES / f"every-structure-{run}.yaml", data="synthetic:64",
        out=tmp_path / "run",
        device="cpu", channels_last=True,
    )  # fmt: skip
    assert report["precision"] == "bf16" and report["channels_last"] is True
    structures = {r["structure"] for r in report["layers"]}
    assert structures == {"ttn", "augttn", "mera", "tt", "lowrank"}
    assert all(math.isfinite(e["final"]) for e in report["layerwise"].values())
    history = (tmp_path / "run" / "metrics.csv").read_text().splitlines()[1:]
    assert history and all(math.isfinite(float(row.split(",")[1])) for row in history)
    # The cost model's schedules ran under autocast: run b's full aTTN materialises.
    assert {s for _, s in schedules} == expected, schedules

    model = load_compressed(tmp_path / "run" / "model.safetensors")
    _, val = loaders(make_datasets("synthetic:64", 32, 10), 16, seed=0)
    again = accuracy(model, val, "cpu", MixedPrecision("cpu", torch.bfloat16))
    assert again["top1"] == report["accuracy"]["compressed"]["top1"]
    with torch.no_grad():  # and in float32, as `adntn eval` runs it
        assert torch.isfinite(model(torch.randn(2, 3, 32, 32))).all()
    assert json.loads((tmp_path / "run" / "report.json").read_text())["precision"] == "bf16"
