"""Tensorisation: reshape a layer's weight into a few small physical legs.

A weight is seen as a matrix ``W[o, i]`` with ``O`` rows and ``I = prod(in_sizes)`` columns:
Linear ``(O, I)``, Conv2d ``(O, C/groups, kh, kw)`` with ``in_sizes = (C/groups, kh*kw)``, attention
projections ``(3E, E)`` and ``(E, E)``. ``O = o_1...o_n`` and ``I = i_1...i_n`` are factored and leg
``k`` pairs ``(o_k, i_k)`` (dimension ``d_k = o_k*i_k``, the TT-matrix / MPO convention)::

    W[o, i]  ->  T[(o_1 i_1), (o_2 i_2), ..., (o_n i_n)]

A size whose prime factors are too large is padded up to the next smooth number; the generator makes
the padded weight and the extra rows and columns are sliced off. The conv kernel ``kh*kw`` is one
more factor (never padded).

A Linear that reads a flattened ``C x H x W`` feature map (AlexNet's and VGG's FC6) may be given
that map (``in_map``): its input index is then ``c*H*W + h*W + w``, and the legs keep that
structure. The channel factors go to the first legs; ``H`` and ``W`` are the input factors of the
last two legs, the least significant digits, as a conv's kernel is::

    W[o, (c, h, w)]  ->  T[(o_1 c_1), ..., (o_m c_m), (o_h h), (o_w w)]

Without it the input size is factored as one number, and on FC6 (9216 = 256 * 6 * 6) the leading
digits mix channel groups with rows of the map.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from .errors import TNConfigError

__all__ = ["Tensorization", "next_smooth", "prime_factors", "tensorize"]

DEFAULT_TARGET_LEG_DIM = 10
DEFAULT_MAX_PRIME = 7


def prime_factors(n: int) -> list[int]:
    """Prime factors of ``n`` in ascending order (``[]`` for 1)."""
    out, p = [], 2
    while p * p <= n:
        while n % p == 0:
            out.append(p)
            n //= p
        p += 1
    if n > 1:
        out.append(n)
    return out


def next_smooth(n: int, max_prime: int) -> int:
    """The smallest ``m >= n`` whose prime factors are all ``<= max_prime``."""
    m = n
    while max(prime_factors(m), default=1) > max_prime:
        m += 1
    return m


@dataclass(frozen=True)
class Tensorization:
    """How a weight of ``weight_shape`` maps onto physical legs ``legs[k] = (o_k, i_k)``."""

    weight_shape: tuple[int, ...]
    in_sizes: tuple[int, ...]
    out_padded: int
    in_padded: tuple[int, ...]
    legs: tuple[tuple[int, int], ...]

    @property
    def out_size(self) -> int:
        return self.weight_shape[0]

    @property
    def in_size(self) -> int:
        return math.prod(self.in_sizes)

    @property
    def in_padded_size(self) -> int:
        return math.prod(self.in_padded)

    @property
    def n_legs(self) -> int:
        return len(self.legs)

    @property
    def leg_dims(self) -> tuple[int, ...]:
        return tuple(o * i for o, i in self.legs)

    @property
    def dense_params(self) -> int:
        """Entries of the real weight."""
        return math.prod(self.weight_shape)

    @property
    def padded_params(self) -> int:
        """Entries of the generated (padded) weight: ``|W|`` in the cost model."""
        return self.out_padded * self.in_padded_size

    @property
    def is_padded(self) -> bool:
        return self.padded_params != self.dense_params

    def describe(self) -> str:
        """Legs as ``o x i`` pairs, e.g. ``4x7 4x7 8x8``."""
        return " ".join(f"{o}x{i}" for o, i in self.legs)


def _distribute(items: Sequence[tuple[int, str]], n: int) -> list[list[int]]:
    """Balanced split of ``items`` (size, 'o'|'i'|'k') into ``n`` legs [o, i, holds_kernel].

    Output factors are balanced among themselves first, then input factors (the kernel ``k`` among
    them) go to the leg with the smallest total dimension: every leg gets a share of both sides
    where the primes allow it.
    """
    legs = [[1, 1, 0] for _ in range(n)]
    for size in sorted((s for s, t in items if t == "o"), reverse=True):
        min(legs, key=lambda leg: leg[0])[0] *= size
    for size, side in sorted(((s, t) for s, t in items if t != "o"), reverse=True):
        leg = min(legs, key=lambda leg: leg[0] * leg[1])
        leg[1] *= size
        leg[2] |= side == "k"
    return legs


def _pack(items: Sequence[tuple[int, str]], capacity: int) -> list[list[int]]:
    """First-fit decreasing of prime ``items`` into legs of dimension ``<= capacity``.

    Ties alternate output and input items, so small legs pair an ``o`` with an ``i`` where possible.
    """
    by_side = {t: sorted((s for s, tt in items if tt == t), reverse=True) for t in ("o", "i")}
    ordered: list[tuple[int, str]] = []
    while by_side["o"] or by_side["i"]:
        cands = [(by_side[t][0], t) for t in ("o", "i") if by_side[t]]
        size, side = max(cands, key=lambda c: (c[0], c[1] == ("o" if len(ordered) % 2 else "i")))
        by_side[side].pop(0)
        ordered.append((size, side))
    legs: list[list[int]] = []
    for size, side in ordered:
        slot = 0 if side == "o" else 1
        for leg in legs:
            if leg[0] * leg[1] * size <= capacity:
                leg[slot] *= size
                break
        else:
            leg = [1, 1]
            leg[slot] = size
            legs.append(leg)
    return legs


def _max_prime(max_leg_dim: int | None) -> int:
    """The largest prime a leg may hold: ``DEFAULT_MAX_PRIME``, or the largest prime
    ``<= max_leg_dim`` for packed legs."""
    if max_leg_dim is None:
        return DEFAULT_MAX_PRIME
    return max(p for p in range(2, max_leg_dim + 1) if prime_factors(p) == [p])


def _leg_count(total: int, n_legs: int | None, target: int) -> int:
    """``n_legs``, else the count that makes legs of dimension near ``target`` over ``total``
    entries (before clamping to the items there are)."""
    return n_legs or round(math.log(max(total, 2)) / math.log(target))


def _one_sided(legs: Sequence[Sequence[int]]) -> bool:
    """Whether most packed legs carry only output or only input factors (``_interleave``)."""
    return 2 * sum(1 for leg in legs if leg[0] == 1 or leg[1] == 1) > len(legs)


def _interleave(legs: list[list[int]]) -> list[list[int]]:
    """Alternate output-heavy and input-heavy legs (balanced ones after).

    Small packed legs (``leg_dim`` 4) often carry only output or only input factors; when most of
    them do, the legs are alternated instead of sorted. Alternating them makes the
    first pairing of a tree or MERA join an output leg with an input leg, as a TT-matrix leg
    ``(o_k, i_k)`` would, instead of splitting the weight into an output half and an input half
    (which would bound its matrix rank by the top bond).
    """
    outs = [leg for leg in legs if leg[0] > leg[1]]
    ins = [leg for leg in legs if leg[0] < leg[1]]
    even = [leg for leg in legs if leg[0] == leg[1]]
    order: list[list[int]] = []
    while outs or ins:
        order += [outs.pop(0)] if outs else []
        order += [ins.pop(0)] if ins else []
    return order + even


def _check_explicit(name: str, factors: Sequence[int]) -> None:
    if not factors or any((not isinstance(f, int)) or f < 1 for f in factors):
        raise TNConfigError(f"{name} factors must be a non-empty list of positive integers")


def _sizes(weight_shape: Sequence[int]) -> tuple[tuple[int, ...], int, tuple[int, ...], int]:
    """``(shape, O, input sizes, kernel)``: (C,) and 1 for a Linear, (C, kh kw) and kh kw for a
    conv."""
    shape = tuple(int(s) for s in weight_shape)
    if len(shape) == 2:
        out_size, in_sizes, kernel = shape[0], (shape[1],), 1
    elif len(shape) == 4:
        out_size, kernel = shape[0], shape[2] * shape[3]
        in_sizes = (shape[1], kernel)
    else:
        raise TNConfigError(
            f"cannot tensorise a weight of shape {shape}: expected (O, I) or (O, C, kh, kw)"
        )
    if min(shape) < 1:
        raise TNConfigError(f"cannot tensorise an empty weight of shape {shape}")
    return shape, out_size, in_sizes, kernel


def _explicit(
    shape: tuple[int, ...],
    out_size: int,
    in_sizes: tuple[int, ...],
    kernel: int,
    factors: tuple[Sequence[int], Sequence[int]],
) -> Tensorization:
    """The tensorisation of explicit ``factors=(out, in)`` (checked; 1s pad the shorter)."""
    channels = in_sizes[0]
    out_f, in_f = list(factors[0]), list(factors[1])
    _check_explicit("output", out_f)
    _check_explicit("input", in_f)
    out_pad, in_flat = math.prod(out_f), math.prod(in_f)
    if out_pad < out_size:
        raise TNConfigError(f"output factors {out_f} multiply to {out_pad} < {out_size} rows")
    if in_flat % kernel or in_flat // kernel < channels:
        need = f"a multiple of the kernel {kernel} and at least {channels * kernel}"
        raise TNConfigError(f"input factors {in_f} multiply to {in_flat}; need {need}")
    n = max(len(out_f), len(in_f))
    out_f += [1] * (n - len(out_f))
    in_f += [1] * (n - len(in_f))
    in_padded = (in_flat // kernel, kernel) if kernel > 1 or len(shape) == 4 else (in_flat,)
    legs = tuple(zip(out_f, in_f, strict=True))
    return Tensorization(shape, in_sizes, out_pad, in_padded[: len(in_sizes)], legs)


def _map_legs(
    out_size: int, in_map: Sequence[int], n_legs: int | None, target: int
) -> list[list[int]]:
    """Legs ``[o, i]`` for a Linear reading a flattened ``(C, H, W)`` map: channel factors on the
    first legs, ``H`` then ``W`` the input factors of the last two (a side of 1 has no leg),
    output factors balanced over all of them (each to the leg of smallest dimension)."""
    channels, *sides = (int(s) for s in in_map)
    spatial = [s for s in sides if s > 1]
    items_o = prime_factors(out_size)
    items_c = prime_factors(channels)
    total = out_size * channels * math.prod(spatial)
    n = max(
        len(spatial) + 1,
        min(_leg_count(total, n_legs, target), len(spatial) + len(items_o) + len(items_c)),
    )
    m = n - len(spatial)  # channel legs
    legs = [[1, 1] for _ in range(m)] + [[1, s] for s in spatial]
    for size in sorted(items_c, reverse=True):
        min(legs[:m], key=lambda leg: leg[0] * leg[1])[1] *= size
    for size in sorted(items_o, reverse=True):
        min(legs, key=lambda leg: leg[0] * leg[1])[0] *= size
    head = sorted(legs[:m], key=lambda leg: leg[0] / leg[1])  # input-heavy first, as below
    return head + legs[m:]


def _packed_map_legs(out_size: int, in_map: Sequence[int], capacity: int) -> list[list[int]]:
    """Legs of dimension ``<= capacity`` for a Linear reading a flattened ``(C, H, W)`` map
    (augttn, mera): the prime factors of ``H``, then of ``W``, are the input factors of the last
    legs, each joined by the output factors that fit beside it; the rest is packed as usual."""
    channels, *sides = (int(s) for s in in_map)
    spatial = [[1, p] for side in sides for p in sorted(prime_factors(side), reverse=True)]
    outs = sorted(prime_factors(out_size))
    for leg in spatial:
        while outs and leg[0] * leg[1] * outs[0] <= capacity:
            leg[0] *= outs.pop(0)
    items = [(p, "o") for p in outs] + [(p, "i") for p in prime_factors(channels)]
    head = _pack(items, capacity) if items else []
    if _one_sided(head):
        head = _interleave(head)
    else:
        head.sort(key=lambda leg: leg[0] / leg[1])
    return head + spatial


def _map_applies(shape: tuple[int, ...], in_map: Sequence[int], max_leg_dim: int | None) -> bool:
    """Whether the map's legs are used: a Linear whose input is the map, and no size to pad (the
    generated weight is then the flat one, no rows or columns to slice); with packed legs, every
    prime factor of the map's sides fits a leg."""
    if len(shape) != 2 or len(in_map) != 3:
        return False
    if math.prod(in_map) != shape[1] or math.prod(in_map[1:]) == 1:
        return False
    if max_leg_dim is not None and max(prime_factors(in_map[1] * in_map[2])) > max_leg_dim:
        return False
    return all(next_smooth(n, _max_prime(max_leg_dim)) == n for n in (shape[0], in_map[0]))


