"""local_conv2d and tiled_conv2d against brute-force loops, and the identities that tie them to conv2d."""

import numpy as np
import pytest
from hypothesis import given, strategies as st

import fastconv
from reference import explicit_padding, relative_error

TOLERANCE = {np.dtype(np.float64): 1e-10, np.dtype(np.float32): 1e-5}


def brute_force_local(x, weight_at, bias, stride, padding, dilation, out_size):
    """out[n, k, i, j] = sum_{c,u,v} x_pad[n, c, i*sh + u*dh, j*sw + v*dw] * weight_at(i, j)[k, c, u, v]."""
    x = np.pad(np.asarray(x, dtype=np.float64), ((0, 0), (0, 0)) + tuple(padding))
    (sh, sw), (dh, dw) = stride, dilation
    first = np.asarray(weight_at(0, 0), dtype=np.float64)
    _, _, kh, kw = first.shape
    out = np.zeros((x.shape[0], first.shape[0], *out_size))
    for i in range(out_size[0]):
        for j in range(out_size[1]):
            window = x[:, :, i * sh:i * sh + (kh - 1) * dh + 1:dh, j * sw:j * sw + (kw - 1) * dw + 1:dw]
            out[:, :, i, j] = np.einsum("ncuv,kcuv->nk", window, np.asarray(weight_at(i, j), dtype=np.float64))
    if bias is not None:
        out += np.asarray(bias, dtype=np.float64)[None, :, None, None]
    return out


@st.composite
def local_problems(draw):
    dtype = np.dtype(draw(st.sampled_from([np.float32, np.float64])))
    kernel = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    stride = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    padding = draw(st.sampled_from([0, 1, (1, 0), "same", "full"]))
    size = [draw(st.integers(1, 7)), draw(st.integers(1, 7))]
    for axis in range(2):
        while sum(explicit_padding(padding, size, kernel, stride, dilation)[axis]) + size[axis] < \
                dilation[axis] * (kernel[axis] - 1) + 1:
            size[axis] += 1
    sides = explicit_padding(padding, size, kernel, stride, dilation)
    out_size = tuple((n + sum(p) - d * (k - 1) - 1) // s + 1
                     for n, p, k, s, d in zip(size, sides, kernel, stride, dilation))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    channels, filters = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    x = rng.standard_normal((draw(st.integers(1, 2)), channels, *size)).astype(dtype)
    bias = rng.standard_normal(filters).astype(dtype) if draw(st.booleans()) else None
    # tiles larger than the output are allowed: their last filter banks are simply unused
    tile = (draw(st.integers(1, out_size[0] + 2)), draw(st.integers(1, out_size[1] + 2)))
    return dict(x=x, bias=bias, kernel=kernel, channels=channels, filters=filters, out_size=out_size, tile=tile,
                rng=rng, kwargs=dict(stride=stride, padding=padding, dilation=dilation), sides=sides)


@given(problem=local_problems())
def test_local_conv2d_matches_brute_force(problem):
    p = problem
    weight = p["rng"].standard_normal((*p["out_size"], p["filters"], p["channels"], *p["kernel"]))
    weight = weight.astype(p["x"].dtype)
    out = fastconv.local_conv2d(p["x"], weight, p["bias"], **p["kwargs"])
    expected = brute_force_local(p["x"], lambda i, j: weight[i, j], p["bias"], p["kwargs"]["stride"], p["sides"],
                                 p["kwargs"]["dilation"], p["out_size"])
    assert out.shape == expected.shape and out.dtype == p["x"].dtype
    assert relative_error(out, expected) <= TOLERANCE[out.dtype]


@given(problem=local_problems())
def test_tiled_conv2d_matches_brute_force(problem):
    p = problem
    weight = p["rng"].standard_normal((*p["tile"], p["filters"], p["channels"], *p["kernel"])).astype(p["x"].dtype)
    out = fastconv.tiled_conv2d(p["x"], weight, p["bias"], **p["kwargs"])
    tile_h, tile_w = p["tile"]
    expected = brute_force_local(p["x"], lambda i, j: weight[i % tile_h, j % tile_w], p["bias"],
                                 p["kwargs"]["stride"], p["sides"], p["kwargs"]["dilation"], p["out_size"])
    assert out.shape == expected.shape and out.dtype == p["x"].dtype
    assert relative_error(out, expected) <= TOLERANCE[out.dtype]


