"""What a user asks for, per layer: a structure with its bond dimensions and activations."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import TNConfigError

__all__ = ["StructureSpec", "per_level"]


@dataclass(frozen=True)
class StructureSpec:
    """A generator's configuration.

    ``bond_dim`` and ``activation`` are one value or one per level, coarse to fine (the root side
    first); ``activation=None`` takes the structure's default (tanh for the ADNTN structures, the
    identity for the baselines). ``factors=(out, in)`` fixes the physical legs, ``n_legs`` their
    number; ``options`` holds structure-specific settings (e.g. ``disentangler: separable``).
    ``in_map=(C, H, W)``: the weight is a Linear's that reads a flattened ``C x H x W`` map, and
    the automatic legs keep that structure (factorize.py).
    """

    structure: str
    bond_dim: int | Sequence[int] = 8
    activation: str | Sequence[str] | None = None
    output_activation: str = "identity"
    factors: tuple[Sequence[int], Sequence[int]] | None = None
    n_legs: int | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    in_map: tuple[int, int, int] | None = None


def per_level(value: Any, n: int, what: str, structure: str) -> list:
    """Broadcast one value to ``n`` levels, or check a per-level list has ``n`` entries."""
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise TNConfigError(
                f"{what} has {len(value)} entries but this {structure} has {n} level(s) "
                f"(coarse to fine); give one value or {n}"
            )
        return list(value)
    return [value] * n
