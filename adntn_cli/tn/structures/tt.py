"""Tensor train / MPO (TT-matrix) baseline: a chain of cores, multilinear, no activations.

    W[o_1 i_1, ..., o_n i_n] = G_1[p_1, a_1] G_2[a_1, p_2, a_2] ... G_n[a_{n-1}, p_n]

           p_1      p_2            p_n
            |        |              |
           G_1 -a1- G_2 -a2- ... - G_n

``bond_dim`` is one value or one per bond (``n - 1`` of them, left to right); each bond is clamped
to the smaller of the physical dimensions on its two sides.
Parameters (uniform ``chi``, no clamping): ``d_1 chi + sum_{k=2}^{n-1} d_k chi^2 + d_n chi + 1``.
"""

from __future__ import annotations

import math

from ..errors import TNConfigError
from ..factorize import Tensorization
from ..program import Network
from ..spec import StructureSpec
from .base import Builder, Structure, register_structure

__all__ = ["TT"]


@register_structure("tt")
class TT(Structure):
    nonlinear = False

    def levels(self, tz: Tensorization, spec: StructureSpec) -> int:
        if tz.n_legs < 2:
            raise TNConfigError(f"tt needs at least 2 physical legs; {tz.weight_shape} gives 1")
        return tz.n_legs - 1

    def fill_order(self, n: int) -> list[int]:
        """The middle bonds first: a chain's rank is limited most in its middle."""
        return sorted(range(n), key=lambda k: (abs(2 * k - (n - 1)), k))

    def build(self, tz: Tensorization, spec: StructureSpec) -> Network:
        b = Builder(tz)
        n = tz.n_legs
        chis = self.bond_dims(spec, self.levels(tz, spec))
        dims = tz.leg_dims
        bonds = [
            b.bond(min(chi, math.prod(dims[: k + 1]), math.prod(dims[k + 1 :])), level=k)
            for k, chi in enumerate(chis)
        ]
        ops = []
        for k in range(n):
            left = (bonds[k - 1],) if k > 0 else ()
            right = (bonds[k],) if k < n - 1 else ()
            ops.append(b.core(f"core{k}", (*left, *b.leg(k), *right)))
        b.step("w", ops, b.w_out + b.w_in, "identity", "chain")
        return b.network()
