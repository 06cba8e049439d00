"""The model files people have, through the CLI: training checkpoints of torchvision's reference
scripts and timm, DDP and torch.compile prefixes, legacy files, key mismatches explained by
their likely cause, ``layers`` and ``plan`` that read the file, and files that describe
themselves (compressed files, dense exports)."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from adntn_cli.cli.app import app, register_commands
from adntn_cli.models import build_model
from tests.cli.tiny import cli_error, cli_ok, tiny_recipe

register_commands()
runner = CliRunner()


class TrainConfig:  # a class of the user's training script, pickled into the checkpoint's args
    def __init__(self) -> None:
        self.lr = 0.1


def _demo_state(num_classes: int = 10) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return build_model("demo_vgg", num_classes).state_dict()


def _torchvision_reference(state: dict[str, torch.Tensor]) -> dict:
    """What torchvision's references/classification/train.py saves (with --model-ema)."""
    model = build_model("demo_vgg", 10)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, 30)
    ema = {f"module.{k}": v.clone() for k, v in state.items()}
    ema["n_averaged"] = torch.tensor(7)
    args = argparse.Namespace(model="demo_vgg", lr=0.1, epochs=90, data_path="/data/imagenet")
    return {"model": state, "optimizer": opt.state_dict(), "lr_scheduler": sched.state_dict(),
            "epoch": 3, "args": args, "model_ema": ema}  # fmt: skip


def _timm(state: dict[str, torch.Tensor]) -> dict:
    """What timm's train.py (CheckpointSaver) saves as checkpoint-N.pth.tar."""
    args = argparse.Namespace(model="demo_vgg", lr=0.05, num_classes=10, amp=True)
    return {"epoch": 4, "arch": "demo_vgg", "state_dict": state, "optimizer": {}, "version": 2,
            "args": args, "metric": 71.25, "state_dict_ema": dict(state)}  # fmt: skip


def _run(*args: str):
    return runner.invoke(app, [str(a) for a in args])


_ok, _error = cli_ok, cli_error


# -- checkpoints people have -------------------------------------------------------------------
def test_a_torchvision_reference_checkpoint_loads(tmp_path):
    path = tmp_path / "checkpoint.pth"
    torch.save(_torchvision_reference(_demo_state()), path)
    out = _ok(_run("layers", path, "--arch", "demo_vgg", "--json"))
    assert [r["layer"] for r in json.loads(out)["layers"]][-1] == "classifier.6"
    result = _run("plan", path, "--recipe", "demo", "--arch", "demo_vgg")
    _ok(result)
    assert result.stderr.count("note:") == 1  # said once, though read twice
    assert "the weights under 'model' (it also holds model_ema)" in result.stderr


def test_a_timm_checkpoint_loads_with_the_arch_it_records(tmp_path):
    path = tmp_path / "checkpoint-4.pth.tar"
    torch.save(_timm(_demo_state()), path)
    out = _ok(_run("layers", path, "--template"))  # no --arch: timm records it
    assert "arch: demo_vgg, num_classes: 10" in out


def test_a_checkpoint_that_records_the_torch_version_loads(tmp_path):
    """``torch.__version__`` pickles as a TorchVersion global, outside weights_only's defaults."""
    path = tmp_path / "teacher.pt"
    torch.save({"state_dict": _demo_state(), "arch": "demo_vgg", "torch": torch.__version__}, path)
    out = _ok(_run("layers", path, "--template"))
    assert "arch: demo_vgg, num_classes: 10" in out


def test_an_ema_only_checkpoint_is_unwrapped(tmp_path):
    from adntn_cli.models import load_model

    state = _demo_state()
    ema = _torchvision_reference(state)["model_ema"]
    path = tmp_path / "ema.pth"
    torch.save({"model_ema": ema, "epoch": 1}, path)
    loaded = load_model(str(path), "demo_vgg").state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())
    result = _run("layers", path, "--arch", "demo_vgg")
    _ok(result)
    assert "stripped the prefix 'module.'" in result.stderr


def test_a_global_outside_the_allow_list_is_named(tmp_path):
    path = tmp_path / "checkpoint.pth"
    torch.save({"model": _demo_state(), "args": TrainConfig()}, path)
    line = _error(_run("layers", path, "--arch", "demo_vgg"))
    assert "pickles tests.cli.test_model_files.TrainConfig" in line
    assert "--allow-pickle loads it" in line


