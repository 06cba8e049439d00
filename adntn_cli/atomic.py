"""Atomic writes: a temporary file beside the target, flushed to disk, then renamed over it
(and the folder synced, so that the rename survives a crash too).

A reader (or a run resumed after SIGKILL) sees the old file or the new one, never half of one.
When the write fails (a full disk, a read-only folder) the temporary file is removed, the old file
is left as it was, and the failure is a typed error naming the path: ``DiskFullError`` for ENOSPC
and EDQUOT, ``WriteError`` otherwise. Everything is serialised to bytes first and written with
Python's own file calls, so the operating system's error reaches us intact (``torch.save`` into a
full disk reports a bare "unexpected pos" RuntimeError instead).
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
from pathlib import Path
from typing import Any

from .errors import DiskFullError, WriteError

__all__ = ["temp_path", "torch_bytes", "write_bytes", "write_error", "write_text"]

FULL = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))
RESUME_HINT = (
    "free space and run again (a compress run continues from its last checkpoint with --resume)"
)


def temp_path(path: Path) -> Path:
    """The temporary name ``path`` is written under: hidden, beside it, unique per process."""
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


def _write_file(tmp: Path, data: bytes | memoryview) -> None:
    """Write all of ``data`` to a new file ``tmp`` and force it to disk."""
    with open(tmp, "wb", buffering=0) as f:
        view = memoryview(data)
        while view:
            view = view[f.write(view) :]
        os.fsync(f.fileno())


def _sync_dir(folder: Path) -> None:
    """Make the rename itself durable (POSIX; a no-op where folders cannot be opened)."""
    if not hasattr(os, "O_DIRECTORY"):
        return
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_error(err: OSError, path: Path, size: int = 0) -> WriteError:
    """The one-line error for a failed write of ``path`` (a full disk says so)."""
    return _error(err, path, size)


def _error(err: OSError, path: Path, size: int) -> WriteError:
    if err.errno in FULL:
        return DiskFullError(
            f"no space left on device while writing {path} ({size:,} bytes): {RESUME_HINT}",
            str(path),
            err.errno,
        )
    reason = err.strerror or type(err).__name__
    return WriteError(
        f"cannot write {path}: {reason}; choose another output path or fix its permissions",
        str(path),
        err.errno,
    )


def write_bytes(path: str | Path, data: bytes | memoryview) -> int:
    """Write ``data`` to ``path`` atomically; returns the number of bytes written."""
    path = Path(path)
    tmp = temp_path(path)
    size = memoryview(data).nbytes
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_file(tmp, data)
        os.replace(tmp, path)
        _sync_dir(path.parent)
    except OSError as err:
        with contextlib.suppress(OSError):  # the original error is the one to report
            tmp.unlink(missing_ok=True)
        raise _error(err, path, size) from None
    return size


def write_text(path: str | Path, text: str) -> int:
    """``write_bytes`` of ``text`` in UTF-8."""
    return write_bytes(path, text.encode("utf-8"))


def torch_bytes(obj: Any) -> memoryview:
    """``torch.save(obj)`` into memory, for ``write_bytes``."""
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getbuffer()
