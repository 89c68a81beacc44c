"""The ``winograd`` backend: transform identities, every supported feature against the float64
reference at both tile sizes, the dilation identity, declines, the filter cache and workspace."""

import threading
import warnings
from fractions import Fraction
from unittest import mock

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fastconv
from fastconv import config
from fastconv.backends import winograd
from fastconv.geometry import make_spec, pad_input, resolve_dtypes
from reference import reference_conv2d, relative_error
from strategies import conv_problems

# measured errors are ~1e-6 (float32) and ~1e-15 (float64); see docs/performance/winograd.md
TOLERANCE = {np.dtype(np.float32): 1e-4, np.dtype(np.float64): 1e-10}

three_by_three = conv_problems(kernels=[(3, 3)], strides=[(1, 1)], max_size=14)


def _backend_inputs(problem):
    """What ``conv2d`` hands a backend: contiguous compute-dtype arrays, non-zero modes padded."""
    dtype, _ = resolve_dtypes(problem.x.dtype, problem.weight.dtype)
    spec = make_spec(problem.x.shape, problem.weight.shape, dtype=dtype, **problem.kwargs)
    x = np.ascontiguousarray(problem.x, dtype=dtype)
    if spec.padding_mode != "zeros":
        x, spec = pad_input(x, spec), spec.zero_padded()
    weight = np.ascontiguousarray(problem.weight, dtype=dtype)
    bias = None if problem.bias is None else np.ascontiguousarray(problem.bias, dtype=dtype)
    return x, weight, bias, spec


def _reference(problem):
    kwargs = {k: v for k, v in problem.kwargs.items() if k != "padding"}
    return reference_conv2d(problem.x, problem.weight, problem.bias, padding=problem.explicit_padding, **kwargs)


# --------------------------------------------------------------------------------------------
# the transforms


@pytest.mark.parametrize("tile", [2, 4])
def test_one_dimensional_identity_is_exact(tile):
    """Aᵀ[(G g) ⊙ (Bᵀ d)] is the valid correlation of d with g, in exact rational arithmetic."""
    bt, g, at = (np.array([[Fraction(v).limit_denominator(1000) for v in row] for row in matrix], dtype=object)
                 for matrix in winograd.transform_matrices(tile))
    rng = np.random.default_rng(tile)
    for _ in range(20):
        d = np.array([Fraction(int(v)) for v in rng.integers(-9, 10, tile + 2)], dtype=object)
        taps = np.array([Fraction(int(v)) for v in rng.integers(-9, 10, 3)], dtype=object)
        expected = [sum(d[i + u] * taps[u] for u in range(3)) for i in range(tile)]
        assert list(at.dot(g.dot(taps) * bt.dot(d))) == expected


@pytest.mark.parametrize("tile", [2, 4])
def test_two_dimensional_tile_matches_direct_correlation(tile):
    bt, g, at = winograd.transform_matrices(tile)
    rng = np.random.default_rng(0)
    d, taps = rng.standard_normal((tile + 2, tile + 2)), rng.standard_normal((3, 3))
    y = at @ ((g @ taps @ g.T) * (bt @ d @ bt.T)) @ at.T
    direct = np.array([[np.sum(d[i:i + 3, j:j + 3] * taps) for j in range(tile)] for i in range(tile)])
    np.testing.assert_allclose(y, direct, rtol=1e-12, atol=1e-12)


def test_transform_matrices_rejects_other_tiles():
    with pytest.raises(ValueError, match="tile must be 2 or 4.*got 6"):
        winograd.transform_matrices(6)


# --------------------------------------------------------------------------------------------
# property tests, both tile sizes


