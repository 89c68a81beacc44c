"""The separable backend on low-rank weights, ``fastconv.separate`` and ``fastconv.separable_conv2d``.

``test_conv2d.py`` draws random, hence full-rank, weights, which ``separable`` declines for 2-D
kernels; here the weights are drawn low-rank, across every feature of the spec.
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fastconv
from fastconv.ops import conv2d as dispatch
from fastconv.geometry import make_spec
from reference import reference_conv2d, relative_error
from strategies import COMPLEX_DTYPES, REAL_DTYPES, conv_problems
from conformance import check_against_reference


def _max_paying_rank(kernel_h, kernel_w):
    if kernel_h == 1 or kernel_w == 1:
        return 1
    return (kernel_h * kernel_w - 1) // (kernel_h + kernel_w)


@st.composite
def low_rank_problems(draw, dtypes):
    problem = draw(conv_problems(dtypes=dtypes, max_kernel=6, max_size=8))
    out_channels, channels_per_group, kernel_h, kernel_w = problem.weight.shape
    rank = draw(st.integers(0, _max_paying_rank(kernel_h, kernel_w)))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))

    def factor(length):
        values = rng.standard_normal((out_channels, channels_per_group, rank, length))
        if problem.weight.dtype.kind == "c":
            values = values + 1j * rng.standard_normal(values.shape)
        return values

    weight = np.einsum("kcru,kcrv->kcuv", factor(kernel_h), factor(kernel_w))
    problem.weight = weight.astype(problem.weight.dtype)
    return problem


@given(problem=low_rank_problems(REAL_DTYPES))
def test_low_rank_weights_match_reference(problem):
    check_against_reference("separable", problem)


@given(problem=low_rank_problems(COMPLEX_DTYPES))
def test_low_rank_complex_weights_match_reference(problem):
    check_against_reference("separable", problem)


def _gaussian(size, sigma):
    t = np.arange(size) - (size - 1) / 2
    g = np.exp(-t**2 / (2 * sigma**2))
    return g / g.sum()


@pytest.mark.parametrize("kernel", [
    np.outer(_gaussian(31, 5.0), _gaussian(31, 5.0)),
    np.outer(_gaussian(7, 1.0), _gaussian(5, 1.0)).astype(np.float32),
    np.ones((9, 9)) / 81,
    np.array([[1, 0, -1], [2, 0, -2], [1, 0, -1]]),  # Sobel, integers
], ids=["gaussian31", "gaussian7x5_float32", "box9", "sobel"])
def test_separate_finds_rank_one(kernel):
    cols, rows = fastconv.separate(kernel)
    assert cols.shape == (1, kernel.shape[0]) and rows.shape == (1, kernel.shape[1])
    scale = np.abs(kernel).max()
    tolerance = 1e-6 if kernel.dtype == np.float32 else 1e-12
    assert np.abs(np.outer(cols[0], rows[0]) - kernel).max() <= tolerance * scale
    assert cols.dtype == (np.float32 if kernel.dtype == np.float32 else np.float64)


def test_separate_low_and_full_rank():
    rng = np.random.default_rng(1)
    low = sum(np.outer(rng.standard_normal(8), rng.standard_normal(6)) for _ in range(3))
    cols, rows = fastconv.separate(low)
    assert len(cols) == 3
    np.testing.assert_allclose(cols.T @ rows, low, atol=1e-12)
    full = rng.standard_normal((5, 5))
    assert len(fastconv.separate(full)[0]) == 5
    # a loose tolerance keeps only the dominant terms, with error bounded by tol * ||k||_2
    noisy = np.outer(_gaussian(9, 2), _gaussian(9, 2)) + 1e-6 * rng.standard_normal((9, 9))
    cols, rows = fastconv.separate(noisy, tol=1e-3)
    assert len(cols) == 1
    assert np.linalg.norm(cols.T @ rows - noisy, 2) <= 1e-3 * np.linalg.norm(noisy, 2)
    assert fastconv.separate(np.zeros((3, 4)))[0].shape == (0, 3)


def test_separate_complex():
    rng = np.random.default_rng(2)
    kernel = np.outer(rng.standard_normal(4) + 1j * rng.standard_normal(4), rng.standard_normal(5) - 2j)
    cols, rows = fastconv.separate(kernel.astype(np.complex64))
    assert cols.dtype == np.complex64 and len(cols) == 1
    np.testing.assert_allclose(np.outer(cols[0], rows[0]), kernel, atol=1e-5)


@pytest.mark.parametrize("kernel, tol, error, match", [
    (np.ones(5), None, ValueError, "kernel2d must be a non-empty 2-D array"),
    (np.ones((0, 3)), None, ValueError, "kernel2d must be a non-empty 2-D array"),
    (np.ones((3, 3)), 1.5, ValueError, r"tol must be a number in \[0, 1\), got 1.5"),
    (np.ones((3, 3)), "small", ValueError, "tol must be a number"),
    (np.full((3, 3), np.nan), None, ValueError, "NaN or infinity"),
    (np.array([["a"]]), None, TypeError, "kernel2d has dtype"),
])
def test_separate_rejects_bad_input(kernel, tol, error, match):
    with pytest.raises(error, match=match):
        fastconv.separate(kernel, tol=tol)


def test_full_rank_weight_is_declined_with_its_rank():
    rng = np.random.default_rng(3)
    x, w = rng.standard_normal((1, 2, 9, 9)), rng.standard_normal((2, 2, 3, 3))
    with pytest.raises(ValueError, match=r"backend 'separable' cannot run .* weight\[0, 0\] has numerical rank 3"):
        fastconv.conv2d(x, w, backend="separable")
    # auto with separable preferred falls back to a backend that runs it, correctly
    with fastconv.use_backend("separable"):
        out = fastconv.conv2d(x, w)
    assert relative_error(out, reference_conv2d(x, w)) <= 1e-10


def test_auto_picks_separable_only_for_low_rank_weights():
    g = _gaussian(7, 1.5)
    low_rank = np.broadcast_to(np.outer(g, g), (2, 2, 7, 7)).copy()
    spec = make_spec((1, 2, 16, 16), low_rank.shape)
    with fastconv.use_backend("separable"):
        assert dispatch.choose_backend(spec, low_rank) == "separable"
        full = np.random.default_rng(4).standard_normal(low_rank.shape)
        assert dispatch.choose_backend(spec, full) != "separable"


def test_separable_conv2d_matches_conv2d_with_outer_product():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 4, 11, 13)).astype(np.float32)
    cols, rows = rng.standard_normal((6, 2, 3)), rng.standard_normal((6, 2, 5))
    bias = rng.standard_normal(6)
    kwargs = dict(stride=(2, 1), padding="same", dilation=(1, 2), groups=2, padding_mode="reflect")
    out = fastconv.separable_conv2d(x, cols, rows, bias, **kwargs)
    weight = np.einsum("kcu,kcv->kcuv", cols, rows)
    expected = fastconv.conv2d(x, weight, bias, backend="naive", **kwargs)
    assert out.dtype == np.float64 and out.shape == expected.shape  # float64 factors: float64 result
    assert relative_error(out, expected) <= 1e-10


def test_separable_conv2d_one_dimensional_factors_filter_each_channel():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((3, 20, 20))  # unbatched RGB image
    g = _gaussian(5, 1.0)
    out = fastconv.separable_conv2d(x, g, g, padding="same", padding_mode="replicate")
    assert out.shape == x.shape
    from scipy import ndimage
    for channel in range(3):
        np.testing.assert_allclose(out[channel], ndimage.correlate(x[channel], np.outer(g, g), mode="nearest"),
                                   atol=1e-12)


@pytest.mark.parametrize("cols, rows, kwargs, error, match", [
    (np.ones((2, 3)), np.ones((2, 3)), {}, ValueError, r"col_kernel and row_kernel must both have shape"),
    (np.ones((1, 1, 3)), np.ones((2, 1, 3)), {}, ValueError, r"got shapes \(1, 1, 3\) and \(2, 1, 3\)"),
    (np.ones(3), np.ones(3), {"groups": 2}, ValueError, "groups must be 1 with 1-D factors"),
    (np.ones(3), np.array(["a", "b"]), {}, TypeError, "row_kernel"),
    (np.ones((1, 2, 3)), np.ones((1, 2, 3)), {}, ValueError, r"weight.shape\[1\] == 1"),
    (np.ones(3), np.ones(3), {"stride": 0}, ValueError, "stride must be positive"),
])
def test_separable_conv2d_rejects_bad_factors(cols, rows, kwargs, error, match):
    with pytest.raises(error, match=match):
        fastconv.separable_conv2d(np.ones((1, 1, 8, 8)), cols, rows, **kwargs)


@pytest.fixture
def svd_calls(monkeypatch):
    """Counts the SVDs the separable backend computes (fresh factor cache)."""
    from fastconv.backends import separable
    separable.clear_caches()
    calls = []
    svd = np.linalg.svd
    monkeypatch.setattr(np.linalg, "svd", lambda *args, **kwargs: calls.append(args[0].shape) or svd(*args, **kwargs))
    yield calls
    separable.clear_caches()


def test_factors_are_computed_once_per_weight_and_never_stale_after_in_place_mutation(svd_calls):
    rng = np.random.default_rng(11)
    x = rng.standard_normal((1, 3, 12, 12))
    w = np.einsum("kcu,kcv->kcuv", rng.standard_normal((4, 3, 5)), rng.standard_normal((4, 3, 4)))
    for _ in range(3):  # supports_weight and run share the one decomposition
        out = fastconv.conv2d(x, w, backend="separable")
    assert len(svd_calls) == 1
    assert relative_error(out, reference_conv2d(x, w)) <= 1e-12
    w[2, 1] *= -3.0  # same array object, new values: still rank 1, so still accepted
    mutated = fastconv.conv2d(x, w, backend="separable")
    assert len(svd_calls) == 2
    assert relative_error(mutated, reference_conv2d(x, w)) <= 1e-12
    assert not np.allclose(mutated, out)
    fastconv.conv2d(x, w.copy(), backend="separable")  # an equal copy is served from the cache
    assert len(svd_calls) == 2


def test_a_weight_mutated_in_place_between_calls_gives_the_new_result():
    """The factors, their layout for the kernels and the weight's finiteness are cached per weight
    content: changing the values of the same array, on the fused float32 path and on a 1-D kernel
    going from finite to NaN and back, must never serve the old ones."""
    rng = np.random.default_rng(13)
    x = rng.standard_normal((1, 2, 40, 37)).astype(np.float32)
    w = _rank_one_weight(rng, (3, 2, 5, 5))
    first = fastconv.conv2d(x, w, padding=2, backend="separable")
    w[1, 0] *= -2.0
    w[2, 1] = np.outer(rng.standard_normal(5), rng.standard_normal(5))
    second = fastconv.conv2d(x, w, padding=2, backend="separable")
    assert relative_error(second, reference_conv2d(x, w, padding=((2, 2), (2, 2)))) <= 2e-6
    assert not np.allclose(second, first)

    column = rng.standard_normal((2, 2, 5, 1)).astype(np.float32)
    finite = fastconv.conv2d(x, column, padding=(2, 0), backend="separable")
    column[1, 0, 0, 0] = np.nan  # reaches every output of filter 1, padding rows included
    with np.errstate(invalid="ignore"):
        expected = reference_conv2d(x, column, padding=((2, 2), (0, 0)))
    out = fastconv.conv2d(x, column, padding=(2, 0), backend="separable")
    np.testing.assert_array_equal(np.isnan(out), np.isnan(expected))
    assert np.isnan(out[0, 1]).all() and not np.isnan(out[0, 0]).any()
    column[1, 0, 0, 0] = 1.0
    out = fastconv.conv2d(x, column, padding=(2, 0), backend="separable")
    assert not np.isnan(out).any()
    assert relative_error(out, reference_conv2d(x, column, padding=((2, 2), (0, 0)))) <= 2e-6
    assert not np.allclose(out, finite)


def test_one_dimensional_kernels_need_no_svd(svd_calls):
    rng = np.random.default_rng(12)
    x = rng.standard_normal((1, 8, 10, 10))
    for shape in [(16, 8, 1, 1), (4, 8, 1, 5), (4, 8, 3, 1)]:
        w = rng.standard_normal(shape)
        w[0, 0] = 0.0  # an all-zero kernel: rank 0
        out = fastconv.conv2d(x, w, backend="separable")
        assert relative_error(out, reference_conv2d(x, w)) <= 1e-12
    assert svd_calls == []
    w[1, 2, 1, 0] = np.nan  # NaN goes where direct summation puts it (the SVD would fail to converge)
    out = fastconv.conv2d(x, w, backend="separable")
    np.testing.assert_array_equal(np.isnan(out), np.isnan(reference_conv2d(x, w)))


# ---------------------------------------------------------------------------------------------
# the fused kernel: strips, bands, ring, edges


def check_fused(x_shape, w_shape, dtype=np.float32, rank=1, bias=True, seed=0, **kwargs):
    """Run ``separable.run`` (as the front end calls it) on a rank-``rank`` weight; compare with the
    float64 reference. Module-level so that a child process compiled for another CPU can call it."""
    from fastconv.backends import separable
    from fastconv.geometry import pad_input

    rng = np.random.default_rng(seed)
    x = rng.standard_normal(x_shape).astype(dtype)
    out_channels, channels, kernel_h, kernel_w = w_shape
    w = np.einsum("kcru,kcrv->kcuv", rng.standard_normal((out_channels, channels, rank, kernel_h)),
                  rng.standard_normal((out_channels, channels, rank, kernel_w))).astype(dtype)
    b = rng.standard_normal(out_channels).astype(dtype) if bias else None
    spec = make_spec(x_shape, w_shape, dtype=dtype, **kwargs)
    before = x.copy(), w.copy()
    run_x, run_spec = (pad_input(x, spec), spec.zero_padded()) if spec.padding_mode != "zeros" else (x, spec)
    out = separable.run(run_x, w, b, run_spec)
    expected = reference_conv2d(x, w, b, stride=spec.stride, padding=spec.padding, dilation=spec.dilation,
                                groups=spec.groups, padding_mode=spec.padding_mode)
    assert out.dtype == dtype and out.shape == expected.shape
    assert relative_error(out, expected) <= (2e-6 if dtype == np.float32 else 1e-12)
    np.testing.assert_array_equal(x, before[0])
    np.testing.assert_array_equal(w, before[1])
    return run_spec


@pytest.fixture(params=["default ring", "tiny ring"])
def ring_bytes(request, monkeypatch):
    """The ring at its default size, and at 1 KiB: one vector per strip, bands of a few rows."""
    from fastconv.backends import separable

    if request.param == "tiny ring":
        monkeypatch.setattr(separable, "RING_BYTES", 1024)
    return request.param


@pytest.mark.parametrize("x_shape, w_shape, kwargs", [
    ((1, 1, 1, 1), (1, 1, 3, 3), dict(padding=1)),                     # one pixel, padding all round
    ((1, 1, 1, 40), (1, 1, 5, 3), dict(padding=(2, 1))),               # one row
    ((1, 1, 37, 1), (1, 1, 3, 5), dict(padding=(1, 2))),               # one column
    ((1, 1, 5, 3), (1, 1, 9, 9), dict(padding=4)),                     # kernel larger than the image
    ((1, 1, 6, 7), (1, 1, 8, 9), dict(padding=1)),                     # kernel as large as the padded input
    ((2, 3, 45, 70), (4, 3, 7, 5), dict(padding="same")),              # channels, batch, odd sizes
    ((1, 4, 30, 41), (6, 2, 5, 5), dict(groups=2, padding=2)),         # groups
    ((1, 3, 33, 50), (6, 1, 3, 7), dict(groups=3, padding=(1, 3))),    # depthwise, multiplier 2
    ((1, 2, 40, 90), (3, 2, 9, 11), dict(stride=(2, 1), padding=(4, 5))),
    ((1, 2, 40, 90), (3, 2, 9, 11), dict(stride=(1, 2), dilation=(2, 3), padding=(8, 15))),
    ((1, 2, 40, 91), (3, 2, 3, 3), dict(stride=(3, 4), padding=((0, 2), (3, 1)))),  # strided copies
    ((2, 2, 5, 5), (3, 2, 2, 3), dict(stride=1000, padding=2)),        # one output pixel
    ((1, 2, 4, 9), (3, 2, 2, 2), dict(dilation=(3, 40), padding=(3, 20))),  # dilation beyond the image
    ((1, 2, 9, 10), (2, 2, 3, 2), dict(dilation=(3000, 5000), padding=(3000, 2500))),  # plain loops
    ((1, 2, 9, 30), (2, 2, 2, 3), dict(stride=(2, 20), padding=(1, 15))),  # column stride > 16: plain loops
    ((1, 1, 29, 300), (1, 1, 1, 7), dict(padding=(0, 3))),             # 1-D kernels: one pass each
    ((1, 1, 300, 29), (1, 1, 7, 1), dict(padding=(3, 0))),
    ((1, 2, 23, 31), (2, 2, 5, 5), dict(padding=2, padding_mode="reflect")),
])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fused_kernel_edges(ring_bytes, x_shape, w_shape, kwargs, dtype):
    check_fused(x_shape, w_shape, dtype, **kwargs)


@pytest.mark.parametrize("rank", [2, 3])
def test_higher_ranks_accumulate_their_terms(ring_bytes, rank):
    check_fused((2, 3, 27, 35), (2, 3, 9, 8), rank=rank, padding="same")


def test_wide_images_run_in_strips_and_bands(monkeypatch):
    """A 640-wide image in strips of a 16 KiB ring, and several bands of rows per task."""
    from fastconv.backends import separable

    monkeypatch.setattr(separable, "RING_BYTES", 16 << 10)
    spec = check_fused((1, 1, 400, 640), (1, 1, 31, 31), padding="same")
    layout = separable.plan(spec, fastconv.config.threads, separable.RING_BYTES)
    assert layout.strips > 1 and layout.bands > 1


@settings(max_examples=40, deadline=None)
@given(kernel=st.tuples(st.integers(1, 9), st.integers(1, 9)), size=st.tuples(st.integers(1, 40), st.integers(1, 70)),
       stride=st.tuples(st.integers(1, 3), st.integers(1, 3)), dilation=st.tuples(st.integers(1, 2), st.integers(1, 2)),
       padding=st.tuples(st.integers(0, 5), st.integers(0, 5)), dtype=st.sampled_from([np.float32, np.float64]),
       ring=st.sampled_from([512, 4096, 1 << 18]), seed=st.integers(0, 100))
def test_fused_kernel_matches_the_reference_on_drawn_geometry(kernel, size, stride, dilation, padding, dtype, ring,
                                                              seed):
    """Sizes up to 40×70 with kernels up to 9×9 (larger than test_low_rank_weights_match_reference
    draws), and the ring drawn from one vector per strip to the default."""
    from fastconv.backends import separable

    extent = [d * (k - 1) + 1 for k, d in zip(kernel, dilation)]
    size = tuple(max(s, e - 2 * p) for s, e, p in zip(size, extent, padding))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(separable, "RING_BYTES", ring)
        check_fused((1, 2, *size), (2, 2, *kernel), dtype, seed=seed, stride=stride, dilation=dilation,
                    padding=padding)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_non_finite_pixels_reach_exactly_the_outputs_that_read_them(ring_bytes, dtype):
    """The vertical block multiplies every ring row it holds by a tap, zero for rows a block row
    does not read, and 0 · inf is NaN: such blocks are summed again over their own taps."""
    g = _gaussian(7, 1.5)
    w = np.outer(g, g)[None, None].astype(dtype)
    x = np.random.default_rng(7).standard_normal((1, 1, 40, 50)).astype(dtype)
    x[0, 0, 10, 12], x[0, 0, 30, 40], x[0, 0, 0, 0], x[0, 0, 25, 3] = np.inf, -np.inf, np.nan, np.inf
    x[0, 0, 26, 3] = -np.inf  # inf - inf: NaN where both are read
    out = fastconv.conv2d(x, w, padding="same", backend="separable")
    expected = reference_conv2d(x, w, padding=((3, 3), (3, 3)))
    np.testing.assert_array_equal(np.isnan(out), np.isnan(expected))
    np.testing.assert_array_equal(np.isposinf(out), np.isposinf(expected))
    np.testing.assert_array_equal(np.isneginf(out), np.isneginf(expected))
    finite = np.isfinite(expected)
    assert relative_error(out[finite], expected[finite]) <= (2e-6 if dtype == np.float32 else 1e-12)


def test_all_zero_filters_give_the_bias():
    rng = np.random.default_rng(8)
    x = rng.standard_normal((1, 2, 20, 21)).astype(np.float32)
    w = _rank_one_weight(rng, (3, 2, 5, 5))
    w[1] = 0.0  # every kernel of filter 1 has rank 0: no terms
    bias = np.array([1.0, -2.0, 3.0], np.float32)
    out = fastconv.conv2d(x, w, bias, padding=2, backend="separable")
    np.testing.assert_array_equal(out[0, 1], np.full((20, 21), -2.0, np.float32))
    assert relative_error(out, reference_conv2d(x, w, bias, padding=((2, 2), (2, 2)))) <= 2e-6


def _rank_one_weight(rng, shape):
    out_channels, channels, kernel_h, kernel_w = shape
    return np.einsum("kcu,kcv->kcuv", rng.standard_normal((out_channels, channels, kernel_h)),
                     rng.standard_normal((out_channels, channels, kernel_w))).astype(np.float32)


@pytest.mark.parametrize("threads", [1, 3])
def test_thread_counts_give_the_same_result(threads):
    previous = fastconv.config.threads
    try:
        fastconv.config.set_threads(threads)
        check_fused((2, 2, 70, 90), (2, 2, 9, 7), padding="same")
    finally:
        fastconv.config.set_threads(previous)


def test_small_calls_run_serially_and_large_ones_in_parallel():
    from fastconv.backends import separable
    from fastconv.thread_pools import ParallelKernel

    small = separable._launch(make_spec((1, 1, 8, 8), (1, 1, 3, 3), dtype=np.float32), 2, separable.RING_BYTES)
    large = separable._launch(make_spec((1, 1, 512, 512), (1, 1, 9, 9), dtype=np.float32), 2, separable.RING_BYTES)
    assert not isinstance(small.kernel, ParallelKernel) and isinstance(large.kernel, ParallelKernel)


def test_cached_kernels_follow_the_simd_source():
    """numba's disk cache tracks a kernel's own file only: the kernel keeps the simd module's
    source hash in its closure, which numba's cache key includes."""
    from fastconv.backends import separable, simd

    kernel = separable._fused_kernel(2, 3, 4)
    assert simd.SOURCE_VERSION in [cell.cell_contents for cell in kernel.parallel.py_func.__closure__]
