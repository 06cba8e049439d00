"""``adntn compress`` end to end on a tiny model with synthetic data: files, refusals, resume."""

import json

import pytest
import torch
from safetensors import safe_open
from typer.testing import CliRunner

from adntn_cli.cli.app import app, register_commands
from adntn_cli.models import build_model
from adntn_cli.pipeline import compress as run_compress

register_commands()

runner = CliRunner()
RECIPE = """\
version: 1
model: {arch: demo_vgg, num_classes: 10, input_size: 32}
defaults: {structure: ttn, activation: tanh}
layers:
  - select: classifier.0
    target_ratio: 300
  - select: classifier.3
    structure: tt
    bond_dim: 3
distill:
  layerwise: {steps: 20, lr: 1.0e-2, batches: 2}
  finetune: {epochs: 1, lr: 1.0e-3, checkpoint_every: 2}
data: {batch_size: 16}
"""


@pytest.fixture()
def files(tmp_path):
    torch.manual_seed(0)
    model = tmp_path / "teacher.pt"
    torch.save(build_model("demo_vgg", 10).state_dict(), model)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE)
    return model, recipe


def test_compress_writes_the_run_directory(files, tmp_path):
    model, recipe = files
    out = tmp_path / "run"
    result = runner.invoke(
        app, ["compress", str(model), "--recipe", str(recipe), "--data", "synthetic:64",
              "--out", str(out), "--device", "cpu", "--quiet"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    for name in ("model.safetensors", "report.json", "report.md", "metrics.csv",
                 "recipe.resolved.yaml", "checkpoints/last.pt", "checkpoints/best.pt"):  # fmt: skip
        assert (out / name).exists(), name
    report = json.loads((out / "report.json").read_text())
    assert {"top1", "top5"} <= set(report["accuracy"]["dense"])
    assert {"top1", "top5"} <= set(report["accuracy"]["compressed"])
    assert report["layers"][0]["ratio"] >= 300 and report["seed"] == 0
    assert report["versions"]["torch"] == torch.__version__
    assert report["processes"] == 1
    assert report["compiled"] == {  # the recipe's default: off
        "classifier.0.generator": "eager: compile off",
        "classifier.3.generator": "eager: compile off",
    }
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        meta, keys = f.metadata(), set(f.keys())
    assert meta["format"] == "adntn/2" and meta["arch"] == "demo_vgg"
    assert "classifier.0.weight" not in keys and "classifier.0.bias" in keys
    assert any(k.startswith("classifier.0.generator.cores.") for k in keys)


def test_an_existing_run_directory_needs_resume_or_force(files, tmp_path):
    model, recipe = files
    out = tmp_path / "busy"
    out.mkdir()
    (out / "x").write_text("keep me")
    args = ["compress", str(model), "--recipe", str(recipe), "--data", "synthetic:32",
            "--out", str(out), "--quiet"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and "--resume" in result.output and "--force" in result.output
    assert (out / "x").read_text() == "keep me"
    assert runner.invoke(app, [*args, "--resume", "--force"]).exit_code == 2


def test_resume_after_an_interruption_matches_an_uninterrupted_run(files, tmp_path):
    model, recipe = files
    kw = {"data": "synthetic:64", "device": "cpu", "seed": 3}
    run_compress(str(model), str(recipe), out=tmp_path / "a", **kw)
    part = run_compress(str(model), str(recipe), out=tmp_path / "b", stop_after=2, **kw)
    assert part["finetune"]["interrupted"]
    rest = run_compress(str(model), str(recipe), out=tmp_path / "b", resume=True, **kw)
    assert not rest["finetune"]["interrupted"]
    from safetensors.torch import load_file

    a = load_file(str(tmp_path / "a" / "model.safetensors"))
    b = load_file(str(tmp_path / "b" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--data", "mnist"], "not a data source"),
        (["--data", "synthetic:32", "--device", "cuda:7"], "no CUDA device"),
    ],
)
def test_bad_compress_input_exits_2(files, tmp_path, extra, message):
    model, recipe = files
    args = ["compress", str(model), "--recipe", str(recipe), "--out", str(tmp_path / "o"), "-q"]
    result = runner.invoke(app, [*args, *extra])
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_compile_mode_is_checked_and_auto_stays_eager_on_the_cpu(files, tmp_path):
    model, recipe = files
    args = ["compress", str(model), "--recipe", str(recipe), "--data", "synthetic:64",
            "--device", "cpu", "--quiet"]  # fmt: skip
    bad = runner.invoke(app, [*args, "--out", str(tmp_path / "a"), "--compile", "fast"])
    assert bad.exit_code == 2 and "--compile 'fast': valid: auto, on, off" in bad.output
    assert not (tmp_path / "a").exists()
    ok = runner.invoke(app, [*args, "--out", str(tmp_path / "b"), "--compile", "auto"])
    assert ok.exit_code == 0, ok.output
    compiled = json.loads((tmp_path / "b" / "report.json").read_text())["compiled"]
    assert set(compiled.values()) == {"eager: compile auto, not on CUDA"}