@given(problem=three_by_three)
def test_matches_reference_3x3(problem):
    x_before, w_before = problem.x.copy(), problem.weight.copy()
    x, weight, bias, spec = _backend_inputs(problem)
    if spec.is_depthwise:
        assert "depthwise" in winograd.supports(spec)
        return
    assert winograd.supports(spec) is None
    expected = _reference(problem)
    out = fastconv.conv2d(problem.x, problem.weight, problem.bias, backend="winograd", **problem.kwargs)
    assert out.dtype == problem.x.dtype and out.shape == expected.shape
    assert relative_error(out, expected) <= TOLERANCE[spec.dtype]
    for tile in (2, 4):
        forced = winograd.run(x, weight, bias, spec, tile=tile)
        assert relative_error(forced, expected) <= TOLERANCE[spec.dtype], f"F({tile}x{tile},3x3)"
    np.testing.assert_array_equal(problem.x, x_before)
    np.testing.assert_array_equal(problem.weight, w_before)


@settings(max_examples=10)
@given(dtype=st.sampled_from([np.float32, np.float64]), dilation=st.tuples(st.integers(1, 4), st.integers(1, 4)),
       size=st.tuples(st.integers(9, 40), st.integers(9, 40)), padding=st.sampled_from([0, 1, "same", "full"]))
def test_larger_images_and_channels(dtype, dilation, size, padding):
    """Images with many tiles, partial edge tiles and more channels than the small property test."""
    rng = np.random.default_rng(sum(size))
    x = rng.standard_normal((2, 6, *size)).astype(dtype)
    w = rng.standard_normal((5, 6, 3, 3)).astype(dtype)
    b = rng.standard_normal(5).astype(dtype)
    spec = make_spec(x.shape, w.shape, padding=padding, dilation=dilation, dtype=dtype)
    expected = reference_conv2d(x, w, b, padding=spec.padding, dilation=dilation)
    for tile in (2, 4):
        for fused_limit in (winograd._FUSED_FILTER_BYTES, 0):  # per-thread blocks, then stage by stage
            with mock.patch.object(winograd, "_FUSED_FILTER_BYTES", fused_limit):
                out = winograd.run(x, w, b, spec, tile=tile)
            assert relative_error(out, expected) <= TOLERANCE[np.dtype(dtype)]


def test_float64_f4_error_is_near_machine_precision():
    rng = np.random.default_rng(1)
    x, w = rng.standard_normal((1, 32, 24, 24)), rng.standard_normal((8, 32, 3, 3))
    spec = make_spec(x.shape, w.shape, padding=1)
    out = winograd.run(x, w, None, spec, tile=4)
    assert relative_error(out, reference_conv2d(x, w, padding=spec.padding)) < 1e-13


def test_dilation_is_undilated_convolution_of_interleaved_sub_images():
    """The space-to-batch identity the backend relies on, checked on the reference itself."""
    rng = np.random.default_rng(2)
    dh, dw = 3, 2
    x, w = rng.standard_normal((1, 2, 17, 12)), rng.standard_normal((3, 2, 3, 3))
    dilated = reference_conv2d(x, w, dilation=(dh, dw))
    rebuilt = np.empty_like(dilated)
    for r in range(dh):
        for s in range(dw):
            rebuilt[:, :, r::dh, s::dw] = reference_conv2d(x[:, :, r::dh, s::dw], w)
    np.testing.assert_allclose(rebuilt, dilated, rtol=1e-12, atol=1e-12)
    out = fastconv.conv2d(x, w, dilation=(dh, dw), backend="winograd")
    assert relative_error(out, dilated) < 1e-13


# --------------------------------------------------------------------------------------------
# tile choice and cost hint


def test_tile_choice():
    big = make_spec((1, 8, 32, 32), (8, 8, 3, 3), padding=1, dtype=np.float32)
    filter_bound = make_spec((1, 512, 14, 14), (512, 512, 3, 3), padding=1, dtype=np.float32)
    dilated = make_spec((1, 8, 65, 65), (8, 8, 3, 3), padding=12, dilation=12, dtype=np.float32)
    assert winograd.choose_tile(big) == 4
    assert winograd.choose_tile(make_spec((1, 8, 32, 32), (8, 8, 3, 3), padding=1)) == 4  # float64 too
    assert winograd.choose_tile(filter_bound) == 2  # 16 tiles share 512×512 filters: F(2x2) reads 2.25× fewer
    assert winograd.choose_tile(dilated) == 2       # 65 / 12: sub-images of 5-6 outputs, 4×4 tiles mostly padding
    # the choice follows the cost estimate
    for spec in (big, filter_bound, dilated):
        assert winograd.estimate_flops(spec)["tile"] == winograd.choose_tile(spec)


