"""Tree tensor network (TTN), contracted leaves-to-root.

Leaf cores ``A_k[p_k, a]`` (``d_k x chi``) hang off the physical legs; each internal node ``v``
joins its two children through a core ``G_v[a1, a2, b]`` and applies the activation of its level::

    H_v[p_v, b] = sigma( sum_{a1,a2} H_c1[p_c1, a1] H_c2[p_c2, a2] G_v[a1, a2, b] )

The root core ``R[a, b]`` joins the last two subtrees, linearly by default, into the weight::

                       R                    level 1 bonds: bond_dim[0]
                   a /   \\ b
                   G_L     G_R              level 2 bonds: bond_dim[1] ... (coarse to fine)
                  /  \\    /  \\
                A_0  A_1 A_2  A_3           leaf bonds: bond_dim[-1]
                 |    |   |    |
               o0i0 o1i1 o2i2 o3i3          physical legs (paired output/input factors)

Adjacent nodes are paired level by level; with an odd count the last node is carried up a level
unchanged. A node's bond never exceeds the product of the physical dimensions below it (a larger
one adds parameters and no expressiveness, activations or not), so bonds are clamped to it.

Lateral mixing (``mixing: siblings``): before ``G_v``, a square core ``M_v[a1', a2', a1, a2]``
mixes the two sibling bonds, followed by its own activation (without one it would be absorbed into
``G_v``). Mixing non-sibling bonds would join subtrees into intermediates of about ``|W| * chi``
entries and is refused.

Parameters (``N`` legs, uniform ``chi``, no clamping): ``sum_k d_k chi + (N-2) chi^3 + chi^2 + 1``
(the 1 is the output scale), plus ``(N-2) chi^4`` with mixing.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from ..errors import TNConfigError
from ..factorize import Tensorization
from ..program import Network, Operand
from ..spec import StructureSpec
from .base import Builder, Structure, register_structure

__all__ = ["TTN", "Subtree", "build_tree", "tree_levels"]


@dataclass(frozen=True)
class Subtree:
    op: Operand  # indices: phys + (bond,)
    phys: tuple[str, ...]
    bond: str
    height: int
    below: int  # product of the physical dimensions under this subtree


def _pair_up(values: list[int], join: Callable[[int, int], int]) -> list[int]:
    """Pair adjacent nodes level by level as ``build_tree`` does (an odd last node is carried up
    unchanged) until two are left, folding each pair's values with ``join``."""
    while len(values) > 2:
        paired = [join(values[j], values[j + 1]) for j in range(0, len(values) - 1, 2)]
        values = paired + values[len(paired) * 2 :]
    return values


def tree_levels(n_legs: int) -> int:
    """Bond levels of the tree over ``n_legs`` leaves (the height of the root's children + 1)."""
    return max(_pair_up([0] * n_legs, lambda a, b: max(a, b) + 1)) + 1


def root_split(n_legs: int) -> int:
    """How many of ``n_legs`` leaves ``build_tree`` puts under the root's left subtree."""
    return _pair_up([1] * n_legs, operator.add)[0]


def build_tree(
    b: Builder,
    leaves: Sequence[tuple[str, ...]],
    levels: int,
    chi_at: Callable[[int], int],
    act_at: Callable[[int], str],
    mix_act_at: Callable[[int], str] | None = None,
) -> tuple[Subtree, Subtree]:
    """Emit leaf cores and internal-node steps; return the root's two subtrees.

    ``chi_at(h)`` and ``act_at(h)`` give the bond dimension and activation of nodes at height ``h``
    (leaves are height 0); ``mix_act_at`` enables sibling mixing with that activation.
    """
    subs = []
    for k, phys in enumerate(leaves):
        d = b.dims(phys)
        bond = b.bond(min(chi_at(0), d), level=levels - 1)
        subs.append(Subtree(b.core(f"leaf{k}", (*phys, bond)), phys, bond, 0, d))
    node = 0
    while len(subs) > 2:
        nxt = []
        for s1, s2 in zip(subs[0::2], subs[1::2], strict=False):
            h, below, phys = max(s1.height, s2.height) + 1, s1.below * s2.below, s1.phys + s2.phys
            ins, pre = [s1.op, s2.op], (s1.bond, s2.bond)
            if mix_act_at is not None:
                m1 = b.bond(b.sizes[s1.bond], "m")
                m2 = b.bond(b.sizes[s2.bond], "m")
                mix = b.core(f"mix{node}", (m1, m2, *pre), init="identity", n_out=2)
                x = b.step(f"x{node}", [*ins, mix], (*phys, m1, m2), mix_act_at(h), f"mix h{h}")
                ins, pre = [x], (m1, m2)
            bond = b.bond(min(chi_at(h), below), level=levels - 1 - h)
            core = b.core(f"node{node}", (*pre, bond))
            out = b.step(f"h{node}", [*ins, core], (*phys, bond), act_at(h), f"node h{h}")
            nxt.append(Subtree(out, phys, bond, h, below))
            node += 1
        if len(subs) % 2:
            nxt.append(subs[-1])
        subs = nxt
    return subs[0], subs[1]


class TreeMixin:
    """Per-level bond dimensions and activations of a tree, shared by ttn and augttn."""

    def levels(self, tz: Tensorization, spec: StructureSpec) -> int:
        if tz.n_legs < 2:
            raise TNConfigError(
                f"{self.name} needs at least 2 physical legs; weight {tz.weight_shape} gives "
                f"{tz.n_legs}: use lowrank or explicit factors"
            )
        return tree_levels(tz.n_legs)

    def tree(self, b: Builder, spec: StructureSpec, leaves: Sequence[tuple[str, ...]]):
        n = self.levels(b.tz, spec)
        chis = self.bond_dims(spec, n)
        acts = self.activations(spec, n - 1) if n > 1 else []
        mixing = self.option(spec, "mixing")
        if mixing not in ("none", "siblings"):
            raise TNConfigError(
                f"mixing {mixing!r} is not offered: mixing non-sibling bonds joins subtrees into "
                "intermediates of about |W| * chi entries; valid: none, siblings"
            )
        mix_act = self.option(spec, "mixing_activation")
        mix_at = None
        if mixing == "siblings":
            mix_at = (lambda h: mix_act) if mix_act else (lambda h: acts[n - 1 - h])
        return build_tree(
            b, leaves, n, lambda h: chis[n - 1 - h], lambda h: acts[n - 1 - h], mix_at
        )


@register_structure("ttn")
class TTN(TreeMixin, Structure):
    options: ClassVar[dict[str, Any]] = {"mixing": "none", "mixing_activation": None}

    def build(self, tz: Tensorization, spec: StructureSpec) -> Network:
        b = Builder(tz)
        split = root_split(tz.n_legs)
        b.order_legs([range(split), range(split, tz.n_legs)])  # W forms as [O_L, I_L, O_R, I_R]
        left, right = self.tree(b, spec, [b.leg(k) for k in range(tz.n_legs)])
        root = b.core("root", (left.bond, right.bond))
        b.step("w", [left.op, right.op, root], b.w_out + b.w_in, spec.output_activation, "root")
        return b.network()
