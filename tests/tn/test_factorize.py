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