def test_estimate_flops():
    spec = make_spec((2, 64, 56, 56), (128, 64, 3, 3), padding=1, dtype=np.float32)
    costs = winograd.estimate_flops(spec)
    tiles = 2 * 14 * 14
    assert costs["tile"] == 4 and costs["direct"] == spec.flops
    assert costs["gemm"] == 2 * 36 * 128 * 64 * tiles
    assert costs["total"] == sum(costs[k] for k in ("input_transform", "gemm", "output_transform", "filter_transform"))
    assert 2.5 < spec.flops / costs["total"] < 4              # at most 4x: 144 / 36 multiplies
    f2 = winograd.estimate_flops(spec, tile=2)
    assert f2["gemm"] == 2 * 16 * 128 * 64 * (2 * 28 * 28) and f2["total"] > costs["total"]


# --------------------------------------------------------------------------------------------
# declines


@pytest.mark.parametrize("kwargs, weight_shape, dtype, words", [
    ({}, (2, 2, 5, 5), np.float32, "3×3 kernel"),
    ({}, (2, 2, 3, 1), np.float64, "3×3 kernel"),
    ({"stride": 2}, (2, 2, 3, 3), np.float32, "stride 1"),
    ({"groups": 2}, (2, 1, 3, 3), np.float32, "depthwise"),
    ({}, (2, 2, 3, 3), np.complex64, "complex"),
])
def test_declines_with_reason(kwargs, weight_shape, dtype, words):
    x = np.ones((1, 2, 9, 9), dtype=dtype)
    w = np.ones(weight_shape, dtype=dtype)
    spec = make_spec(x.shape, w.shape, dtype=dtype, **kwargs)
    assert words in winograd.supports(spec)
    with pytest.raises(ValueError, match=f"backend 'winograd' cannot run this convolution.*{words}"):
        fastconv.conv2d(x, w, backend="winograd", **kwargs)


