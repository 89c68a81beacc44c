"""The im2col backend's own paths against the float64 reference: 1×1 GEMM, grouped batched GEMM,
tiles inside one image and tiles of several images under a workspace limit, complex dtypes."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fastconv
from fastconv import config
from fastconv.backends import im2col
from fastconv.geometry import make_spec
from reference import reference_conv2d, relative_error
from strategies import conv_problems

TOLERANCE = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-10,
             np.dtype(np.complex64): 1e-5, np.dtype(np.complex128): 1e-10}


def _problem(x_shape, w_shape, dtype=np.float64, seed=0, **kwargs):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(x_shape)
    w = rng.standard_normal(w_shape)
    b = rng.standard_normal(w_shape[0])
    if np.dtype(dtype).kind == "c":
        x = x + 1j * rng.standard_normal(x_shape)
        w = w - 1j * rng.standard_normal(w_shape)
    return x.astype(dtype), w.astype(dtype), b.astype(dtype)


def _expected(x, w, b, stride=(1, 1), padding=((0, 0), (0, 0)), dilation=(1, 1), groups=1):
    return reference_conv2d(x, w, b, stride=stride, padding=padding, dilation=dilation, groups=groups)


def _run(x, w, b, workspace_bytes=None, **kwargs):
    """im2col.run on a spec built like conv2d builds it, with an explicit workspace limit."""
    spec = make_spec(x.shape, w.shape, dtype=x.dtype, **kwargs)
    x_before = x.copy()
    out = im2col.run(x, w, b, spec, workspace_bytes=workspace_bytes)
    np.testing.assert_array_equal(x, x_before)
    return out


@pytest.mark.parametrize("groups, batch", [(1, 1), (1, 3), (2, 2), (4, 1)])
def test_pointwise_fast_path_is_a_plain_gemm(groups, batch):
    x, w, b = _problem((batch, 4, 5, 7), (8, 4 // groups, 1, 1))
    spec = make_spec(x.shape, w.shape, groups=groups)
    assert im2col._is_pointwise(spec)
    out = fastconv.conv2d(x, w, b, groups=groups, backend="im2col")
    assert relative_error(out, _expected(x, w, b, groups=groups)) <= 1e-10


def test_strided_or_padded_pointwise_goes_through_the_unfold():
    x, w, b = _problem((2, 4, 7, 7), (3, 4, 1, 1))
    spec = make_spec(x.shape, w.shape, stride=2, padding=1)
    assert not im2col._is_pointwise(spec)
    out = fastconv.conv2d(x, w, b, stride=2, padding=1, backend="im2col")
    assert relative_error(out, _expected(x, w, b, stride=(2, 2), padding=((1, 1), (1, 1)))) <= 1e-10


@pytest.mark.parametrize("groups, per_group_in, per_group_out", [(3, 2, 4), (4, 1, 1), (4, 1, 3), (2, 3, 1)])
def test_grouped_convolution_as_batched_gemm(groups, per_group_in, per_group_out):
    x, w, b = _problem((2, groups * per_group_in, 9, 8), (groups * per_group_out, per_group_in, 3, 2))
    out = fastconv.conv2d(x, w, b, groups=groups, padding=1, backend="im2col")
    expected = _expected(x, w, b, groups=groups, padding=((1, 1), (1, 1)))
    assert relative_error(out, expected) <= 1e-10


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.complex64, np.complex128])
@pytest.mark.parametrize("workspace_bytes", [1, 500, 3000, 40_000, None])
def test_tiled_output_matches_reference_for_any_workspace(workspace_bytes, dtype):
    """Tiny limits force one-pixel tiles and tiles that split rows; large ones several images."""
    x, w, b = _problem((3, 2, 11, 13), (4, 1, 3, 4), dtype=dtype)
    kwargs = dict(stride=(2, 1), padding=((1, 2), (3, 0)), dilation=(1, 2), groups=2)
    out = _run(x, w, b, workspace_bytes=workspace_bytes, **kwargs)
    expected = _expected(x, w, b, stride=(2, 1), padding=((1, 2), (3, 0)), dilation=(1, 2), groups=2)
    assert out.dtype == dtype
    assert relative_error(out, expected) <= TOLERANCE[np.dtype(dtype)]


@settings(max_examples=25)
@given(problem=conv_problems(dtypes=(np.float64,)), workspace=st.integers(1, 4000))
def test_tiling_property(problem, workspace):
    """Any problem under any (small) workspace gives the reference result."""
    x = np.ascontiguousarray(problem.x)
    kwargs = dict(problem.kwargs, padding_mode="zeros", padding=problem.explicit_padding)
    out = _run(x, np.ascontiguousarray(problem.weight), problem.bias, workspace_bytes=workspace, **kwargs)
    expected = _expected(x, problem.weight, problem.bias, stride=kwargs["stride"], padding=kwargs["padding"],
                         dilation=kwargs["dilation"], groups=kwargs["groups"])
    assert relative_error(out, expected) <= 1e-10


@pytest.mark.parametrize("limit", [1, 100, 777, 5000, 10**6])
def test_tiles_cover_every_pixel_once_and_respect_the_limit(limit):
    spec = make_spec((3, 2, 10, 9), (5, 2, 3, 3), padding=1)
    tiles = im2col.plan_tiles(spec, limit)
    image = spec.out_height * spec.out_width
    assert [first for first, _ in tiles] == [0] + [stop for _, stop in tiles[:-1]]
    assert tiles[-1][1] == spec.batch * image
    column_per_pixel = 2 * 9 * 8
    for first, stop in tiles:
        pixels = stop - first
        if first // image == (stop - 1) // image:  # inside one image: only the column buffer
            assert pixels == 1 or pixels * column_per_pixel <= limit
        else:  # whole images: column buffer and GEMM result
            assert first % image == 0 and pixels % image == 0
            assert pixels * (column_per_pixel + 5 * 8) <= limit


def test_configured_workspace_limit_is_used(monkeypatch):
    x, w, b = _problem((2, 3, 12, 12), (4, 3, 3, 3))
    monkeypatch.setattr(config, "workspace_bytes", 3 * 9 * 8 * 10)  # ten pixels per tile
    spec = make_spec(x.shape, w.shape, padding=1)
    assert max(stop - first for first, stop in im2col.plan_tiles(spec)) == 10
    out = fastconv.conv2d(x, w, b, padding=1, backend="im2col")
    assert relative_error(out, _expected(x, w, b, padding=((1, 1), (1, 1)))) <= 1e-10


def test_column_bytes_of_the_untiled_matrix():
    spec = make_spec((2, 3, 10, 10), (4, 3, 3, 3), dtype=np.float32)
    assert im2col.column_bytes(spec) == 27 * 2 * 8 * 8 * 4


def test_blas_threads_follow_config():
    """The BLAS that numpy's matmul calls runs config.threads threads during a call."""
    threadpoolctl = pytest.importorskip("threadpoolctl")

    def numpy_blas_threads():
        return {info["num_threads"] for info in threadpoolctl.threadpool_info()
                if info["user_api"] == "blas" and "numpy" in info["filepath"]}

    before = numpy_blas_threads()
    with im2col.blas_threads(1):
        assert numpy_blas_threads() == {1}
    assert numpy_blas_threads() == before
