"""The structure registry and the builder structures use to emit their network."""

from __future__ import annotations

import math
import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

from ..activations import get_activation
from ..errors import TNConfigError
from ..factorize import Tensorization, tensorize
from ..program import CoreSpec, Network, Operand, Step
from ..spec import StructureSpec, per_level

__all__ = ["STRUCTURES", "Builder", "Structure", "get_structure", "register_structure"]

STRUCTURES: dict[str, type[Structure]] = {}


def register_structure(name: str):
    """Class decorator: register a structure under ``name`` (a duplicate is an error)."""

    def deco(cls: type[Structure]) -> type[Structure]:
        if name in STRUCTURES:
            raise ValueError(f"structure {name!r} is already registered")
        cls.name = name
        STRUCTURES[name] = cls
        return cls

    return deco


def get_structure(name: str) -> Structure:
    """An instance of the structure called ``name``; an unknown name lists the known ones."""
    try:
        return STRUCTURES[name]()
    except KeyError:
        known = ", ".join(sorted(STRUCTURES))
        raise TNConfigError(f"unknown structure {name!r}; known: {known}") from None


class Builder:
    """Collects index sizes, cores and steps while a structure lays out its network.

    Physical leg ``k`` has the indices ``o{k}`` (size ``o_k``) and ``i{k}`` (size ``i_k``); sizes of
    1 are dropped. ``suffix`` gives a renamed copy of a leg (the same leg before a disentangler).
    """

    def __init__(self, tz: Tensorization) -> None:
        self.tz = tz
        self.sizes: dict[str, int] = {}
        self.cores: list[CoreSpec] = []
        self.steps: list[Step] = []
        self._count: dict[str, int] = {}
        self.used: dict[int, int] = {}  # level -> largest bond dimension actually used
        self.rank: dict[str, float] = {}  # canonical order: physical legs, then bonds as made
        self.w_out = tuple(n for k in range(tz.n_legs) for n in self.leg(k, part="o"))
        self.w_in = tuple(n for k in range(tz.n_legs) for n in self.leg(k, part="i"))

    def leg(self, k: int, suffix: str = "", part: str = "oi") -> tuple[str, ...]:
        o, i = self.tz.legs[k]
        names = []
        for p, size in (("o", o), ("i", i)):
            if p in part and (size > 1 or (o == 1 and i == 1 and p == "o")):
                rank = None if suffix else 2 * k + (p == "i")  # a copy sorts where its leg does
                names.append(self.index(f"{p}{k}{suffix}", size, rank))
        return tuple(names)

    def order_legs(self, blocks: Sequence[Sequence[int]]) -> None:
        """Lay the physical legs out block by block, each block's output factors before its input
        factors (``o0 o1 i0 i1 | o2 o3 i2 i3``), in place of leg by leg (``o0 i0 o1 i1 ...``).

        Intermediates follow this order (executor.py), so the weight's final copy into
        ``(o..., i...)`` moves a few large blocks instead of every small leg: a tree whose halves
        are the blocks forms its weight already as ``[O_L, I_L, O_R, I_R]``, and that copy has
        4 axes, not 2 per leg. Call before any renamed copy of a leg is declared.
        """
        legs = [k for block in blocks for k in block]
        if sorted(legs) != list(range(self.tz.n_legs)):
            raise AssertionError(f"blocks {blocks} do not cover legs 0..{self.tz.n_legs - 1} once")
        position = 0
        for block in blocks:
            for part in ("o", "i"):
                for k in block:
                    for name in self.leg(k, part=part):
                        self.rank[name] = position
                        position += 1

    def index(self, name: str, size: int, rank: float | None = None) -> str:
        """Declare an index; a renamed copy (``name~``, ``name^2``) sorts where its base does."""
        if self.sizes.setdefault(name, size) != size:
            raise AssertionError(f"index {name} redefined with size {size}")
        if name not in self.rank:
            base = re.split(r"[~^]", name)[0]
            default = self.rank.get(base, 1e9 + len(self.rank))
            self.rank[name] = default if rank is None else rank
        return name

    def bond(self, size: int, tag: str = "b", level: int | None = None) -> str:
        if level is not None:
            self.used[level] = max(self.used.get(level, 0), size)
        n = self._count.get(tag, 0)
        self._count[tag] = n + 1
        return self.index(f"{tag}{n}", size)

    def dims(self, indices: Sequence[str]) -> int:
        return math.prod(self.sizes[i] for i in indices)

    def core(
        self, name: str, indices: Sequence[str], init: str = "normal", n_out: int = 0
    ) -> Operand:
        self.cores.append(CoreSpec(name, tuple(indices), init, n_out))
        return Operand(name, tuple(indices))

    def step(
        self,
        out: str,
        operands: Sequence[Operand],
        out_indices: Sequence[str],
        activation: str = "identity",
        label: str = "",
        sequential: bool = False,
    ) -> Operand:
        step = Step(out, tuple(operands), tuple(out_indices), activation, label, sequential)
        self.steps.append(step)
        return Operand(out, tuple(out_indices))

    def network(self, **info: Any) -> Network:
        """The network laid out so far. It is eligible for the contract schedule exactly when its
        final step is linear (then ``x`` can join that step); no structure decides otherwise."""
        info.setdefault("bond_dim", [self.used[k] for k in sorted(self.used)])
        contractible = get_activation(self.steps[-1].activation).linear
        return Network(
            self.sizes, self.cores, self.steps, self.w_out, self.w_in, contractible, info, self.rank
        )