@pytest.mark.parametrize("tile", [2, 4])
@pytest.mark.parametrize("groups, dilation", [(1, 1), (2, (2, 3))])
def test_stages_run_in_order_compute_the_convolution(tile, groups, dilation):
    """The stage hook times the pipeline run uses: input, GEMMs and output stages give its answer."""
    rng = np.random.default_rng(tile)
    x = rng.standard_normal((2, 4, 13, 11)).astype(np.float32)
    w = rng.standard_normal((6, 4 // groups, 3, 3)).astype(np.float32)
    b = rng.standard_normal(6).astype(np.float32)
    spec = make_spec(x.shape, w.shape, padding="same", dilation=dilation, groups=groups, dtype=np.float32)
    x_before = x.copy()
    with winograd.stages(x, w, b, spec, tile=tile) as calls:
        assert sorted(calls) == ["filter_transform", "gemm", "input_transform", "output_transform"]
        for _ in range(2):  # each stage can be repeated, as a timing loop does
            calls["input_transform"]()
            calls["gemm"]()
            out = calls["output_transform"]()
        np.testing.assert_allclose(calls["filter_transform"](), winograd._transform_filters(w, tile, groups))
    expected = reference_conv2d(x, w, b, padding=spec.padding, dilation=spec.dilation, groups=groups)
    assert relative_error(out, expected) <= TOLERANCE[np.dtype(np.float32)]
    np.testing.assert_array_equal(x, x_before)


def test_stages_refuse_what_winograd_declines():
    x, w = np.ones((1, 2, 9, 9), np.float32), np.ones((2, 2, 5, 5), np.float32)
    with pytest.raises(ValueError, match="winograd cannot run this problem: .*3×3 kernel"):
        with winograd.stages(x, w, None, make_spec(x.shape, w.shape, dtype=np.float32)):
            pass
    w = np.ones((2, 2, 3, 3), np.float32)
    with pytest.raises(ValueError, match="tile must be 2 or 4"):
        with winograd.stages(x, w, None, make_spec(x.shape, w.shape, dtype=np.float32), tile=3):
            pass


# --------------------------------------------------------------------------------------------
# filter cache, workspace, threads


def test_filter_cache_never_serves_a_stale_weight():
    rng = np.random.default_rng(3)
    x, w = rng.standard_normal((1, 4, 12, 12)), rng.standard_normal((4, 4, 3, 3))
    first = fastconv.conv2d(x, w, padding=1, backend="winograd")
    np.testing.assert_array_equal(fastconv.conv2d(x, w, padding=1, backend="winograd"), first)
    w[1, 2, 0, 1] += 1.0                                  # in place: same object, new values
    expected = reference_conv2d(x, w, padding=((1, 1), (1, 1)))
    assert relative_error(fastconv.conv2d(x, w, padding=1, backend="winograd"), expected) < 1e-13


def test_filter_cache_is_bounded():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((1, 2, 8, 8))
    for _ in range(3 * winograd._FILTER_CACHE_ENTRIES):
        fastconv.conv2d(x, rng.standard_normal((2, 2, 3, 3)), backend="winograd")
    assert len(winograd._filter_cache) <= winograd._FILTER_CACHE_ENTRIES


@pytest.mark.parametrize("fused_limit", [winograd._FUSED_FILTER_BYTES, 0])
def test_small_workspace_splits_into_chunks(monkeypatch, fused_limit):
    rng = np.random.default_rng(5)
    x, w = rng.standard_normal((2, 3, 30, 26)), rng.standard_normal((4, 3, 3, 3))
    monkeypatch.setattr(config, "workspace_bytes", 1)      # one tile per chunk or block
    monkeypatch.setattr(winograd, "_FUSED_FILTER_BYTES", fused_limit)
    out = fastconv.conv2d(x, w, padding="same", dilation=2, backend="winograd")
    spec = make_spec(x.shape, w.shape, padding="same", dilation=2)
    assert relative_error(out, reference_conv2d(x, w, padding=spec.padding, dilation=(2, 2))) < 1e-13


@pytest.mark.parametrize("tile", [2, 4])
def test_fused_blocks_of_one_row_of_tiles(monkeypatch, tile):
    """The fused schedule with one row of tiles per block: bands of a dilated, asymmetrically
    padded batch are packed and unpacked block by block, across images."""
    rng = np.random.default_rng(7)
    x, w, b = rng.standard_normal((2, 3, 23, 19)), rng.standard_normal((4, 3, 3, 3)), rng.standard_normal(4)
    spec = make_spec(x.shape, w.shape, padding=((2, 1), (0, 3)), dilation=(2, 3))
    per_row_of_tiles = winograd._tiles_per_row(winograd._tile_origins(spec, tile)) * (tile + 2) ** 2 * 7 * 8
    monkeypatch.setattr(winograd, "_FUSED_BLOCK_BYTES", per_row_of_tiles)
    with mock.patch.object(winograd, "_run_staged", side_effect=AssertionError("fused expected")):
        out = winograd.run(x, w, b, spec, tile=tile)
    expected = reference_conv2d(x, w, b, padding=spec.padding, dilation=(2, 3))
    assert relative_error(out, expected) < 1e-13


@pytest.mark.parametrize("threads", [1, 2])
def test_concurrent_calls_agree(monkeypatch, threads):
    monkeypatch.setattr(config, "threads", threads)
    rng = np.random.default_rng(6)
    x = rng.standard_normal((1, 8, 20, 20)).astype(np.float32)
    weights = [rng.standard_normal((8, 8, 3, 3)).astype(np.float32) for _ in range(3)]
    expected = [fastconv.conv2d(x, w, padding=1, backend="winograd") for w in weights]
    results, errors = {}, []

    def work(index):
        try:
            for _ in range(5):
                results[index] = fastconv.conv2d(x, weights[index % 3], padding=1, backend="winograd")
        except Exception as error:  # reported below: a thread's exception is otherwise lost
            errors.append(error)

    workers = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert not errors
    for index, out in results.items():
        np.testing.assert_array_equal(out, expected[index % 3])


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs os.fork")
def test_works_in_a_forked_child():
    import multiprocessing

    x = np.random.default_rng(7).standard_normal((1, 4, 16, 16)).astype(np.float32)
    w = np.ones((4, 4, 3, 3), dtype=np.float32)
    expected = fastconv.conv2d(x, w, padding=1, backend="winograd")  # the parent's pool now exists
    context = multiprocessing.get_context("fork")
    with context.Pool(1) as pool:
        out = pool.apply_async(fastconv.conv2d, (x, w), dict(padding=1, backend="winograd")).get(timeout=60)
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("tile", [2, 4])
def test_non_finite_inputs_land_where_direct_convolution_puts_them(tile):
    x = np.ones((1, 1, 12, 12))
    x[0, 0, 5, 5] = np.inf
    x[0, 0, 9, 1] = np.nan
    w = np.ones((1, 1, 3, 3))
    out = winograd.run(x, w, None, make_spec(x.shape, w.shape), tile=tile)
    expected = reference_conv2d(x, w)
    for test in (np.isnan, np.isposinf, np.isneginf):
        np.testing.assert_array_equal(test(out), test(expected))
    np.testing.assert_allclose(out[np.isfinite(expected)], 9.0)


@pytest.mark.parametrize("tile", [2, 4])
def test_values_that_overflow_the_transforms_are_summed_directly(tile):
    """F(4x4)'s transforms scale values by up to ~100 before they cancel: near the dtype's limit
    they overflow where the direct sum does not."""
    x = np.full((1, 2, 8, 8), 1e36, dtype=np.float32)
    w = np.full((2, 2, 3, 3), 1e-2, dtype=np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = winograd.run(x, w, None, make_spec(x.shape, w.shape, dtype=np.float32), tile=tile)
    np.testing.assert_allclose(out, 1.8e35, rtol=1e-5)


@pytest.mark.parametrize("schedule", ["fused", "staged"])
@pytest.mark.parametrize("dilation", [(1, 1), (1, 2), (2, 1), (3, 2)])
@pytest.mark.parametrize("tile", [2, 4])
def test_finite_calls_after_a_nan_call_are_not_summed_directly(monkeypatch, schedule, dilation, tile):
    """The output check reads only outputs this call wrote: NaN left in a reused workspace by an
    earlier call must not send later finite calls to direct summation. (With dilation, the band
    of a block has places no tile writes: 9 output columns at dilation 2 are sub-images of 5 and
    4 columns, which F(4x4) tiles as 8 and 4.)"""
    from fastconv.backends import im2col

    if schedule == "staged":
        monkeypatch.setattr(winograd, "_FUSED_FILTER_BYTES", 0)
    monkeypatch.setattr(config, "threads", 1)  # one thread: its workspaces are the ones reused
    rng = np.random.default_rng(13)
    x, w = rng.standard_normal((1, 3, 11, 9)), rng.standard_normal((4, 3, 3, 3))
    padding = ((dilation[0],) * 2, (dilation[1],) * 2)  # "same": 9 output columns
    undilated = make_spec(x.shape, w.shape, padding=padding)  # writes all of its (larger) workspaces
    assert np.isnan(winograd.run(np.full_like(x, np.nan), w, None, undilated, tile=tile)).any()
    monkeypatch.setattr(im2col, "run", lambda *args: pytest.fail("a finite call was summed directly"))
    out = winograd.run(x, w, None, make_spec(x.shape, w.shape, padding=padding, dilation=dilation), tile=tile)
    expected = reference_conv2d(x, w, padding=padding, dilation=dilation)
    assert relative_error(out, expected) <= 1e-10
