"""Augmented TTN (the paper's aTTN; registry name ``augttn``: ``attn`` would read as attention).

A TTN (see ttn.py) plus a layer of boundary disentanglers: square cores on the neighbouring
physical legs ``(k, k+1)`` for ``k = 1, 3, 5, ...``, which straddle the tree's first pairing
boundaries (the tree pairs ``(0,1), (2,3), ...``)::

           R
         /   \\                       the TTN, emitting legs p~ (before disentangling)
       G_L     G_R
      /  \\    /  \\
     A0   A1  A2   A3
     |    |   |    |
     |   [ U_0  ]  |                  U_0[p1, p2, p1~, p2~]: mixes legs 1 and 2 across the
     |    |   |    |                  boundary between the leaf pairs (0,1) and (2,3)
     p0   p1  p2   p3

Two forms (option ``disentangler``):

- ``full`` (default): ``U[(o_a i_a)(o_b i_b), (o_a i_a)(o_b i_b)]``, ``(d_a d_b)^2`` parameters.
  It mixes input with output legs; with a linear root the input still contracts through it (the
  path search finds an order that never forms ``W``), and the cost model picks the schedule. The
  automatic factorisation keeps its legs at ``d <= 4``. Cost: ``d_a d_b`` multiply-adds per entry
  of whatever tensor it meets; the path search applies the disentanglers inside a subtree to that
  subtree (small) and only the one straddling the root split to a tensor of ``|W|`` entries.
- ``separable``: ``U^o[o_a o_b, o_a~ o_b~]`` and ``U^i[i_a i_b, i_a~ i_b~]``, never mixing an input
  leg with an output leg: ``(o_a o_b)^2 + (i_a i_b)^2`` parameters. Because it maps inputs and
  outputs separately it can be applied to the activations (``x`` through ``U^i``, the tree, then
  ``U^o``); legs of ``d <= 16``.

Option ``leg_dim`` overrides the bound on the automatic legs (smaller legs, cheaper
disentanglers, higher reachable ratios).
``output_activation`` (default identity) may follow the disentanglers; a nonlinear one restricts
the layer to the materialise schedule.
Parameters: those of the TTN plus ``floor((N-1)/2)`` disentanglers.
"""

from __future__ import annotations

from typing import Any, ClassVar

from ..errors import TNConfigError
from ..factorize import Tensorization
from ..program import Network
from ..spec import StructureSpec
from .base import Builder, Structure, register_structure
from .ttn import TreeMixin

__all__ = ["AugTTN", "boundary_pairs"]

FORMS = ("full", "separable")


def boundary_pairs(n_legs: int) -> list[tuple[int, int]]:
    """Leg pairs straddling the first pairing boundaries: (1, 2), (3, 4), ..."""
    return [(k, k + 1) for k in range(1, n_legs - 1, 2)]


def lay_out_legs(b: Builder, form: str, pairs: list[tuple[int, int]]) -> None:
    """Lay the weight out in blocks (``Builder.order_legs``): each disentangler's pair of legs is
    a block, ``o_a o_b i_a i_b``, and every other leg one of its own.

    A disentangler then finds its four indices together, on a half of the tree or, for the one
    straddling the root's split, on the whole weight, and runs as a local operator; the
    weight's final copy into ``(o..., i...)`` moves 2 blocks per pair, not 2 axes per leg. A full
    disentangler's inputs (the pair's legs before it, ``o_a~ i_a~ o_b~ i_b~``) are ranked leg by
    leg in the block's places: the order in which the tree's leaves leave them.
    """
    starts = {a: (a, c) for a, c in pairs}
    blocks: list[tuple[int, ...]] = []
    k = 0
    while k < b.tz.n_legs:
        blocks.append(starts.get(k, (k,)))
        k += len(blocks[-1])
    b.order_legs(blocks)
    if form != "full":
        return
    for pair in pairs:
        copies = [name for k in pair for name in b.leg(k, "~")]  # o_a~ i_a~ o_b~ i_b~
        slots = sorted(b.rank[name.rstrip("~")] for name in copies)
        b.rank.update(zip(copies, slots, strict=True))


@register_structure("augttn")
class AugTTN(TreeMixin, Structure):
    options: ClassVar[dict[str, Any]] = {
        "mixing": "none",
        "mixing_activation": None,
        "disentangler": "full",
        "leg_dim": None,
    }
    option_types: ClassVar[dict[str, type]] = {"leg_dim": int}

    def form(self, spec: StructureSpec) -> str:
        form = self.option(spec, "disentangler")
        if form not in FORMS:
            raise TNConfigError(f"unknown disentangler form {form!r}; valid: {', '.join(FORMS)}")
        return form

    def max_leg_dim(self, spec: StructureSpec) -> int | None:
        default = 4 if self.form(spec) == "full" else 16
        leg_dim = self.option(spec, "leg_dim")
        return default if leg_dim is None else leg_dim

    def build(self, tz: Tensorization, spec: StructureSpec) -> Network:
        form = self.form(spec)
        b = Builder(tz)
        pairs = boundary_pairs(tz.n_legs)
        lay_out_legs(b, form, pairs)
        touched = {k for p in pairs for k in p}
        leaves = [b.leg(k, "~") if k in touched else b.leg(k) for k in range(tz.n_legs)]
        left, right = self.tree(b, spec, leaves)
        ops = [left.op, right.op, b.core("root", (left.bond, right.bond))]
        for j, (a, c) in enumerate(pairs):
            parts = ("oi",) if form == "full" else ("o", "i")
            for part in parts:
                out = b.leg(a, part=part) + b.leg(c, part=part)
                pre = b.leg(a, "~", part) + b.leg(c, "~", part)
                if out:
                    name = f"dis{j}" if form == "full" else f"dis{j}{part}"
                    ops.append(b.core(name, (*out, *pre), init="identity", n_out=len(out)))
        label = f"root + {len(pairs)} {form} disentanglers"
        b.step("w", ops, b.w_out + b.w_in, spec.output_activation, label)
        return b.network(form=form)
