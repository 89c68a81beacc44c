"""Glorot/He initialisers: fans as torch computes them, distribution bounds and spreads, rng handling."""

import numpy as np
import pytest

from fastconv import init

SHAPE = (64, 32, 3, 3)  # fan_in 288, fan_out 576


def test_fans_match_torch():
    torch = pytest.importorskip("torch")
    for shape in [SHAPE, (10, 20), (8, 1, 5, 3)]:
        assert init.fans(shape) == torch.nn.init._calculate_fan_in_and_fan_out(torch.empty(shape))
    assert init.fans((32, 1, 3, 3), groups=32) == (9, 9)


@pytest.mark.parametrize("function, scale", [
    (init.glorot_uniform, np.sqrt(6 / (288 + 576))),
    (init.he_uniform, np.sqrt(6 / 288)),
])
def test_uniform_bounds_and_spread(function, scale):
    w = function(SHAPE, rng=0)
    assert w.dtype == np.float32 and w.shape == SHAPE
    assert np.abs(w).max() <= scale
    assert np.abs(w).max() > 0.99 * scale  # 18432 draws reach the bound
    assert abs(w.std() - scale / np.sqrt(3)) < 0.02 * scale
    assert abs(w.mean()) < 0.02 * scale


@pytest.mark.parametrize("function, std", [
    (init.glorot_normal, np.sqrt(2 / (288 + 576))),
    (init.he_normal, np.sqrt(2 / 288)),
])
def test_normal_spread(function, std):
    w = function(SHAPE, rng=np.random.default_rng(1), dtype=np.float64)
    assert w.dtype == np.float64
    assert abs(w.std() - std) < 0.02 * std  # std error of the std ~ 0.5 % for 18432 draws
    assert abs(w.mean()) < 0.03 * std


def test_he_fan_out_mode_and_glorot_gain():
    assert abs(init.he_normal(SHAPE, rng=2, mode="fan_out").std() - np.sqrt(2 / 576)) < 0.02 * np.sqrt(2 / 576)
    assert np.abs(init.glorot_uniform(SHAPE, rng=2, gain=2.0)).max() <= 2 * np.sqrt(6 / 864)


def test_rng_handling():
    np.testing.assert_array_equal(init.he_normal(SHAPE, rng=5), init.he_normal(SHAPE, rng=5))
    np.testing.assert_array_equal(init.he_normal(SHAPE, rng=np.random.default_rng(5)), init.he_normal(SHAPE, rng=5))
    assert not np.array_equal(init.he_normal(SHAPE), init.he_normal(SHAPE))  # None: fresh entropy
    generator = np.random.default_rng(7)
    first, second = init.glorot_uniform((4, 4), rng=generator), init.glorot_uniform((4, 4), rng=generator)
    assert not np.array_equal(first, second)  # a Generator advances


@pytest.mark.parametrize("kwargs, error, pattern", [
    (dict(shape=(5,)), ValueError, r"shape must have at least 2 dimensions"),
    (dict(shape=5), ValueError, r"shape must be a tuple of at least 2 ints"),
    (dict(shape=(4, 0, 3, 3)), ValueError, r"all positive"),
    (dict(rng="seed"), TypeError, r"rng must be a numpy.random.Generator, an int seed or None, got 'seed'"),
    (dict(rng=np.random.RandomState(0)), TypeError, r"rng must be a numpy.random.Generator"),
    (dict(rng=True), TypeError, r"rng must be"),
    (dict(rng=-1), ValueError, r"rng seed must be a non-negative int, got -1"),
    (dict(dtype=np.int32), TypeError, r"dtype must be a floating dtype"),
    (dict(groups=3), ValueError, r"groups must be a positive int dividing shape\[0\] = 64, got 3"),
    (dict(mode="fan_avg"), ValueError, r"mode must be 'fan_in' or 'fan_out', got 'fan_avg'"),
])
def test_bad_arguments_raise_with_a_message_that_names_them(kwargs, error, pattern):
    args = dict(shape=SHAPE)
    args.update(kwargs)
    with pytest.raises(error, match=pattern):
        init.he_uniform(args.pop("shape"), **args)
