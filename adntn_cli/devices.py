"""Which device a run uses: ``auto`` and the names a user may give."""

from __future__ import annotations

import torch

from .errors import AdntnError

__all__ = ["resolve_device"]


def _mps() -> bool:
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def resolve_device(name: str) -> torch.device:
    """``auto``: CUDA when present, else MPS, else CPU; an explicit device must exist."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if _mps() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise AdntnError(f"--device {name}: no CUDA device here; valid: auto, cpu")
    if name == "mps" and not _mps():
        raise AdntnError("--device mps: no MPS device here; valid: auto, cpu")
    if name not in ("cpu", "mps") and not name.startswith("cuda"):
        raise AdntnError(f"--device {name!r} is not a device; valid: auto, cpu, cuda, cuda:N, mps")
    return torch.device(name)