def test_allow_pickle_reads_a_checkpoint_as_well_as_a_whole_model(tmp_path):
    """--allow-pickle used to end in "expects a pickled nn.Module" for any checkpoint."""
    from adntn_cli.models import load_model

    path = tmp_path / "checkpoint.pth"
    state = _demo_state()
    torch.save({"model": state, "args": TrainConfig()}, path)
    loaded = load_model(str(path), "demo_vgg", allow_pickle=True).state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())


@pytest.mark.parametrize("prefix", ["module.", "_orig_mod.", "module._orig_mod."])
def test_ddp_and_compile_prefixes_are_stripped_and_said(tmp_path, prefix):
    path = tmp_path / "wrapped.pt"
    torch.save({f"{prefix}{k}": v for k, v in _demo_state().items()}, path)
    result = _run("layers", path, "--arch", "demo_vgg")
    _ok(result)
    notes = [line for line in result.stderr.splitlines() if "stripped the prefix" in line]
    assert len(notes) == 1 and all(p in notes[0] for p in prefix.split(".") if p), notes


def test_a_legacy_torch_save_file_is_read(tmp_path):
    path = tmp_path / "legacy.pt"
    torch.save(_demo_state(), path, _use_new_zipfile_serialization=False)
    rows = json.loads(_ok(_run("layers", path, "--arch", "demo_vgg", "--json")))["layers"]
    assert rows[-1]["shape"] == [10, 1024]  # read from the file (onto the meta device)
    _ok(_run("plan", path, "--recipe", "demo", "--arch", "demo_vgg"))


# -- key mismatches name their likely cause -----------------------------------------------------
def test_another_architecture_is_named(tmp_path):
    path = tmp_path / "squeezenet.pth"
    torch.save(build_model("squeezenet1_1", 1000).state_dict(), path)
    line = _error(_run("layers", path, "--arch", "resnet18"))
    assert "does not fit resnet18" in line and "the keys look like squeezenet1_1's" in line
    assert "pass --arch squeezenet1_1" in line


def test_each_architecture_given_as_another_is_among_the_first_three_guesses():
    """The acceptance test: every architecture adntn builds, its state dict checked as another
    (the same check_fit that layers, plan and compress run)."""
    from adntn_cli.errors import ModelError
    from adntn_cli.fit import _all_signatures, check_fit

    archs = sorted(_all_signatures())
    assert len(archs) > 60 and "regnet_y_400mf" in archs and "demo_vgg" in archs
    for i, arch in enumerate(archs):
        other = "resnet18" if arch != "resnet18" else "vgg16"
        shapes = _all_signatures()[arch]
        with pytest.raises(ModelError) as info:
            check_fit(shapes, other, 1000, where=f"{arch}.pth")
        message = str(info.value)
        assert "the keys look like " in message, (arch, message)
        guesses = message.split("the keys look like ", 1)[1].split(": pass")[0]
        named = [w for w in re.findall(r"[a-z0-9_]+", guesses.replace("'s", "")) if w != "or"]
        assert arch in named[:3], (i, arch, guesses)


def test_a_classifier_of_another_size_is_named_by_plan_and_compress_alike(tmp_path):
    path = tmp_path / "ten.pt"
    torch.save(_demo_state(10), path)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(tiny_recipe(0, 1).replace("num_classes: 10", "num_classes: 1000"))
    expected = "the classifier has 10 outputs, the recipe (model.num_classes) says 1000"
    plan = _error(_run("plan", path, "--recipe", recipe))
    compress = _error(_run("compress", path, "--recipe", recipe, "--data", "synthetic:32",
                           "--device", "cpu", "-q", "--out", tmp_path / "out"))  # fmt: skip
    assert expected in plan and expected in compress
    assert not (tmp_path / "out").exists()
    assert "--num-classes 10" in _error(_run("plan", path, "--recipe", recipe, "--num-classes",
                                             "100"))  # fmt: skip


def test_a_compressed_file_given_to_compress_is_named(compressed_run):
    _, run = compressed_run
    line = _error(_run("plan", run / "model.safetensors", "--recipe", "demo"))
    assert "is already compressed (format adntn/2)" in line


