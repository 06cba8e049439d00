"""``compress`` as one call with keyword flags: a thin alias of ``job.compress`` kept for the
README, notebooks and scripts (and ``compress_`` in plan.py for in-place use on a model).

    report = compress("teacher.pt", "vgg16", data="imagefolder:/data/imagenet", out="runs/v")

is ``job.compress(CompressJob.create(...))`` with the report as a dict: report.json's keys plus
``run_dir``. New code can use ``adntn_cli.job`` directly and get the typed report.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .distill import Callback
from .job import CompressJob
from .job import compress as run_job

__all__ = ["compress"]


def compress(
    model: str, recipe: str | Path, *, callback: Callback | None = None, **flags: Any
) -> dict[str, Any]:
    """Compress ``model`` with ``recipe`` (flags: those of ``CompressJob.create``); returns the
    report (also written to the run directory) as a dict."""
    report = run_job(CompressJob.create(model, recipe, **flags), callback)
    return {**report.to_dict(), "run_dir": report.run_dir}
