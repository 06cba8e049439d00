"""Run directories: a new ``runs/<name>-<n>``, and the rule that a busy one is never touched
unless the user says ``--resume`` (continue it) or ``--force`` (start over)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from .errors import RunDirError

__all__ = ["check_run_dir", "new_run_dir", "prepare_run_dir"]


def new_run_dir(name: str, root: Path = Path("runs")) -> Path:
    """``runs/<name>-<n>`` with the first unused ``n``."""
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(name).stem)
    n = 1
    while (root / f"{stem}-{n}").exists():
        n += 1
    return root / f"{stem}-{n}"


def check_run_dir(out: Path, *, resume: bool, force: bool) -> bool:
    """Refuse a non-empty directory unless resuming it or starting it over; changes nothing.
    Returns whether ``out`` holds files."""
    if resume and force:
        raise RunDirError("--resume and --force contradict each other: pick one")
    if out.exists() and not out.is_dir():
        raise RunDirError(f"--out {out} is a file: name a directory")
    busy = out.exists() and any(out.iterdir())
    if busy and not (resume or force):
        raise RunDirError(
            f"{out} is not empty: pass --resume to continue that run or --force to start over"
        )
    return busy


def prepare_run_dir(out: Path, *, resume: bool, force: bool) -> Path:
    """``check_run_dir``, then empty it (``force``) or drop the temporary files of a killed
    run (``resume``), and create it."""
    busy = check_run_dir(out, resume=resume, force=force)
    if busy and force:
        shutil.rmtree(out)
    if busy and resume:
        for stale in [*out.glob(".*.tmp*"), *out.glob("checkpoints/.*.tmp*")]:
            stale.unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    return out
