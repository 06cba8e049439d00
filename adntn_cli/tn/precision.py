"""Generators run in their cores' dtype, whatever the caller's autocast says.

Mixed precision (``torch.autocast``) casts matmul-like operators to bf16 or fp16. Inside a
generator that would round every intermediate of a long chain of small contractions (about 0.8%
relative error in the weight for bf16, against 0.17% for rounding a float32 weight once), and it
breaks custom autograd functions whose backward runs outside autocast with mixed dtypes. So a
generator turns autocast off for its own work, and the layer casts once at its boundary: the
weight to the autocast dtype (materialise), or the input to the cores' dtype and the output back
(contract).
"""

from __future__ import annotations

import contextlib

import torch

__all__ = ["autocast_dtype", "without_autocast"]


def _kind(device: torch.device | str) -> str:
    return torch.device(device).type


def autocast_dtype(device: torch.device | str) -> torch.dtype | None:
    """The dtype autocast casts matmuls to on ``device``'s kind, or None when it is off there."""
    kind = _kind(device)
    if not torch.amp.is_autocast_available(kind) or not torch.is_autocast_enabled(kind):
        return None
    return torch.get_autocast_dtype(kind)


def without_autocast(device: torch.device | str) -> contextlib.AbstractContextManager:
    """A context in which ``device``'s kind runs every operator in its inputs' own dtype."""
    kind = _kind(device)
    if not torch.amp.is_autocast_available(kind):
        return contextlib.nullcontext()
    return torch.autocast(kind, enabled=False)
