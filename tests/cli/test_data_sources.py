"""Real data and the teacher's own preprocessing, through the CLI: Fashion-MNIST and MNIST IDX
files (written here, small), preprocessing keys in the recipe and in the compressed file, class
checks, val-only eval, honest resolved recipes, and resume that keeps its history."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from adntn_cli.cli.app import app, register_commands
from adntn_cli.data import make_datasets
from adntn_cli.fileformat import read_header
from adntn_cli.models import build_model
from adntn_cli.pipeline import compress as run_compress
from tests.cli.tiny import cli_error, cli_ok, tiny_recipe

register_commands()
runner = CliRunner()


def write_idx(path: Path, array: np.ndarray, *, gz: bool) -> None:
    """An IDX file of unsigned bytes, as the MNIST distribution has them."""
    header = (0x800 + array.ndim).to_bytes(4, "big")
    header += b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    blob = header + array.astype(np.uint8).tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        blob = gzip.compress(blob)
    path.write_bytes(blob)


def idx_folder(root: Path, *, n_train: int = 48, n_val: int = 16, gz: bool = True) -> Path:
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_val)):
        write_idx(root / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)), gz=gz)
        write_idx(root / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10, gz=gz)
    return root


def _run(*args):
    return runner.invoke(app, [str(a) for a in args])


_ok, _error = cli_ok, cli_error


@pytest.fixture()
def job(tmp_path):
    torch.manual_seed(0)
    teacher = tmp_path / "t.pt"
    torch.save(build_model("demo_vgg", 10).state_dict(), teacher)
    return teacher, tmp_path


def _recipe(tmp_path: Path, data: str = "", epochs: float = 0.5) -> Path:
    path = tmp_path / "r.yaml"
    text = tiny_recipe(epochs, 2, layerwise_steps=2)
    path.write_text(text.replace("data: {batch_size: 16}", f"data: {{batch_size: 16{data}}}"))
    return path


def _compress(teacher: Path, recipe: Path, data: str, out: Path, *extra: str):
    return _run("compress", teacher, "--recipe", recipe, "--data", data, "--device", "cpu",
                "-q", "--out", out, *extra)  # fmt: skip


# -- Fashion-MNIST and MNIST ---------------------------------------------------------------------
@pytest.mark.parametrize("kind,gz", [("fashion-mnist", True), ("mnist", False)])
def test_idx_sources_read_the_official_splits_grey_to_three_channels(tmp_path, kind, gz):
    root = idx_folder(tmp_path / kind, gz=gz)
    data = make_datasets(f"{kind}:{root}", 32)
    assert (len(data.train), len(data.val), data.num_classes) == (48, 16, 10)
    x, y = data.val[3]
    assert x.shape == (3, 32, 32) and y == 3 and torch.equal(x[0], x[1])
    mean = {"fashion-mnist": 0.2860, "mnist": 0.1307}[kind]
    assert data.preprocess.mean == (mean,) * 3 and data.preprocess.augment == "none"
    assert data.classes[0] == ("T-shirt/top" if kind == "fashion-mnist" else "0")


def test_a_missing_idx_file_names_it_and_the_debian_package(tmp_path):
    root = idx_folder(tmp_path / "f")
    (root / "t10k-labels-idx1-ubyte.gz").unlink()
    line = _error(_run("eval", "torchvision:resnet18", "--num-classes", "10", "--input-size",
                       "32", "--data", f"fashion-mnist:{root}"))  # fmt: skip
    assert "no t10k-labels-idx1-ubyte[.gz]" in line
    assert "apt-get install dataset-fashion-mnist" in line


def test_compress_on_fashion_mnist_records_its_preprocessing_classes_and_data(job):
    teacher, tmp = job
    root = idx_folder(tmp / "fashion")
    spec = f"fashion-mnist:{root}"
    _ok(_compress(teacher, _recipe(tmp), spec, tmp / "out"))
    header = read_header(tmp / "out" / "model.safetensors")
    assert header.preprocessing["mean"] == [0.286] * 3 and header.preprocessing["crop"] == 32
    assert header.classes[-1] == "Ankle boot"
    resolved = yaml.safe_load((tmp / "out" / "recipe.resolved.yaml").read_text())
    assert resolved["data"]["train"] == spec  # --data, not the recipe file's (unset) value
    assert header.recipe.data.train == spec  # the embedded recipe too


def test_eval_reuses_the_recorded_preprocessing(job):
    """A recipe's own mean/std reach eval through the file: its loss is that of the recorded
    preprocessing, not the source's defaults."""
    from torch.utils.data import DataLoader

    from adntn_cli.evaluate import accuracy
    from adntn_cli.io import load_compressed
    from adntn_cli.preprocess import Preprocess

    teacher, tmp = job
    root = idx_folder(tmp / "fashion")
    spec = f"fashion-mnist:{root}"
    recipe = _recipe(tmp, ", mean: 0.5, std: 0.1, augment: flip")
    _ok(_compress(teacher, recipe, spec, tmp / "out"))
    path = tmp / "out" / "model.safetensors"
    recorded = read_header(path).preprocessing
    assert recorded["mean"] == [0.5] * 3 and recorded["std"] == [0.1] * 3
    assert recorded["augment"] == "flip"
    result = json.loads(_ok(_run("eval", tmp / "out", "--data", spec, "--json")))
    model = load_compressed(path)

    def loss(pre: Preprocess | None) -> float:
        val = make_datasets(spec, 32, preprocess=pre, train=False).val
        return accuracy(model, DataLoader(val, 64))["loss"]

    assert result["loss"] == pytest.approx(loss(Preprocess.from_dict(recorded)), rel=1e-6)
    assert result["loss"] != pytest.approx(loss(None), rel=1e-5)  # an untrained net: near ln 10


