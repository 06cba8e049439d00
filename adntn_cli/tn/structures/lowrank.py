"""Low-rank baseline: ``W = U V`` with ``U`` (O x r) and ``V`` (r x I); no tensorisation.

    O --U-- r --V-- I

Parameters: ``r (O + I) + 1``. The smallest is ``O + I + 1`` (rank 1): a budget below that is
unreachable for this baseline.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from ..factorize import Tensorization, tensorize
from ..program import Network
from ..spec import StructureSpec
from .base import Builder, Structure, register_structure

__all__ = ["LowRank"]


@register_structure("lowrank")
class LowRank(Structure):
    nonlinear = False

    def tensorize(self, weight_shape: Sequence[int], spec: StructureSpec) -> Tensorization:
        shape = tuple(weight_shape)
        return tensorize(shape, factors=([shape[0]], [math.prod(shape[1:])]))

    def levels(self, tz: Tensorization, spec: StructureSpec) -> int:
        return 1

    def build(self, tz: Tensorization, spec: StructureSpec) -> Network:
        b = Builder(tz)
        (rank,) = self.bond_dims(spec, 1)
        o, i = tz.legs[0]
        r = b.bond(min(rank, o, i), "r", level=0)
        u = b.core("u", (*b.leg(0, part="o"), r))
        v = b.core("v", (r, *b.leg(0, part="i")))
        b.step("w", [u, v], b.w_out + b.w_in, "identity", "U V")
        return b.network()
