"""Choosing bond dimensions for a target compression ratio."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence

from .errors import MemoryBudgetError, TNConfigError
from .generator import TNGenerator
from .spec import StructureSpec

__all__ = ["bond_dim_for_ratio", "fill_levels", "tapered"]


def tapered(gen: TNGenerator, chi: int) -> list[int] | int:
    """``chi`` at every level, lowered where a level's cap binds (mera); else just ``chi``."""
    caps = gen.network.info.get("caps")
    return [min(chi, c) for c in caps] if caps else chi


def _build(spec: StructureSpec, shape: Sequence[int], budget: int | None) -> TNGenerator | None:
    try:
        return TNGenerator(spec, shape, device="meta", memory_budget=budget)
    except MemoryBudgetError:
        return None


def _probe(spec: StructureSpec, shape: Sequence[int], budget: int | None) -> TNGenerator:
    """The structure's smallest generator (every bond 1) on ``shape``."""
    return TNGenerator(dataclasses.replace(spec, bond_dim=1), shape, device="meta",
                       memory_budget=budget)  # fmt: skip


def _free_leg_bound(spec: StructureSpec, probe: TNGenerator) -> int | None:
    """The bound on the automatic legs where the user left it to adntn (a structure with a
    ``leg_dim`` option, neither it nor ``factors`` given), else None."""
    if spec.factors is not None or "leg_dim" not in probe.structure.options:
        return None
    if spec.options.get("leg_dim") is not None:
        return None
    return probe.structure.max_leg_dim(spec)


def _with_leg_dim(spec: StructureSpec, leg_dim: int) -> StructureSpec:
    return dataclasses.replace(spec, options={**spec.options, "leg_dim": leg_dim})


def _leg_choices(
    spec: StructureSpec, shape: Sequence[int], budget: int | None
) -> Iterator[tuple[StructureSpec, TNGenerator]]:
    """The spec and its smallest generator; where the legs are automatic (augttn, mera), then
    the same at each smaller ``leg_dim``, largest first (one over the memory budget left out)."""
    probe = _probe(spec, shape, budget)
    yield spec, probe
    bound = _free_leg_bound(spec, probe)
    for leg_dim in range(bound - 1, 1, -1) if bound else ():
        trial = _with_leg_dim(spec, leg_dim)
        try:
            yield trial, _probe(trial, shape, budget)
        except MemoryBudgetError:
            continue


def _reachable(
    spec: StructureSpec, shape: Sequence[int], target_ratio: float, budget: int | None
) -> tuple[StructureSpec, TNGenerator]:
    """``spec`` and its smallest generator; where that is above the budget and the legs are
    automatic, the spec with the largest smaller ``leg_dim`` whose smallest generator is within
    it. Smaller legs make smaller disentanglers: at 20,000x on AlexNet's FC7 (4096x4096, 839
    parameters allowed) augttn's smallest generator has 1,340 at legs of 4 and 248 at legs of 2.
    Unreachable at every ``leg_dim``: raises ``TNConfigError`` with the most it reaches."""
    seen = []
    for trial, probe in _leg_choices(spec, shape, budget):
        if probe.num_params <= probe.dense_params / target_ratio:
            return trial, probe
        seen.append((trial, probe))
    trial, probe = min(seen, key=lambda c: c[1].num_params)
    dims = "x".join(map(str, shape))
    legs = f" (options.leg_dim {trial.options['leg_dim']})" if trial is not spec else ""
    raise TNConfigError(
        f"{spec.structure} cannot reach {target_ratio:g}x on {dims}: its smallest generator{legs} "
        f"has {probe.num_params} parameters, the budget is {probe.dense_params / target_ratio:.0f};"
        f" target_ratio can be at most {probe.dense_params / probe.num_params:,.0f} here"
    )


def bond_dim_for_ratio(
    spec: StructureSpec,
    weight_shape: Sequence[int],
    target_ratio: float,
    *,
    memory_budget: int | None = None,
    max_bond: int = 1024,
    fill: bool = True,
) -> StructureSpec:
    """``spec`` with the uniform (mera: tapered) bond dimension giving the most parameters that
    are not above ``dense / target_ratio``; then, with ``fill``, single levels raised by one
    where the budget that choice leaves unused allows (``fill_levels``).

    Where the legs are automatic (augttn, mera: no ``leg_dim`` option, no ``factors``) and bond
    dimension 1 is over the budget, smaller legs are tried first (``_reachable``): the returned
    spec then carries the ``leg_dim`` chosen. Raises ``TNConfigError`` when even bond dimension 1
    has too many parameters (the budget is unreachable for this structure, e.g. lowrank below
    ``O + I + 1``).
    """
    if target_ratio <= 0:
        raise TNConfigError(f"target_ratio must be positive, got {target_ratio}")
    spec, probe = _reachable(spec, weight_shape, target_ratio, memory_budget)
    allowed = probe.dense_params / target_ratio

    def fits(chi: int) -> bool:
        gen = _build(
            dataclasses.replace(spec, bond_dim=tapered(probe, chi)), weight_shape, memory_budget
        )
        return gen is not None and gen.num_params <= allowed

    lo, hi = 1, 2  # fits(1): the probe is within the budget and the memory budget
    while hi <= max_bond and fits(hi):
        lo, hi = hi, hi * 2
    hi = min(hi, max_bond + 1)
    while hi - lo > 1:  # fits(lo) and not fits(hi)
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    uniform = dataclasses.replace(spec, bond_dim=tapered(probe, lo))
    if not fill:
        return uniform
    return fill_levels(uniform, weight_shape, allowed, memory_budget, max_bond=max_bond)


def fill_levels(
    spec: StructureSpec,
    weight_shape: Sequence[int],
    allowed: float,
    memory_budget: int | None,
    *,
    max_bond: int = 1024,
) -> StructureSpec:
    """Raise one level's bond at a time by one, round-robin in the structure's
    ``fill_order`` (trees: the root's bonds first; tt: the middle of the chain first), keeping
    each raise that adds parameters and stays within ``allowed`` and the memory budget, until a
    whole round keeps none; no bond goes above ``max_bond`` or, in mera, above its level's cap
    (a larger one only grows the state). At 77,000x on AlexNet's FC7 the uniform choice leaves
    tt at bond 1 (81 parameters of 218 allowed); filled, bonds of 2 go where they fit."""
    gen = TNGenerator(spec, weight_shape, device="meta", memory_budget=memory_budget)
    n = gen.structure.levels(gen.tz, spec)
    start = list(gen.structure.bond_dims(spec, n))
    caps = gen.network.info.get("caps") or [max_bond] * n
    chis, count = list(start), gen.num_params
    raised = True
    while raised:
        raised = False
        for level in gen.structure.fill_order(n):
            if chis[level] >= min(caps[level], max_bond):
                continue
            trial = [c + (k == level) for k, c in enumerate(chis)]
            bigger = _build(dataclasses.replace(spec, bond_dim=trial), weight_shape, memory_budget)
            if bigger is not None and count < bigger.num_params <= allowed:
                chis, count, raised = trial, bigger.num_params, True
    if chis == start:
        return spec  # nothing raised: the spec as it was given
    return dataclasses.replace(spec, bond_dim=chis)