def test_a_bare_architecture_name_suggests_torchvision(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert "did you mean torchvision:vgg16?" in _error(_run("layers", "vgg16"))
    assert "did you mean" not in _error(_run("layers", "vgg16.pth"))


# -- layers and plan read the model file ---------------------------------------------------------
def test_layers_and_plan_refuse_a_file_of_another_architecture(tmp_path):
    path = tmp_path / "mobilenet.pth"
    torch.save(build_model("mobilenet_v3_small", 1000).state_dict(), path)
    assert "mobilenet_v3_small" in _error(_run("layers", path, "--arch", "resnet18"))
    assert "mobilenet_v3_small" in _error(_run("plan", path, "--arch", "vgg16", "--recipe",
                                               "vgg16"))  # fmt: skip


def test_layers_shows_the_files_classifier_and_the_template_its_classes(tmp_path):
    path = tmp_path / "ten.safetensors"
    from safetensors.torch import save_file

    save_file(_demo_state(10), str(path))
    rows = json.loads(_ok(_run("layers", path, "--arch", "demo_vgg", "--json")))["layers"]
    assert rows[-1]["shape"] == [10, 1024]
    assert "num_classes: 10}" in _ok(_run("layers", path, "--arch", "demo_vgg", "--template"))


def test_layers_reads_no_weights(tmp_path, monkeypatch):
    """Keys and shapes come from the header (safetensors) or an mmap (torch zip files)."""
    from safetensors.torch import save_file

    st, pt = tmp_path / "m.safetensors", tmp_path / "m.pt"
    save_file(_demo_state(10), str(st))
    torch.save(_demo_state(10), pt)
    import safetensors

    real_open = safetensors.safe_open

    class HeaderOnly:  # safe_open whose tensors cannot be read
        def __init__(self, *args, **kwargs):
            self.f = real_open(*args, **kwargs)

        def __enter__(self):
            self.inner = self.f.__enter__()
            return self

        def __exit__(self, *exc):
            return self.f.__exit__(*exc)

        def __getattr__(self, name):
            if name == "get_tensor":
                raise AssertionError("layers read the weights")
            return getattr(self.inner, name)

    monkeypatch.setattr(safetensors, "safe_open", HeaderOnly)
    _ok(_run("layers", st, "--arch", "demo_vgg"))
    monkeypatch.undo()
    real = torch.load

    def lazy_only(*args, **kwargs):
        assert kwargs.get("mmap") or kwargs.get("map_location") == "meta", kwargs
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "load", lazy_only)
    _ok(_run("layers", pt, "--arch", "demo_vgg"))


# -- files that describe themselves --------------------------------------------------------------
@pytest.fixture(scope="module")
def compressed_run(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny compress run (the teacher and its run folder)."""
    folder = tmp_path_factory.mktemp("run")
    teacher = folder / "t.pt"
    torch.save(_demo_state(10), teacher)
    recipe = folder / "r.yaml"
    recipe.write_text(tiny_recipe(0, 1, layerwise_steps=1))
    out = folder / "out"
    _ok(_run("compress", teacher, "--recipe", recipe, "--data", "synthetic:32", "--device",
             "cpu", "-q", "--out", out))  # fmt: skip
    return teacher, out


def test_a_compressed_file_needs_no_arch(compressed_run):
    _, run = compressed_run
    rows = json.loads(_ok(_run("layers", run / "model.safetensors", "--json")))["layers"]
    assert rows[0]["layer"] == "features.0"
    result = json.loads(_ok(_run("eval", run, "--data", "synthetic:16", "--json")))
    assert result["kind"] == "compressed" and result["input_size"] == 32


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_a_dense_export_of_a_run_folder_describes_itself(compressed_run, tmp_path, suffix):
    _, run = compressed_run
    dense = tmp_path / f"dense{suffix}"
    _ok(_run("export", run, "--dense", dense))  # a run folder, as report takes
    result = json.loads(_ok(_run("eval", dense, "--data", "synthetic:16", "--json")))
    assert result["kind"] == "dense" and result["input_size"] == 32  # no --arch, no --input-size
    out = _ok(_run("layers", dense, "--template"))
    assert "arch: demo_vgg, num_classes: 10" in out


def test_a_model_fed_the_wrong_input_size_says_pass_input_size(compressed_run):
    teacher, _ = compressed_run  # a bare state dict: it records no input size
    line = _error(_run("eval", teacher, "--data", "synthetic:16", "--arch", "demo_vgg"))
    assert "does not take 224x224 images" in line and "pass --input-size N" in line
    _ok(_run("eval", teacher, "--data", "synthetic:16", "--arch", "demo_vgg", "--input-size",
             "32"))  # fmt: skip


def test_export_of_a_folder_without_a_model_is_named(tmp_path):
    line = _error(_run("export", tmp_path, "--dense", tmp_path / "d.pt"))
    assert "holds no model.safetensors" in line


def test_a_torchvision_reference_checkpoint_names_its_arch_in_its_args(tmp_path):
    path = tmp_path / "checkpoint.pth"
    torch.save(_torchvision_reference(_demo_state()), path)  # args.model = "demo_vgg"
    assert "arch: demo_vgg, num_classes: 10" in _ok(_run("layers", path, "--template"))
