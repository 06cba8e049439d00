"""Every command end to end through Typer's CliRunner; bad input exits with code 2."""

import dataclasses
import json
import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

from adntn_cli.cli.app import app, register_commands

register_commands()

runner = CliRunner()


def run(*args):
    return runner.invoke(app, list(args))


def test_help_and_version():
    assert run("--help").exit_code == 0
    result = run("--version")
    assert result.exit_code == 0 and "adntn" in result.output


def test_help_does_not_import_torch():
    code = (
        "import sys; sys.argv = ['adntn', '--help']\n"
        "from adntn_cli.cli import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


def test_layers_lists_vgg16():
    result = run("layers", "torchvision:vgg16", "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)["layers"]
    assert rows[-3] == {
        "layer": "classifier.0",
        "kind": "Linear",
        "shape": [4096, 25088],
        "params": 4096 * 25088 + 4096,
    }


def test_layers_template_is_a_valid_recipe(tmp_path):
    result = run("layers", "torchvision:alexnet", "--template")
    assert result.exit_code == 0
    path = tmp_path / "t.yaml"
    path.write_text(result.output)
    planned = run("plan", "torchvision:alexnet", "--recipe", str(path), "--json")
    assert planned.exit_code == 0, planned.output
    assert {r["layer"] for r in json.loads(planned.output)["layers"]} >= {"classifier.1"}


def test_plan_json_for_vgg16():
    result = run("plan", "torchvision:vgg16", "--recipe", "vgg16", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    for rec in data["layers"]:
        assert {
            "layer",
            "structure",
            "dense_params",
            "tn_params",
            "ratio",
            "flops",
            "peak_bytes",
            "schedule",
        } <= set(rec)
    assert data["totals"]["replaced_ratio"] > 2000


def test_plan_table(tmp_path):
    result = run("plan", "torchvision:vgg16", "--recipe", "vgg16")
    assert result.exit_code == 0
    assert "classifier.0" in result.output and "x fewer" in result.output


@pytest.mark.parametrize("width", [80, 60])
def test_plan_in_a_narrow_terminal_drops_columns_instead_of_cutting_names(monkeypatch, width):
    from adntn_cli.cli.app import out

    monkeypatch.setattr(out, "width", 250)
    wide = run("plan", "torchvision:vgg16", "--recipe", "vgg16")
    assert "not shown here" not in wide.output and "FLOPs" in wide.output
    monkeypatch.setattr(out, "width", width)
    result = run("plan", "torchvision:vgg16", "--recipe", "vgg16")
    assert result.exit_code == 0 and "…" not in result.output
    assert max(len(line) for line in result.output.splitlines()) <= width
    assert "classifier.0" in result.output and "features.28" in result.output
    assert "not shown here: type," in result.output and "(--json)" in result.output


class _Pipe:
    def isatty(self) -> bool:
        return False


class _Terminal:
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(("columns", "width"), [("80", 80), ("", 160), ("wide", 160), ("0", 160)])
def test_a_piped_log_is_as_wide_as_the_columns_its_user_set(monkeypatch, columns, width):
    from adntn_cli.cli.app import _width

    monkeypatch.setenv("COLUMNS", columns)
    assert _width(_Pipe()) == width
    assert _width(_Terminal()) is None  # a terminal: rich asks it


def test_plan_says_how_many_distillation_steps_a_run_takes(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "version: 1\nmodel: {arch: demo_vgg, num_classes: 10, input_size: 32}\n"
        "layers: [{select: classifier.3, bond_dim: 3}]\ndata: {batch_size: 16}\n"
    )
    result = run("plan", "torchvision:demo_vgg", "--recipe", str(recipe))
    assert result.exit_code == 0, result.output
    assert "7 passes over the training images" in result.output  # no data: the rule
    counted = run("plan", "torchvision:demo_vgg", "--recipe", str(recipe), "--data",
                  "synthetic:1000", "--json")  # fmt: skip
    d = json.loads(counted.stdout)["distill"]
    # 750 training images, 75 held out: 675 / 16 -> 43 steps a pass; at least 1,000 steps
    assert d["train_images"] == 675 and d["select_images"] == 75
    assert d["finetune_steps"] == 1000 and d["layerwise_steps"] == 200
    t = json.loads(counted.stdout)["expected_time"]
    assert t["total"] > 0 and t["seconds"]["end-to-end"] > 0 and t["cached_prefix"]
    text = run("plan", "torchvision:demo_vgg", "--recipe", str(recipe), "--data", "synthetic:1000")
    assert "expected time: about" in text.output and "GFLOP/s" in text.output


def _estimate(layer: dict, distill: dict, steps: int, augmented: bool = False):
    """The expected time of a recipe on Flatten, Linear(12, 20), ReLU, Linear(20, 5)."""
    from adntn_cli.plan import plan
    from adntn_cli.recipe import parse_recipe
    from adntn_cli.schedule import distill_schedule, expected_time

    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 20), torch.nn.ReLU(),
                              torch.nn.Linear(20, 5)).to("meta")  # fmt: skip
    rec = parse_recipe({"version": 1, "model": {"arch": "x", "num_classes": 5, "input_size": 2},
                        "layers": [layer], "distill": distill,
                        "data": {"batch_size": 10}})  # fmt: skip
    p = plan(net, rec)
    sched = distill_schedule(rec, 1, train_images=100, select_images=10)
    sched = dataclasses.replace(sched, finetune_steps=steps)
    return expected_time(net, p.layers, rec, sched, val_images=50, augmented=augmented), p


def test_the_expected_time_counts_each_part_of_a_run():
    from adntn_cli.schedule import leaf_flops
    from adntn_cli.tn import TNGenerator

    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 20), torch.nn.ReLU(),
                              torch.nn.Linear(20, 5)).to("meta")  # fmt: skip
    per_image = [("0", 0), ("1", 2 * 12 * 20), ("2", 0), ("3", 2 * 20 * 5)]
    assert leaf_flops(net, 2) == (per_image, 2 * 12 * 20 + 2 * 20 * 5)
    flops = 1e11  # the CPU profile
    tree = {"select": "3", "structure": "ttn", "bond_dim": 2}
    (one, p), (two, _) = _estimate(tree, {}, 100), _estimate(tree, {}, 200)
    assert one.cached_prefix and two.seconds["end-to-end"] == 2 * one.seconds["end-to-end"]
    # Linear 3 contracts its batch through the cores, in place of its dense GEMM (200 FLOPs a
    # row): per step forward and backward of that contraction; nothing generated
    gen = TNGenerator(p.layers[0].spec, (5, 20), device="meta")
    assert gen.choose_schedule(10, "cpu", weight_cached=False) == "contract"
    contract = 2 * gen.program.contract_cost(10).macs
    assert one.seconds["end-to-end"] == pytest.approx(100 * 3 * contract / flops)
    whole, _ = _estimate(tree, {"train": "all"}, 100)  # no cache: the teacher at every step
    assert not whole.cached_prefix and whole.seconds["prefix cache"] == 0
    assert whole.seconds["end-to-end"] > one.seconds["end-to-end"]
    augmented, _ = _estimate(tree, {}, 100, augmented=True)  # no cache; the prefix: forward only
    assert not augmented.cached_prefix
    assert augmented.seconds["end-to-end"] == pytest.approx(
        one.seconds["end-to-end"] + 100 * 10 * (2 * 2 * 12 * 20 + 2 * 20 * 5) / flops
    )