@given(problem=local_problems())
def test_tiled_with_one_tile_is_conv2d_and_with_full_tiles_is_local(problem):
    p = problem
    x, kwargs = p["x"].astype(np.float64), p["kwargs"]
    shared = p["rng"].standard_normal((p["filters"], p["channels"], *p["kernel"]))
    np.testing.assert_allclose(fastconv.tiled_conv2d(x, shared[None, None], p["bias"], **kwargs),
                               fastconv.conv2d(x, shared, p["bias"], **kwargs), rtol=1e-12, atol=1e-12)
    unshared = p["rng"].standard_normal((*p["out_size"], p["filters"], p["channels"], *p["kernel"]))
    np.testing.assert_allclose(fastconv.tiled_conv2d(x, unshared, p["bias"], **kwargs),
                               fastconv.local_conv2d(x, unshared, p["bias"], **kwargs), rtol=1e-12, atol=1e-12)


def test_unbatched_padding_mode_and_backend():
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((2, 5, 5)), rng.standard_normal((2, 1, 3, 2, 3, 3))
    out = fastconv.tiled_conv2d(x, w, padding=1, padding_mode="circular", backend="naive")
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1)), mode="wrap")
    expected = brute_force_local(padded[None], lambda i, j: w[i % 2, j % 1], None, (1, 1), ((0, 0), (0, 0)), (1, 1),
                                 (5, 5))[0]
    assert out.shape == (3, 5, 5)
    assert relative_error(out, expected) <= 1e-12


def test_tile_larger_than_the_output_uses_the_banks_its_outputs_reach():
    # output (i, j) uses weight[i % t_h, j % t_w]: with t larger than the output, weight[i, j]
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 2, 6, 5))
    w = rng.standard_normal((7, 9, 3, 2, 3, 3))  # the output is 4x3
    for backend in ("naive", "im2col", "auto"):
        out = fastconv.tiled_conv2d(x, w, backend=backend)
        expected = brute_force_local(x, lambda i, j: w[i, j], None, (1, 1), ((0, 0), (0, 0)), (1, 1), (4, 3))
        assert out.shape == (2, 3, 4, 3) and relative_error(out, expected) <= 1e-12
    # with the output's size as the tile it is local_conv2d
    np.testing.assert_allclose(fastconv.tiled_conv2d(x, w, stride=2), fastconv.local_conv2d(x, w[:2, :2], stride=2),
                               rtol=1e-12, atol=1e-12)
    assert fastconv.output_shape(x.shape, w.shape, op="tiled_conv2d") == (2, 3, 4, 3)


@pytest.mark.parametrize("call, pattern", [
    (lambda: fastconv.local_conv2d(np.zeros((1, 2, 6, 6)), np.zeros((3, 4, 1, 2, 3, 3))),
     r"local_conv2d: weight \(3, 4, 1, 2, 3, 3\) holds filters for \(3, 4\) output positions but the output is "
     r"\(4, 4\).*expected weight.shape\[:2\] == \(4, 4\)"),
    (lambda: fastconv.local_conv2d(np.zeros((1, 2, 6, 6)), np.zeros((4, 4, 2, 3, 3))),
     r"local_conv2d: weight must have 6 dimensions \(H_out, W_out, K, C, kh, kw\)"),
    (lambda: fastconv.local_conv2d(np.zeros((1, 2, 6, 6)), np.zeros((4, 4, 1, 3, 3, 3))),
     r"expected weight.shape\[1\] == 2"),
    (lambda: fastconv.tiled_conv2d(np.zeros((1, 2, 6, 6)), np.zeros((1, 1, 3, 2, 3, 3)), np.zeros(2)),
     r"bias must have shape \(K,\) = \(3,\)"),
    (lambda: fastconv.local_conv2d(np.zeros((1, 2, 6, 6)), np.zeros((4, 4, 1, 2, 3, 3)), stride=0),
     r"stride must be positive"),
])
def test_bad_input_raises_with_a_message_that_names_it(call, pattern):
    with pytest.raises(ValueError, match=pattern):
        call()
