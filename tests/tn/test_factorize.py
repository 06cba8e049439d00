import math

import pytest

from adntn_cli.tn import TNConfigError, tensorize
from adntn_cli.tn.factorize import next_smooth, prime_factors


@pytest.mark.parametrize(
    "shape", [(4096, 25088), (4096, 4096), (1000, 4096), (512, 512, 3, 3), (10, 64), (97, 13)]
)
def test_auto_legs_cover_the_padded_weight(shape):
    tz = tensorize(shape)
    assert math.prod(o for o, _ in tz.legs) == tz.out_padded >= shape[0]
    assert math.prod(i for _, i in tz.legs) == tz.in_padded_size >= math.prod(shape[1:])
    assert tz.padded_params < 1.15 * tz.dense_params


def test_balanced_legs_for_vgg_fc6():
    tz = tensorize((4096, 25088))
    assert tz.n_legs == 8
    assert max(tz.leg_dims) / min(tz.leg_dims) <= 2
    assert not tz.is_padded


@pytest.mark.parametrize("shape", [(512, 512, 3, 3), (64, 48, 5, 5), (16, 8, 3, 3)])
def test_conv_kernel_is_the_last_legs_least_significant_factor(shape):
    tz = tensorize(shape)
    kernel = shape[2] * shape[3]
    assert tz.legs[-1][1] % kernel == 0
    assert tz.in_padded == (shape[1], kernel)


def test_capacity_mode_keeps_legs_small_and_pads_large_primes():
    tz = tensorize((4096, 25088), max_leg_dim=4)
    assert max(tz.leg_dims) <= 4
    assert tz.in_padded == (next_smooth(25088, 3),)
    with pytest.raises(TNConfigError, match="5x5 kernel"):
        tensorize((16, 8, 5, 5), max_leg_dim=4)


def test_large_prime_is_padded():
    tz = tensorize((97, 13))
    assert tz.out_padded == 98 and tz.in_padded == (14,)
    assert tz.is_padded


def test_explicit_factors_and_errors():
    tz = tensorize((64, 96), factors=([4, 4, 4], [4, 4, 6]))
    assert tz.legs == ((4, 4), (4, 4), (4, 6))
    tz = tensorize((8, 16, 3, 3), factors=([8], [4, 4, 9]))
    assert tz.legs == ((8, 4), (1, 4), (1, 9))
    with pytest.raises(TNConfigError, match="multiply to 32 < 64"):
        tensorize((64, 96), factors=([4, 8], [96]))
    with pytest.raises(TNConfigError, match="multiple of the kernel 9"):
        tensorize((8, 16, 3, 3), factors=([8], [16, 8]))
    with pytest.raises(TNConfigError, match="expected"):
        tensorize((3, 4, 5))


def test_primes_and_smooth_numbers():
    assert prime_factors(25088) == [2] * 9 + [7, 7]
    assert next_smooth(97, 7) == 98
    assert next_smooth(25088, 3) == 26244


def _digits(index: int, radices) -> list[int]:
    """``index`` in the mixed radix ``radices`` (most significant first)."""
    out = []
    for r in reversed(radices):
        index, d = divmod(index, r)
        out.append(d)
    return out[::-1]


@pytest.mark.parametrize("in_map", [(256, 6, 6), (512, 7, 7), (64, 3, 5), (32, 1, 4)])
def test_map_legs_keep_channels_rows_and_columns_apart(in_map):
    c, h, w = in_map
    tz = tensorize((4096, c * h * w), in_map=in_map)
    ins = [i for _, i in tz.legs]
    assert tz.in_padded == (c * h * w,) and not tz.is_padded
    sides = [s for s in (h, w) if s > 1]
    assert ins[len(ins) - len(sides) :] == sides  # the map's sides are the last input digits
    assert math.prod(ins[: len(ins) - len(sides)]) == c
    for flat in (0, 1, c * h * w - 1, (c // 2) * h * w + (h - 1) * w + w // 2):  # c*HW + h*W + w
        ch, rest = divmod(flat, h * w)
        digits = _digits(flat, ins)
        row_col = [d for d, s in zip(divmod(rest, w), (h, w), strict=True) if s > 1]
        assert digits[len(ins) - len(sides) :] == row_col
        assert _digits(ch, ins[: len(ins) - len(sides)]) == digits[: len(ins) - len(sides)]


def test_map_legs_balance_like_the_flat_ones():
    flat = tensorize((4096, 9216))
    mapped = tensorize((4096, 9216), in_map=(256, 6, 6))
    assert sorted(mapped.leg_dims) == sorted(flat.leg_dims)  # the same budget, other digits
    assert mapped.legs[-2:] == ((2, 6), (2, 6))
    assert tensorize((4096, 9216), in_map=(256, 6, 6), n_legs=10).n_legs == 10


@pytest.mark.parametrize(
    ("shape", "in_map", "kw"),
    [
        ((4096, 13 * 36), (13, 6, 6), {}),  # 13 channels would need padding
        ((4096, 25088), (512, 7, 7), {"max_leg_dim": 4}),  # a side of 7 in legs of <= 4
        ((4096, 256), (256, 1, 1), {}),  # a 1x1 map is a vector
        ((4096, 9216), (256, 3, 3), {}),  # not this Linear's input
        ((97, 9216), (256, 6, 6), {}),  # 97 rows would need padding
    ],
)
def test_map_is_ignored_where_it_cannot_apply(shape, in_map, kw):
    assert tensorize(shape, in_map=in_map, **kw) == tensorize(shape, **kw)


@pytest.mark.parametrize(("in_map", "cap"), [((256, 6, 6), 4), ((256, 6, 6), 3), ((64, 4, 2), 2)])
def test_packed_map_legs_end_with_the_sides_prime_factors(in_map, cap):
    c, h, w = in_map
    tz = tensorize((4096, c * h * w), in_map=in_map, max_leg_dim=cap)
    assert max(tz.leg_dims) <= cap and not tz.is_padded
    sides = sorted(prime_factors(h), reverse=True) + sorted(prime_factors(w), reverse=True)
    ins = [i for _, i in tz.legs]
    assert ins[-len(sides) :] == sides
    assert math.prod(ins[: -len(sides)]) == c
    assert math.prod(o for o, _ in tz.legs) == 4096
