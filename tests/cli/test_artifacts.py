"""The compressed file and the commands that read it: eval, report, export; damaged files."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

import adntn_cli
from adntn_cli.cli.app import app, register_commands
from adntn_cli.io import load_compressed
from adntn_cli.models import build_model
from adntn_cli.pipeline import compress

from .test_compress import RECIPE

register_commands()

runner = CliRunner()


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("art")
    torch.manual_seed(0)
    teacher = tmp / "teacher.pt"
    torch.save(build_model("demo_vgg", 10).state_dict(), teacher)
    recipe = tmp / "r.yaml"
    recipe.write_text(RECIPE)
    out = tmp / "run"
    compress(str(teacher), str(recipe), data="synthetic:48", out=out, device="cpu")
    return tmp, teacher, out


def test_save_then_load_gives_identical_logits(run):
    _, _, out = run
    model = adntn_cli.load(out / "model.safetensors")
    again = load_compressed(out / "model.safetensors")
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), again(x), rtol=0, atol=0)
    state = load_file(str(out / "model.safetensors"))
    model.train()
    torch.testing.assert_close(model.state_dict()["classifier.0.bias"], state["classifier.0.bias"])


def test_report_from_the_run_directory_and_from_the_file_alone(run, tmp_path):
    _, _, out = run
    result = runner.invoke(app, ["report", str(out), "--json"])
    assert result.exit_code == 0, result.output
    rep = json.loads(result.output)
    assert rep["accuracy"]["compressed"]["top1"] >= 0 and len(rep["layers"]) == 2
    alone = tmp_path / "alone.safetensors"
    alone.write_bytes((out / "model.safetensors").read_bytes())
    result = runner.invoke(app, ["report", str(alone), "--plot", str(tmp_path / "p.png")])
    assert result.exit_code == 0, result.output
    assert "x fewer" in result.output and "kept fraction" in result.output
    assert (tmp_path / "p.png").stat().st_size > 1000
    md = runner.invoke(app, ["report", str(out), "--markdown"])
    assert md.output.startswith("# adntn compression report")


def test_eval_with_and_without_a_baseline(run):
    _, teacher, out = run
    args = ["eval", str(out / "model.safetensors"), "--data", "synthetic:32", "--device", "cpu"]
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    r = json.loads(result.output)
    assert {"top1", "top5", "loss", "file_bytes", "params", "runtime_bytes"} <= set(r)
    assert r["runtime_bytes_contract"] <= r["runtime_bytes"]
    result = runner.invoke(app, [*args, "--baseline", str(teacher), "--arch", "demo_vgg", "--json"])
    assert result.exit_code == 0, result.output
    r = json.loads(result.output)
    assert r["baseline"]["params"] > r["params"] and "delta" in r
    table = runner.invoke(app, [*args, "--baseline", str(teacher), "--arch", "demo_vgg"])
    assert "baseline" in table.output and "delta" in table.output


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_export_dense_matches_the_compressed_logits(run, tmp_path, suffix):
    _, _, out = run
    dense_path = tmp_path / f"dense{suffix}"
    result = runner.invoke(
        app, ["export", str(out / "model.safetensors"), "--dense", str(dense_path)]
    )
    assert result.exit_code == 0, result.output
    if suffix == ".safetensors":
        state = load_file(str(dense_path))
    else:  # timm's layout: the state dict beside what describes it
        saved = torch.load(dense_path, weights_only=True)
        assert {k: saved[k] for k in ("arch", "num_classes", "input_size")} == {
            "arch": "demo_vgg", "num_classes": 10, "input_size": 32
        }  # fmt: skip
        state = saved["state_dict"]
    plain = build_model("demo_vgg", 10)
    plain.load_state_dict(state)
    compressed = load_compressed(out / "model.safetensors")
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(plain.eval()(x), compressed(x), rtol=1e-5, atol=1e-5)


def test_onnx_export_through_the_cli_runs_from_a_copy_at_any_batch(run, tmp_path):
    import numpy as np
    import onnxruntime as ort

    _, _, out = run
    onnx = tmp_path / "export" / "m.onnx"
    args = ["export", str(out / "model.safetensors"), "--onnx", str(onnx)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    from adntn_cli.tn import format_bytes

    size = format_bytes(onnx.stat().st_size)
    assert f"wrote {onnx} ({size}, cores and contractions, opset 18)" in result.output
    assert sorted(p.name for p in onnx.parent.iterdir()) == ["m.onnx"]
    copy = tmp_path / "copy.onnx"
    copy.write_bytes(onnx.read_bytes())
    session = ort.InferenceSession(str(copy), providers=["CPUExecutionProvider"])
    model = load_compressed(out / "model.safetensors")
    for batch in (1, 8):
        x = torch.randn(batch, 3, 32, 32)
        with torch.no_grad():
            want = model(x).numpy()
        (got,) = session.run(None, {"images": x.numpy()})
        assert np.abs(got - want).max() <= 1e-4 * np.abs(want).max()
    again = runner.invoke(app, args)  # the file is kept: exit 2, one line
    assert again.exit_code == 2 and "exists" in again.output and "--force" in again.output
    assert runner.invoke(app, [*args, "--force"]).exit_code == 0
    before = onnx.read_bytes()
    bad = runner.invoke(app, [*args, "--force", "--opset", "17"])
    assert bad.exit_code == 2 and "--opset 17: valid: 18" in bad.output
    # every output is checked before any is written: no dense file when the ONNX one is refused
    dense = tmp_path / "dense.safetensors"
    both = runner.invoke(app, [*args, "--dense", str(dense)])
    assert both.exit_code == 2 and "exists" in both.output and not dense.exists()
    assert onnx.read_bytes() == before


def _damaged(run, tmp_path, kind):
    _, _, out = run
    src = out / "model.safetensors"
    bad = tmp_path / f"{kind}.safetensors"
    if kind == "truncated":
        data = src.read_bytes()
        bad.write_bytes(data[: len(data) // 2])
    elif kind == "missing":
        from safetensors import safe_open

        with safe_open(str(src), "pt") as f:
            meta = f.metadata()
        state = load_file(str(src))
        state.pop("classifier.0.bias")
        save_file(state, str(bad), metadata=meta)
    elif kind == "foreign":
        save_file({"w": torch.zeros(2)}, str(bad), metadata={"producer": "other-tool"})
    elif kind == "newer":
        from safetensors import safe_open

        with safe_open(str(src), "pt") as f:
            meta = dict(f.metadata())
        meta["format"] = "adntn/9"
        save_file(load_file(str(src)), str(bad), metadata=meta)
    return bad


@pytest.mark.parametrize(
    "kind,message",
    [
        ("truncated", "not a readable safetensors file"),
        ("missing", "missing keys ['classifier.0.bias']"),
        ("foreign", "was not written by adntn"),
        ("newer", "newer than this adntn"),
    ],
)
@pytest.mark.parametrize("command", ["report", "eval", "export"])
def test_damaged_files_exit_2_naming_the_problem(run, tmp_path, kind, message, command):
    bad = _damaged(run, tmp_path, kind)
    args = {"report": ["report", str(bad)],
            "eval": ["eval", str(bad), "--data", "synthetic:8", "--device", "cpu"],
            "export": ["export", str(bad), "--dense", str(tmp_path / "o.pt")]}[command]  # fmt: skip
    if command == "eval" and kind == "foreign":
        message = "not a readable"  # not adntn's: read as a dense state dict, which needs .pt
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert message in result.output or (command == "eval" and kind == "foreign"), result.output
    assert "Traceback" not in result.output


def test_cores_stored_in_bf16_load_and_stay_close(run, tmp_path):
    tmp, teacher, out = run
    bf = compress(str(teacher), str(tmp / "r.yaml"), data="synthetic:48", out=tmp_path / "bf",
                  device="cpu", cores_dtype="bfloat16")  # fmt: skip
    state = load_file(str(tmp_path / "bf" / "model.safetensors"))
    assert state["classifier.0.generator.cores.leaf0"].dtype == torch.bfloat16
    assert state["classifier.0.bias"].dtype == torch.float32
    a = load_compressed(out / "model.safetensors")
    b = load_compressed(tmp_path / "bf" / "model.safetensors")
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        ya, yb = a(x), b(x)
    assert float((ya - yb).norm() / ya.norm()) < 0.05  # bf16 keeps ~3 significant digits
    assert bf["files"]["model_bytes"] < (out / "model.safetensors").stat().st_size


def test_an_oversized_header_is_refused_before_parsing(tmp_path):
    from adntn_cli.errors import ModelError
    from adntn_cli.io import MAX_HEADER_BYTES, read_metadata

    bad = tmp_path / "huge.safetensors"
    bad.write_bytes((MAX_HEADER_BYTES + 1).to_bytes(8, "little") + b"{}")
    with pytest.raises(ModelError, match="header size"):
        read_metadata(bad)
