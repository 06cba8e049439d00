"""``adntn compress`` on a disk that fills up (ENOSPC, injected into the atomic writer): exit 2
with one line saying so, no temporary file left, the previous checkpoint intact, and --resume
then finishes the run with the weights an uninterrupted run ends with."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

import adntn_cli.atomic as atomic
import adntn_cli.checkpoints as checkpoints
from adntn_cli.checkpoints import load_checkpoint
from adntn_cli.cli.app import app, register_commands
from adntn_cli.models import build_model
from tests.cli.tiny import tiny_recipe

register_commands()
runner = CliRunner()
REAL_WRITE = atomic._write_file

# synthetic:64 -> 48 training images, 3 steps an epoch: 6 steps, last.pt at steps 2, 4 and 6
RECIPE = tiny_recipe(2, 2)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("full")
    torch.manual_seed(0)
    torch.save(build_model("demo_vgg", 10).state_dict(), root / "t.pt")
    (root / "r.yaml").write_text(RECIPE)
    return root


def _args(files: Path, out: Path, *extra: str) -> list[str]:
    return ["compress", str(files / "t.pt"), "--recipe", str(files / "r.yaml"), "--data",
            "synthetic:64", "--device", "cpu", "--seed", "2", "-q", "--out", str(out),
            *extra]  # fmt: skip


def _fill_disk_at(monkeypatch, name: str, nth: int) -> list[Path]:
    """The ``nth`` atomic write of a file called ``name`` runs out of space halfway."""
    seen: list[Path] = []

    def write(tmp: Path, data) -> None:
        if tmp.name.startswith(f".{name}.tmp"):
            seen.append(tmp)
            if len(seen) == nth:
                REAL_WRITE(tmp, bytes(data)[: len(data) // 2])
                raise OSError(errno.ENOSPC, "No space left on device", str(tmp))
        REAL_WRITE(tmp, data)

    monkeypatch.setattr(atomic, "_write_file", write)
    return seen


def _leftovers(folder: Path) -> list[str]:
    return sorted(str(p) for p in folder.rglob("*") if ".tmp" in p.name)


@pytest.fixture(scope="module")
def uninterrupted(files):
    result = runner.invoke(app, _args(files, files / "whole"))
    assert result.exit_code == 0, result.output
    return load_file(str(files / "whole" / "model.safetensors"))


def _one_error_line(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    return lines[0]


@pytest.mark.slow
def test_a_full_disk_at_a_checkpoint_keeps_the_last_one_and_resume_finishes(
    files, uninterrupted, tmp_path, monkeypatch
):
    out = tmp_path / "run"
    kept: dict[str, bytes] = {}
    seen = _fill_disk_at(monkeypatch, "last.pt", nth=2)  # step 4's checkpoint

    def spy(path, data):  # the bytes of the last checkpoint that made it to disk
        size = atomic.write_bytes(path, data)
        if Path(path).name == "last.pt":
            kept["last"] = Path(path).read_bytes()
        return size

    monkeypatch.setattr(checkpoints, "write_bytes", spy)
    result = runner.invoke(app, _args(files, out))
    monkeypatch.undo()

    line = _one_error_line(result)
    last = out / "checkpoints" / "last.pt"
    assert line.startswith(f"error: no space left on device while writing {last} (")
    assert "free space and run again" in line and "--resume" in line
    assert len(seen) == 2 and not seen[1].exists()
    assert _leftovers(out) == []
    assert last.read_bytes() == kept["last"], "the previous checkpoint changed"
    assert load_checkpoint(last)["step"] == 2
    assert not (out / "model.safetensors").exists()

    resumed = runner.invoke(app, _args(files, out, "--resume"))
    assert resumed.exit_code == 0, resumed.output
    again = load_file(str(out / "model.safetensors"))
    assert again.keys() == uninterrupted.keys()
    assert all(torch.equal(again[k], uninterrupted[k]) for k in again)


@pytest.mark.slow
def test_a_full_disk_at_the_report_keeps_the_model_and_resume_writes_it(
    files, uninterrupted, tmp_path, monkeypatch
):
    out = tmp_path / "run"
    seen = _fill_disk_at(monkeypatch, "report.json", nth=1)
    result = runner.invoke(app, _args(files, out))
    monkeypatch.undo()

    line = _one_error_line(result)
    assert f"no space left on device while writing {out / 'report.json'}" in line
    assert seen and not seen[0].exists() and _leftovers(out) == []
    assert not (out / "report.json").exists()
    model = load_file(str(out / "model.safetensors"))  # complete: written before the report
    assert all(torch.equal(model[k], uninterrupted[k]) for k in model)

    resumed = runner.invoke(app, _args(files, out, "--resume"))
    assert resumed.exit_code == 0, resumed.output
    assert (out / "report.json").exists() and (out / "metrics.csv").exists()
