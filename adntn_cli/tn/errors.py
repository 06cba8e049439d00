"""Errors raised by the tensor-network core. Both are ValueErrors: they describe bad input."""

from __future__ import annotations

__all__ = ["MemoryBudgetError", "TNConfigError"]


class TNConfigError(ValueError):
    """A structure, factorisation or bond-dimension choice that cannot be built."""


class MemoryBudgetError(TNConfigError):
    """A plan whose estimated memory exceeds the budget; the message carries both numbers."""
