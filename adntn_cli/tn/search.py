"""Choosing bond dimensions for a target compression ratio."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from .errors import MemoryBudgetError, TNConfigError
from .generator import TNGenerator
from .spec import StructureSpec

__all__ = ["bond_dim_for_ratio", "tapered"]


def tapered(gen: TNGenerator, chi: int) -> list[int] | int:
    """``chi`` at every level, lowered where a level's cap binds (mera); else just ``chi``."""
    caps = gen.network.info.get("caps")
    return [min(chi, c) for c in caps] if caps else chi


def _build(spec: StructureSpec, shape: Sequence[int], budget: int | None) -> TNGenerator | None:
    try:
        return TNGenerator(spec, shape, device="meta", memory_budget=budget)
    except MemoryBudgetError:
        return None


def bond_dim_for_ratio(
    spec: StructureSpec,
    weight_shape: Sequence[int],
    target_ratio: float,
    *,
    memory_budget: int | None = None,
    max_bond: int = 1024,
) -> StructureSpec:
    """``spec`` with the uniform (mera: tapered) bond dimension giving the most parameters that
    are not above ``dense / target_ratio``.

    Raises ``TNConfigError`` when even bond dimension 1 has too many parameters (the budget is
    unreachable for this structure, e.g. lowrank below ``O + I + 1``).
    """
    if target_ratio <= 0:
        raise TNConfigError(f"target_ratio must be positive, got {target_ratio}")
    probe = TNGenerator(
        dataclasses.replace(spec, bond_dim=1),
        weight_shape,
        device="meta",
        memory_budget=memory_budget,
    )
    allowed = probe.dense_params / target_ratio

    def fits(chi: int) -> bool:
        gen = _build(
            dataclasses.replace(spec, bond_dim=tapered(probe, chi)), weight_shape, memory_budget
        )
        return gen is not None and gen.num_params <= allowed

    if not fits(1):
        shape = "x".join(map(str, weight_shape))
        raise TNConfigError(
            f"{spec.structure} cannot reach {target_ratio:g}x on {shape}: its smallest generator "
            f"has {probe.num_params} parameters, the budget is {allowed:.0f}; target_ratio can "
            f"be at most {probe.dense_params / probe.num_params:,.0f} here"
        )
    lo, hi = 1, 2
    while hi <= max_bond and fits(hi):
        lo, hi = hi, hi * 2
    hi = min(hi, max_bond + 1)
    while hi - lo > 1:  # fits(lo) and not fits(hi)
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return dataclasses.replace(spec, bond_dim=tapered(probe, lo))