class Structure(ABC):
    """A family of generators. Subclasses lay out cores and steps with a ``Builder``."""

    name: ClassVar[str] = ""
    nonlinear: ClassVar[bool] = True
    options: ClassVar[dict[str, Any]] = {}
    option_types: ClassVar[dict[str, type]] = {}  # for options whose default is None

    def max_leg_dim(self, spec: StructureSpec) -> int | None:
        """Largest physical leg the automatic factorisation may make (None: balanced legs)."""
        return None

    def tensorize(self, weight_shape: Sequence[int], spec: StructureSpec) -> Tensorization:
        return tensorize(
            weight_shape,
            max_leg_dim=self.max_leg_dim(spec),
            n_legs=spec.n_legs,
            factors=spec.factors,
            in_map=spec.in_map,
        )

    def option(self, spec: StructureSpec, key: str) -> Any:
        return spec.options.get(key, self.options[key])

    def _check_option_types(self, spec: StructureSpec) -> None:
        """Each option has its default's type (a whole number where the default is one)."""
        for key, value in spec.options.items():
            default = self.options[key]
            kind = self.option_types.get(key, None if default is None else type(default))
            if value is None or kind is None:
                continue
            if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
                what = {int: "a whole number", str: "a name"}.get(kind, kind.__name__)
                raise TNConfigError(f"{self.name} option {key} must be {what}, got {value!r}")

    def check(self, spec: StructureSpec) -> None:
        """Reject options and activations this structure does not have."""
        unknown = sorted(set(spec.options) - set(self.options))
        if unknown:
            valid = ", ".join(sorted(self.options)) or "none"
            raise TNConfigError(f"{self.name} has no option {unknown[0]!r}; valid: {valid}")
        acts = spec.activation if isinstance(spec.activation, (list, tuple)) else [spec.activation]
        for a in [*acts, spec.output_activation]:
            if a is not None:
                get_activation(a)
        self._check_option_types(spec)
        for key, value in spec.options.items():  # e.g. mixing_activation, even where unused
            if key.endswith("activation") and value is not None:
                if not isinstance(value, str):
                    raise TNConfigError(f"option {key} must be an activation name, got {value!r}")
                get_activation(value)
        if not self.nonlinear:
            nonlin = [a for a in [*acts, spec.output_activation] if a not in (None, "identity")]
            if nonlin:
                raise TNConfigError(
                    f"{self.name} is a multilinear baseline without activations (got "
                    f"{nonlin[0]!r}); drop the activation or use ttn, augttn or mera"
                )

    def activations(self, spec: StructureSpec, n: int) -> list[str]:
        default = "tanh" if self.nonlinear else "identity"
        return per_level(spec.activation or default, n, "activation", self.name)

    def bond_dims(self, spec: StructureSpec, n: int) -> list[int]:
        dims = per_level(spec.bond_dim, n, "bond_dim", self.name)
        for d in dims:
            if not isinstance(d, int) or isinstance(d, bool) or d < 1:
                raise TNConfigError(f"bond_dim entries must be positive integers, got {d!r}")
        return dims

    @abstractmethod
    def levels(self, tz: Tensorization, spec: StructureSpec) -> int:
        """How many entries a per-level ``bond_dim`` list has for this weight."""

    def fill_order(self, n: int) -> list[int]:
        """The order in which ``target_ratio``'s budget fill raises the ``n`` levels' bonds:
        coarse to fine (a tree's root bonds carry everything below them)."""
        return list(range(n))

    @abstractmethod
    def build(self, tz: Tensorization, spec: StructureSpec) -> Network:
        """Lay out the cores and steps that generate the weight tensorised as ``tz``."""
