"""The accuracy study runs through the job a user runs: a study cell and ``adntn compress`` with
the same recipe, seed and data write the same model file, byte for byte."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from adntn_cli.models import build_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks" / "accuracy"))
import cells


@pytest.mark.slow
def test_a_study_cell_writes_what_adntn_compress_writes(tmp_path, monkeypatch):
    monkeypatch.setitem(cells.UNITS, "demo_vgg", {"fc7": ["classifier.3"]})
    monkeypatch.setitem(cells.SIZES["cpu"], "demo_vgg", 32)
    torch.manual_seed(0)
    teacher = tmp_path / "t.pt"
    torch.save(build_model("demo_vgg", 10).state_dict(), teacher)
    cell = cells.Cell("demo_vgg", "fc7", 300, "ttn", seed=3)
    schedule = cells.Schedule(layerwise_steps=3, calib_batches=1, epochs=1, batch=16)
    written = {}

    def keep(job, callback=None):  # the cell's run, with its model file kept
        report = cells_compress(job, callback)
        written["cell"] = (Path(report.run_dir) / "model.safetensors").read_bytes()
        return report

    cells_compress = cells.compress
    monkeypatch.setattr(cells, "compress", keep)
    row = cells.run_cell(cell, teacher, schedule, "cpu", data="synthetic:64")
    assert row["status"] == "done" and row["frozen_prefix"]["used"]

    recipe = tmp_path / "cell.yaml"
    recipe.write_text(yaml.safe_dump(cells.cell_recipe(cell, schedule), sort_keys=False))
    done = subprocess.run(
        [sys.executable, "-m", "adntn_cli", "compress", str(teacher), "--recipe", str(recipe),
         "--data", "synthetic:64", "--device", "cpu", "--seed", "3", "--out",
         str(tmp_path / "cli"), "--quiet"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "cli" / "model.safetensors").read_bytes() == written["cell"]


@pytest.mark.parametrize("variant", sorted(cells.TUNING))
def test_every_tuning_variant_is_a_valid_recipe_with_its_one_setting(variant):
    from adntn_cli.recipe import parse_recipe

    cell = cells.Cell("alexnet", "fc", 2000, "tt", 0, variant)
    recipe = cells.cell_recipe(cell, None)
    parsed = parse_recipe(recipe)  # the schema accepts it as a user's recipe
    ((section, keys),) = cells.TUNING[variant].items()
    where = recipe["data"] if section == "data" else recipe["distill"]
    if section != "data":
        where = where[section]
    if isinstance(keys, dict):
        assert where == keys
        model = parsed.data if section == "data" else getattr(parsed.distill, section)
        for key, value in keys.items():
            got = getattr(model, key)
            assert list(got) == value if isinstance(value, list) else got == value
    else:
        assert where == keys and parsed.distill.train == keys