def test_a_materialised_layer_is_generated_once_a_step():
    from adntn_cli.plan import plan
    from adntn_cli.recipe import parse_recipe
    from adntn_cli.schedule import distill_schedule, expected_time, leaf_flops

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.Conv2d(4, 8, 3, padding=1), torch.nn.Flatten(),
                              torch.nn.Linear(8 * 2 * 2, 5)).to("meta")  # fmt: skip
    rec = parse_recipe({"version": 1, "model": {"arch": "x", "num_classes": 5, "input_size": 2},
                        "layers": [{"select": "2", "structure": "ttn", "bond_dim": 2}],
                        "data": {"batch_size": 10}})  # fmt: skip
    p = plan(net, rec)
    sched = dataclasses.replace(distill_schedule(rec, 1, 100, 10), finetune_steps=100)
    est = expected_time(net, p.layers, rec, sched, val_images=50)
    leaves, total = leaf_flops(net, 2)
    frozen = leaves[0][1]  # conv 0 (and the ReLU) before the replaced conv: cached
    generate = p.layers[0].record.flops  # a Conv2d materialises: its weight, once a step
    assert est.cached_prefix and generate > 0
    expected = 100 * (3 * (total - frozen) * 10 + 3 * generate) / 1e11
    assert est.seconds["end-to-end"] == pytest.approx(expected)
    # the final evaluation runs the cached prefix once per image, both models after it; with
    # a BatchNorm in the prefix (recalibrated: not the teacher's) both whole models run
    normed = torch.nn.Sequential(net[0], torch.nn.BatchNorm2d(4), *net[1:]).to("meta")
    rec = parse_recipe({"version": 1, "model": {"arch": "x", "num_classes": 5, "input_size": 2},
                        "layers": [{"select": "3", "structure": "ttn", "bond_dim": 2}],
                        "data": {"batch_size": 10}})  # fmt: skip
    both = expected_time(normed, plan(normed, rec).layers, rec, sched, val_images=50)
    assert both.seconds["evaluation"] - est.seconds["evaluation"] == pytest.approx(
        50 * frozen / 1e11
    )


