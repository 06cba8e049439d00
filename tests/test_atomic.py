"""Atomic writes: a full disk (ENOSPC, injected) is a typed error naming the path, the temporary
file is gone, and the previous file is intact; the same for each writer that uses them."""

from __future__ import annotations

import errno
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

import adntn_cli.atomic as atomic
from adntn_cli.checkpoints import load_checkpoint, save_atomic
from adntn_cli.errors import DiskFullError, WriteError
from adntn_cli.io import save_compressed
from adntn_cli.report import plot

REAL_WRITE = atomic._write_file


@pytest.fixture()
def fill_disk(monkeypatch) -> Callable[[], list[Path]]:
    """``fill_disk()``: from then on every atomic write runs out of space halfway through its
    temporary file (the real write, cut short, then ENOSPC); returns the temporary paths."""

    def arm() -> list[Path]:
        calls: list[Path] = []

        def full(tmp: Path, data) -> None:
            calls.append(tmp)
            REAL_WRITE(tmp, bytes(data)[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device", str(tmp))

        monkeypatch.setattr(atomic, "_write_file", full)
        return calls

    return arm


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if ".tmp" in p.name)


def test_a_full_disk_is_reported_and_the_previous_file_is_kept(tmp_path, fill_disk):
    path = tmp_path / "report.json"
    atomic.write_text(path, '{"old": true}\n')
    calls = fill_disk()
    with pytest.raises(DiskFullError) as err:
        atomic.write_text(path, '{"new": true}\n')
    message = str(err.value)
    assert message.startswith(f"no space left on device while writing {path} (14 bytes)")
    assert "free space and run again" in message and "--resume" in message
    assert err.value.errno == errno.ENOSPC and err.value.path == str(path)
    assert calls and not calls[0].exists(), "the half-written temporary file was left behind"
    assert path.read_text() == '{"old": true}\n'
    assert _leftovers(tmp_path) == []


def test_other_write_errors_are_typed_and_name_the_path(tmp_path, monkeypatch):
    def denied(tmp, data):
        raise PermissionError(errno.EACCES, "Permission denied", str(tmp))

    monkeypatch.setattr(atomic, "_write_file", denied)
    with pytest.raises(WriteError, match=r"cannot write .*x\.bin: Permission denied") as err:
        atomic.write_bytes(tmp_path / "x.bin", b"data")
    assert not isinstance(err.value, DiskFullError)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="no /dev/full here")
def test_the_real_write_path_surfaces_enospc():
    """/dev/full answers every write with ENOSPC: the bytes ``_write_file`` writes reach the
    kernel and its errno comes back intact (torch.save into a full disk raises a RuntimeError
    about an 'unexpected pos' instead, which is why checkpoints are serialised in memory)."""
    with pytest.raises(OSError) as err:
        REAL_WRITE(Path("/dev/full"), b"x" * 10_000)
    assert err.value.errno == errno.ENOSPC


def test_a_checkpoint_save_on_a_full_disk_keeps_the_previous_checkpoint(tmp_path, fill_disk):
    path = tmp_path / "checkpoints" / "last.pt"
    model = nn.Linear(4, 3)
    save_atomic({"model": model.state_dict(), "step": 10}, path)
    before, weight = path.read_bytes(), model.weight.detach().clone()
    calls = fill_disk()
    with torch.no_grad():
        model.weight.add_(1.0)
    with pytest.raises(DiskFullError, match=r"while writing .*last\.pt .*--resume"):
        save_atomic({"model": model.state_dict(), "step": 20}, path)
    assert calls and not calls[0].exists()
    assert path.read_bytes() == before
    back = load_checkpoint(path)
    assert back["step"] == 10 and torch.equal(back["model"]["weight"], weight)
    assert _leftovers(tmp_path) == []


def test_the_compressed_file_on_a_full_disk_keeps_the_previous_file(tmp_path, fill_disk):
    from safetensors.torch import load_file

    path = tmp_path / "model.safetensors"
    model = nn.Sequential(nn.Linear(4, 3))
    size = save_compressed(model, path, arch="x", num_classes=3, recipe={"version": 1})
    assert size == path.stat().st_size
    before = path.read_bytes()
    fill_disk()
    with torch.no_grad():
        model[0].weight.zero_()
    with pytest.raises(DiskFullError, match=r"while writing .*model\.safetensors"):
        save_compressed(model, path, arch="x", num_classes=3, recipe={"version": 1})
    assert path.read_bytes() == before
    assert not torch.equal(load_file(str(path))["0.weight"], torch.zeros(3, 4))
    assert _leftovers(tmp_path) == []


def test_the_report_plot_is_written_atomically(tmp_path, fill_disk):
    report = {"layers": [{"layer": "fc", "ratio": 10.0, "structure": "ttn"}],
              "totals": {"replaced_ratio": 10.0, "ratio": 2.0}}  # fmt: skip
    plot(report, str(tmp_path / "p.png"))
    before = (tmp_path / "p.png").read_bytes()
    assert before.startswith(b"\x89PNG")
    fill_disk()
    with pytest.raises(DiskFullError, match=r"p\.png"):
        plot(report, str(tmp_path / "p.png"))
    assert (tmp_path / "p.png").read_bytes() == before
    assert _leftovers(tmp_path) == []