def test_preprocessing_keys_for_digits_are_refused(job):
    teacher, tmp = job
    line = _error(_compress(teacher, _recipe(tmp, ", mean: 0.5"), "digits", tmp / "out"))
    assert "data.mean: digits is prepared by adntn itself" in line
    assert not (tmp / "out").exists()


def test_recipe_preprocessing_keys_are_validated(job):
    teacher, tmp = job
    line = _error(_run("plan", teacher, "--recipe", _recipe(tmp, ", augment: heavy")))
    assert "data.augment" in line and "'imagenet'" in line


# -- classes -------------------------------------------------------------------------------------
def _two_class_folder(root: Path, splits=("train", "val")) -> Path:
    from PIL import Image

    for split in splits:
        for cls in ("cat", "dog"):
            (root / split / cls).mkdir(parents=True)
            for i in range(4):
                Image.new("RGB", (40, 40), (60 * i, 90, 30)).save(root / split / cls / f"{i}.png")
    return root


def test_data_of_another_class_count_is_refused_unless_meant(job):
    teacher, tmp = job
    spec = f"imagefolder:{_two_class_folder(tmp / 'pets')}"
    line = _error(_compress(teacher, _recipe(tmp), spec, tmp / "out"))
    assert "has 2 classes, the model's classifier 10" in line and "--allow-class-mismatch" in line
    assert not (tmp / "out").exists()
    _ok(_compress(teacher, _recipe(tmp), spec, tmp / "out", "--allow-class-mismatch"))
    assert read_header(tmp / "out" / "model.safetensors").classes is None  # 2 names, 10 outputs


def test_eval_needs_only_a_val_folder(job):
    teacher, tmp = job
    spec = f"imagefolder:{_two_class_folder(tmp / 'pets', splits=('val',))}"
    result = json.loads(_ok(_run("eval", teacher, "--arch", "demo_vgg", "--input-size", "32",
                                 "--data", spec, "--allow-class-mismatch", "--json")))  # fmt: skip
    assert result["val_images"] == 8


# -- resume keeps the run's history --------------------------------------------------------------
def test_resume_keeps_the_original_command_and_refuses_a_changed_schedule(job):
    teacher, tmp = job
    recipe, out = _recipe(tmp, epochs=1), tmp / "run"
    first = ["adntn", "compress", str(teacher), "--recipe", str(recipe), "--first"]
    part = run_compress(str(teacher), str(recipe), out=out, data="synthetic:64", device="cpu",
                        stop_after=2, argv=first)  # fmt: skip
    assert part["finetune"]["interrupted"]
    recipe.write_text(recipe.read_text().replace("epochs: 1,", "epochs: 2,"))
    before = sorted(p.name for p in out.rglob("*"))
    line = _error(_compress(teacher, recipe, "synthetic:64", out, "--resume"))
    assert "distill.finetune.epochs: 1.0 -> 2.0" in line and "--allow-schedule-change" in line
    assert sorted(p.name for p in out.rglob("*")) == before
    result = _compress(teacher, recipe, "synthetic:64", out, "--resume", "--allow-schedule-change")
    _ok(result)
    assert "resuming under a changed schedule: distill.finetune.epochs" in result.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["command"] == first
    assert report["resumes"][0]["schedule_changed"] == ["distill.finetune.epochs: 1.0 -> 2.0"]
    assert report["resumes"][0]["command"] != first  # (CliRunner's argv: pytest's own)
