"""The cost model: memory budgets, time estimates and the choice of execution schedule.

Two schedules apply a generated Linear layer to a batch ``x`` of ``B`` rows:

- ``materialise``: generate ``W`` (once per step; cached in eval mode), then ``x @ W.T``;
- ``contract``: run the generator up to its final, linear step and contract ``x`` through that
  step's tensors, never forming ``W`` (only where the structure allows it).

The choice is made from multiply-adds and bytes moved at the actual batch size, with a simple
roofline per device kind: ``seconds = 2 * macs / flops_per_s + bytes / bytes_per_s``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from .program import PathCost

__all__ = [
    "DeviceProfile",
    "ScheduleEstimate",
    "default_memory_budget",
    "device_profile",
    "format_bytes",
]


@dataclass(frozen=True)
class DeviceProfile:
    """Sustained throughput of a device kind, for ranking schedules (not for predicting times)."""

    kind: str
    flops_per_s: float
    bytes_per_s: float

    def seconds(self, macs: int, moved_bytes: int) -> float:
        return 2.0 * macs / self.flops_per_s + moved_bytes / self.bytes_per_s


PROFILES = {
    "cpu": DeviceProfile("cpu", 1.0e11, 1.5e10),
    "cuda": DeviceProfile("cuda", 5.0e13, 3.0e12),
    "mps": DeviceProfile("mps", 5.0e12, 2.0e11),
}


def device_profile(device: torch.device | str | None) -> DeviceProfile:
    kind = torch.device(device).type if device is not None else "cpu"
    return PROFILES.get(kind, PROFILES["cpu"])


@dataclass(frozen=True)
class ScheduleEstimate:
    """One schedule's forward cost at one batch size."""

    schedule: str
    macs: int
    moved_bytes: int
    peak_bytes: int
    seconds: float


def estimate(
    schedule: str,
    cost: PathCost,
    extra_macs: int,
    extra_elems: int,
    elem_bytes: int,
    profile: DeviceProfile,
) -> ScheduleEstimate:
    """Estimate from a generator path cost plus the layer's own work (matmul, input, output)."""
    macs = cost.macs + extra_macs
    moved = (2 * cost.total_elems + extra_elems) * elem_bytes  # intermediates written and read
    return ScheduleEstimate(
        schedule, macs, moved, cost.peak_elems * elem_bytes, profile.seconds(macs, moved)
    )


def default_memory_budget(device: torch.device | str | None = None) -> int:
    """Half the memory of ``device`` (CUDA: the card; otherwise physical RAM), in bytes."""
    dev = torch.device(device) if device is not None else None
    if dev is not None and dev.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_properties(dev).total_memory // 2
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
    except (ValueError, OSError, AttributeError):
        return 8 * 2**30


def format_bytes(n: float) -> str:
    """``1536 -> '1.5 KiB'``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")
