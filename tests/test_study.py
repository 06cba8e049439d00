"""The accuracy study runs through the job a user runs: a study cell and ``adntn compress`` with
the same recipe, seed and data write the same model file, byte for byte."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from adntn_cli.models import build_model
from adntn_cli.recipe.schema import Distill

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks" / "accuracy"))
import cells
import study


@pytest.fixture
def teacher(tmp_path, monkeypatch) -> Path:
    """A small VGG's weights, saved as a study's teacher file; its FC7 is a study unit."""
    monkeypatch.setitem(cells.UNITS, "demo_vgg", {"fc7": ["classifier.3"]})
    monkeypatch.setitem(cells.SIZES["cpu"], "demo_vgg", 32)
    torch.manual_seed(0)
    path = tmp_path / "t.pt"
    torch.save(build_model("demo_vgg", 10).state_dict(), path)
    return path


@pytest.mark.slow
def test_a_study_cell_writes_what_adntn_compress_writes(teacher, tmp_path, monkeypatch):
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


@pytest.mark.slow
def test_a_stopped_cell_resumes_and_writes_what_an_unstopped_one_writes(
    teacher, tmp_path, monkeypatch
):
    cell = cells.Cell("demo_vgg", "fc7", 300, "ttn", seed=1)
    schedule = cells.Schedule(layerwise_steps=3, calib_batches=1, epochs=2, batch=16)
    real, models, resumed = cells.compress, [], []

    def kept(job, callback=None):  # the run's model file, and whether it resumed
        resumed.append(job.resume)
        report = real(job, callback)
        models.append((Path(report.run_dir) / "model.safetensors").read_bytes())
        return report

    def killed(job, callback=None):  # stopped at its second step's checkpoint, then killed
        real(dataclasses.replace(job, stop_after=2), callback)
        raise KeyboardInterrupt

    monkeypatch.setattr(cells, "compress", kept)
    whole = cells.run_cell(cell, teacher, schedule, "cpu", data="synthetic:64")
    runner = cells.Runner("cpu", "synthetic:64", runs=tmp_path / "runs")
    monkeypatch.setattr(cells, "compress", killed)
    with pytest.raises(KeyboardInterrupt):
        cells.run_cell(cell, teacher, schedule, runner)
    (folder,) = (tmp_path / "runs").iterdir()  # kept for the next attempt
    assert (folder / "run" / "checkpoints" / "last.pt").is_file()
    monkeypatch.setattr(cells, "compress", kept)
    row = cells.run_cell(cell, teacher, schedule, runner)
    assert resumed == [False, True] and row["attempts"] == 2 and row["seconds"] > 0
    assert models[0] == models[1] and row["top1"] == whole["top1"]
    assert not any((tmp_path / "runs").iterdir())  # a finished cell leaves nothing behind


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


def test_a_structure_try_sets_its_option_on_every_rule_and_only_for_its_structures():
    from adntn_cli.recipe import parse_recipe

    recipe = cells.cell_recipe(cells.Cell("alexnet", "fc", 20000, "ttn", 0, "mixing"), None)
    assert "distill" not in recipe  # a structure option, not a distill: setting
    parsed = parse_recipe(recipe)
    assert [r.options for r in parsed.layers] == [{"mixing": "siblings"}] * 2
    both = cells.cell_recipe(cells.Cell("alexnet", "fc", 20000, "ttn", 0, "mixing+lr-3e-3"), None)
    assert both["distill"] == {"finetune": {"lr": 3e-3}} and both["layers"] == recipe["layers"]
    assert cells.applies("mixing", "augttn") and not cells.applies("mixing+kd-1", "tt")
    assert cells.applies("kd-1", "tt") and cells.applies("", "lowrank")
    with pytest.raises(ValueError, match="'mixing' is for ttn, augttn, not tt"):
        cells.cell_recipe(cells.Cell("alexnet", "fc", 20000, "tt", 0, "mixing"), None)
    gelu = cells.cell_recipe(cells.Cell("alexnet", "fc", 20000, "ttn", 0, "act-gelu+mixing"), None)
    parsed = parse_recipe(gelu)  # a rule field, set beside the merged options
    assert [(r.activation, r.options) for r in parsed.layers] == [
        ("gelu", {"mixing": "siblings"})
    ] * 2
    assert not cells.applies("act-relu", "tt") and cells.applies("act-relu", "mera")


def test_a_bond_try_gives_each_layer_its_bonds_in_place_of_the_target_at_its_budget_only():
    from adntn_cli.recipe import parse_recipe

    recipe = cells.cell_recipe(cells.Cell("alexnet", "fc", 20000, "ttn", 0, "root-bonds"), None)
    parsed = parse_recipe(recipe)
    assert [(r.bond_dim, r.target_ratio) for r in parsed.layers] == [
        ([14, 5, 5], None), ([12, 4, 3], None)
    ]  # fmt: skip
    with pytest.raises(ValueError, match=r"'mid-bonds' has bonds for \[20000\]x only"):
        cells.cell_recipe(cells.Cell("alexnet", "fc", 2000, "tt", 0, "mid-bonds"), None)
    with pytest.raises(ValueError, match=r"bonds for classifier\.1, classifier\.4 only"):
        cells.cell_recipe(cells.Cell("vgg16_bn", "fc", 20000, "ttn", 0, "root-bonds"), None)
    assert cells.applies("mid-bonds", "tt", 20000) and cells.applies("mid-bonds", "tt")
    assert not cells.applies("mid-bonds", "tt", 2000) and not cells.applies("mid-bonds", "ttn")
    todo, _ = study._todo(study._args(["--grid", "fashion", "--variant", "mid-bonds"]), [])
    assert {(c.budget, c.structure) for c in todo} == {(20000, "tt")}


def test_the_study_runs_a_structure_try_on_its_structures_only_and_refuses_unknown_tries():
    args = study._args(["--grid", "fashion", "--variant", "mixing", "--out", "x.json"])
    todo, _ = study._todo(args, [])
    assert todo and {c.structure for c in todo} == {"ttn", "augttn"}
    assert all(c.variant == "mixing" for c in todo)
    with pytest.raises(SystemExit) as err:
        study._args(["--grid", "fashion", "--variant", "mixng"])
    assert err.value.code == 2


def test_the_fashion_grid_runs_its_budgets_and_structures_in_the_order_given():
    argv = ["--grid", "fashion", "--structures", "tt", "mera", "--budgets", "77000", "2000"]
    todo, _ = study._todo(study._args([*argv, "--out", "x.json"]), [])
    assert [(c.budget, c.structure, c.seed) for c in todo[:4]] == [
        (77000, "tt", 0), (77000, "mera", 0), (2000, "tt", 0), (2000, "mera", 0)
    ]  # fmt: skip
    assert len(todo) == 2 * 2 * len(study.SEEDS)  # 20,000x left out
    with pytest.raises(SystemExit) as err:
        study._args(["--grid", "cpu", "--budgets", "2000"])
    assert err.value.code == 2


def test_the_study_refuses_a_results_file_measured_against_another_teacher(tmp_path):
    recorded = {"top1": 0.9126, "top5": 0.9989, "loss": 0.2775, "seconds": 7506.6}
    study._same_teacher(tmp_path / "r.json", recorded, {**recorded, "seconds": 7000.0})
    study._same_teacher(tmp_path / "r.json", None, recorded)  # a new file: any teacher
    with pytest.raises(SystemExit, match=r"top-1 0\.9100.*r\.json was measured against"):
        study._same_teacher(tmp_path / "r.json", recorded, {**recorded, "top1": 0.91})


def test_the_study_refuses_a_results_file_measured_under_other_adntn_defaults(tmp_path):
    out = tmp_path / "r.json"
    args = study._args(["--grid", "fashion", "--out", str(out)])
    current = study.adntn_defaults()
    study.save_rows(out, {"defaults": current}, [{"key": "a"}])
    assert study._meta(args, [])["defaults"] == current  # the same defaults: cells add up

    older = json.loads(json.dumps(current))
    lr, epochs = current["distill"]["finetune"]["lr"], current["finetune_length"]["epochs"]
    older["distill"]["finetune"]["lr"], older["finetune_length"]["epochs"] = lr / 4, epochs + 1
    study.save_rows(out, {"defaults": older}, [{"key": "a"}])
    changed = f"finetune.lr {lr / 4} -> {lr}, finetune_length.epochs {epochs + 1} -> {epochs};"
    with pytest.raises(SystemExit, match=re.escape(changed)):
        study._meta(args, [])
    legs = "map" if current["input_legs"] == "flat" else "flat"  # FC6's legs, a layer default
    study.save_rows(out, {"defaults": {**current, "input_legs": legs}}, [{"key": "a"}])
    with pytest.raises(SystemExit, match=f"input_legs {legs} -> {current['input_legs']}"):
        study._meta(args, [])
    study.save_rows(out, {}, [{"key": "a"}])
    with pytest.raises(SystemExit, match="records no defaults"):
        study._meta(args, [])
    study.save_rows(out, {}, [])  # no rows yet: nothing to mix with
    assert study._meta(args, [])["defaults"] == current


def _row(structure: str, seed: int, top1: float) -> dict:
    return {
        "teacher": "alexnet", "unit": "fc", "budget": 20000, "structure": structure,
        "seed": seed, "status": "done", "top1": top1, "dense_top1": 0.9, "agreement": 0.9,
        "sqnr_db": {"a": 0.0}, "replaced_ratio": 2e4, "layers": [{"ratio": 2e4, "tn_params": 9,
        "bond_dim": 2}], "model_ratio": 20.0, "seconds": 1.0, "val_images": 10000,
    }  # fmt: skip


def test_a_comparison_on_one_seed_says_its_spread_is_not_measured():
    import tables

    one = tables.summarise([_row("ttn", 0, 0.90), _row("tt", 0, 0.89)])
    assert tables.compare(one, "alexnet", "fc", 20000).endswith(
        "**ADNTN better on one seed (spread not measured)**"
    )
    one_image = tables.summarise([_row("ttn", 0, 0.9107), _row("tt", 0, 0.9108)])
    assert "**tie on one seed" in tables.compare(one_image, "alexnet", "fc", 20000)
    three = [_row(s, k, t + d) for s, t in (("ttn", 0.90), ("tt", 0.89))
             for k, d in enumerate((0.0, 0.001, -0.001))]  # fmt: skip
    assert tables.compare(tables.summarise(three), "alexnet", "fc", 20000).endswith(
        "spread 0.10: **ADNTN better**"
    )
    wide = [*three, _row("tt", 3, 0.95)]  # a seed far off: the gap is inside the spread
    assert tables.compare(tables.summarise(wide), "alexnet", "fc", 20000).endswith("**tie**")


def test_the_plot_keeps_the_tries_only_while_it_stays_readable(tmp_path):
    import tables

    def rows(structure: str, variant: str = "") -> list[dict]:
        return [{**_row(structure, 0, 0.9), "budget": b, "variant": variant} for b in (2e3, 2e4)]

    few = [*rows("ttn"), *rows("tt"), *rows("ttn", "map-legs")]
    panel = ("alexnet", "fc")
    assert set(tables._series(tables.summarise(few), panel)) == {"ttn", "tt", "ttn (map-legs)"}
    tries = [f"kd-{k}" for k in range(tables.MAX_SERIES)]
    many = few + [r for t in tries for r in rows("tt", t)]
    assert set(tables._series(tables.summarise(many), panel)) == {"ttn", "tt"}
    doc = {"rows": many, "teachers": {"alexnet": {"top1": 0.9}}}
    tables.write_plot(doc, tmp_path / "p.png")
    assert (tmp_path / "p.png").stat().st_size > 1000


def test_an_unreachable_row_names_the_layer_and_the_ratio_it_reaches():
    import tables

    reason = (
        "/tmp/c.yaml: layers[1] (classifier.4): augttn cannot reach 20000x on 4096x4096: its "
        "smallest generator has 1340 parameters, the budget is 839; target_ratio can be at most "
        "12,520 here"
    )
    assert tables._unreachable({"reason": reason}) == (
        "unreachable (classifier.4: at most 12,520x)"
    )
    assert tables._unreachable({"reason": "out of memory"}) == "unreachable"


def _measured(variant: str, distill: dict, structure: str = "ttn") -> dict:
    """A fashion row measured as ``variant`` whose schedule resolved to ``distill``."""
    cell = cells.Cell("alexnet", "fc", 20000, structure, 0, variant)
    resolved = Distill(**distill).model_dump(mode="json")
    return {**_row(structure, 0, 0.9), "key": cell.key, "variant": variant, "distill": resolved}


def test_relabel_names_each_rows_schedule_again_against_the_present_defaults():
    import relabel

    old_default = _measured("", {"finetune": {"kd_weight": 1.0}})  # then the default was 1.0
    new_default = _measured("kd-1", {})  # a try of what is the default now
    combined = _measured("mixing+lr-1e-3", {"finetune": {"lr": 1e-3, "kd_weight": 1.0}})
    rows = relabel.relabel([old_default, new_default, combined], "the default kd_weight was 1")
    assert [r["key"] for r in rows] == [
        "alexnet/fc/20000/ttn/s0/kd-1",
        "alexnet/fc/20000/ttn/s0",
        "alexnet/fc/20000/ttn/s0/mixing+kd-1+lr-1e-3",
    ]
    assert rows[0]["relabelled_from"] == {
        "key": "alexnet/fc/20000/ttn/s0", "why": "the default kd_weight was 1",
    }  # fmt: skip
    assert [r["top1"] for r in rows] == [0.9] * 3  # the measured numbers stay
    again = relabel.relabel(rows, "again")  # named against the same defaults: nothing moves
    assert [r["relabelled_from"]["why"] for r in again] == ["the default kd_weight was 1"] * 3

    with pytest.raises(ValueError, match="two rows would share a key"):
        relabel.relabel([old_default, _measured("kd-1", {"finetune": {"kd_weight": 1.0}})], "")
    with pytest.raises(ValueError, match=r"no 3 settings of cells\.TUNING reproduce"):
        relabel.relabel([_measured("", {"finetune": {"kd_weight": 0.33}})], "")


def test_a_results_file_made_by_several_commands_says_so():
    import tables

    last = "python benchmarks/accuracy/study.py --only /77000/"
    one = {"command": last, "rows": [{**_row("ttn", 0, 0.9), "command": last}]}
    assert tables._commands_line(one) == f"Command: `{last}`"
    first = {**_row("tt", 0, 0.9), "command": "python benchmarks/accuracy/study.py"}
    two = {**one, "rows": [*one["rows"], first]}
    assert tables._commands_line(two).startswith("Made by 2 commands (each row's is its")
    assert tables._commands_line(two).endswith(f"the last: `{last}`")