def test_plan_says_when_it_cannot_estimate_the_time(tmp_path):
    recipe = tmp_path / "vit.yaml"
    recipe.write_text(
        "version: 1\nmodel: {arch: vit_b_16, num_classes: 10, input_size: 64}\n"
        "layers: [{select: heads.head, structure: ttn, bond_dim: 2}]\n"
    )
    result = run("plan", "torchvision:vit_b_16", "--recipe", str(recipe), "--data", "synthetic:40")
    assert result.exit_code == 0, result.output
    assert "expected time: not estimated (counting the FLOPs failed:" in result.output


def test_plan_on_a_state_dict_file_uses_the_recipe_arch(tmp_path):
    from adntn_cli.models import build_model

    path = tmp_path / "m.pt"
    torch.save(build_model("demo_vgg", 10).state_dict(), path)
    result = run("plan", str(path), "--recipe", "demo", "--json")
    assert result.exit_code == 0, result.output


def test_schema_prints_json():
    result = run("schema")
    assert result.exit_code == 0
    assert json.loads(result.output)["title"].startswith("adntn recipe")


@pytest.mark.parametrize(
    "args,message",
    [
        (("plan", "torchvision:vgg16", "--recipe", "nope"), "neither a file nor a shipped recipe"),
        (("plan", "torchvision:vgg99", "--recipe", "vgg16"), "unknown architecture 'vgg99'"),
        (("plan", "missing.pt", "--recipe", "vgg16"), "neither a file nor torchvision:NAME"),
        (("layers", "torchvision:resnet18", "--template", "--arch"), "requires an argument"),
    ],
)
def test_bad_input_exits_2_with_a_message(args, message):
    result = run(*args)
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output


def test_bad_recipe_content_exits_2(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("version: 1\nlayers:\n  - select: classifier.9\n    bond_dim: 4\n")
    result = run("plan", "torchvision:vgg16", "--recipe", str(path))
    assert result.exit_code == 2
    assert "layers[0].select" in result.output and "closest layers" in result.output


def test_console_script_runs():
    exe = [sys.executable, "-m", "adntn_cli.cli", "--version"]
    assert subprocess.run(exe, capture_output=True, text=True).stdout.startswith("adntn")


def test_help_paragraphs_are_reflowed_and_examples_kept():
    from adntn_cli.cli.app import reflow

    doc = """Summary line.

    A paragraph wrapped
    at the source's width.

    Examples:
      adntn plan x
      adntn plan y
    """
    assert reflow(doc) == (
        "Summary line.\n\nA paragraph wrapped at the source's width.\n\n"
        "Examples:\n  adntn plan x\n  adntn plan y"
    )
    assert reflow(reflow(doc)) == reflow(doc) and reflow(None) is None
    shown = run("export", "--help").output  # the [onnx] extra is not taken for markup
    assert "adntn[onnx]" in shown