def tensorize(
    weight_shape: Sequence[int],
    *,
    max_leg_dim: int | None = None,
    target_leg_dim: int = DEFAULT_TARGET_LEG_DIM,
    n_legs: int | None = None,
    factors: tuple[Sequence[int], Sequence[int]] | None = None,
    in_map: Sequence[int] | None = None,
) -> Tensorization:
    """Choose physical legs for a weight of ``weight_shape`` ((O, I) or (O, C, kh, kw)).

    Automatic (default): sizes are padded to 7-smooth numbers (3-smooth under ``max_leg_dim=4``),
    then ``n_legs`` legs of balanced dimension near ``target_leg_dim`` are made; with
    ``max_leg_dim`` every leg is packed to at most that dimension instead (structures whose
    disentanglers touch the physical legs need small legs). Explicit: ``factors=(out, in)``, with
    ``prod(out) >= O`` and, for a conv, ``in`` factoring ``C_pad * kh * kw``;
    1s pad the shorter list. ``in_map=(C, H, W)`` (a Linear reading a flattened map, ``C H W =
    I``): the legs keep the map's structure (see the module docstring) where no size needs padding
    (packed legs: the sides' prime factors, each a leg); otherwise it is ignored.
    """
    shape, out_size, in_sizes, kernel = _sizes(weight_shape)
    channels = in_sizes[0]
    if factors is not None:
        return _explicit(shape, out_size, in_sizes, kernel, factors)
    if max_leg_dim is not None and max_leg_dim < 2:
        raise TNConfigError(f"max_leg_dim must be at least 2, got {max_leg_dim}")
    if in_map is not None and _map_applies(shape, in_map, max_leg_dim):
        if max_leg_dim is None:
            legs = _map_legs(out_size, in_map, n_legs, target_leg_dim)
        else:
            legs = _packed_map_legs(out_size, in_map, max_leg_dim)
        return Tensorization(shape, in_sizes, out_size, in_sizes, tuple(map(tuple, legs)))

    max_prime = _max_prime(max_leg_dim)
    out_pad = next_smooth(out_size, max_prime)
    chan_pad = next_smooth(channels, max_prime)
    items = [(p, "o") for p in prime_factors(out_pad)] + [(p, "i") for p in prime_factors(chan_pad)]
    if kernel > 1:
        if max_leg_dim is not None:
            big = [p for p in prime_factors(kernel) if p > max_leg_dim]
            if big:
                raise TNConfigError(
                    f"the {shape[2]}x{shape[3]} kernel needs a leg of dimension {max(big)}, over "
                    f"the limit {max_leg_dim} of this structure; use ttn, tt or lowrank here"
                )
            items += [(p, "i") for p in prime_factors(kernel)]
        else:
            items.append((kernel, "k"))
    if not items:  # a 1x1 weight
        items = [(1, "o")]

    if max_leg_dim is not None:
        legs = [[*leg, 0] for leg in _pack(items, max_leg_dim)]
        if _one_sided(legs):
            legs = _interleave(legs)
            in_padded = (chan_pad, kernel) if len(shape) == 4 else (chan_pad,)
            pairs = tuple((o, i) for o, i, _ in legs)
            return Tensorization(shape, in_sizes, out_pad, in_padded, pairs)
    else:
        total = out_pad * chan_pad * kernel
        n = _leg_count(total, n_legs, target_leg_dim)
        n = max(2, min(n, len(items))) if len(items) >= 2 else 1
        legs = _distribute(items, n)
    # Input-heavy legs first: the left half of a tree then holds most of I and the right half most
    # of O, which keeps the contract schedule's intermediates small. The leg holding a conv kernel
    # goes last, so the kernel is the least significant input digit and that leg indexes it.
    legs.sort(key=lambda leg: (leg[2], leg[0] / leg[1]))
    in_padded = (chan_pad, kernel) if len(shape) == 4 else (chan_pad,)
    return Tensorization(shape, in_sizes, out_pad, in_padded, tuple((o, i) for o, i, _ in legs))
