"""numba_cpu's weight-gradient kernels against the float64 reference: both forms (pixels or
output channels in the lanes), dense, grouped and depthwise with a channel multiplier, strides, dilations,
asymmetric padding, tails of every kind, both packed layouts, float32 and float64, non-finite
inputs, non-contiguous operands; and the SIMD reduction it is built on."""

import numpy as np
import pytest
from numba import njit

from fastconv import config
from fastconv.backends import numba_cpu, simd
from fastconv.geometry import make_spec
from reference import reference_conv2d_gradients, relative_error


def _weight_grad(x, g, spec):
    return numba_cpu.run_weight_grad(x, g, spec)


def _check(x_shape, w_shape, dtype=np.float32, seed=0, **kwargs):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(x_shape).astype(dtype)
    spec = make_spec(x_shape, w_shape, dtype=dtype, **kwargs)
    g = rng.standard_normal(spec.out_shape).astype(dtype)
    saved = x.copy(), g.copy()
    dw = _weight_grad(x, g, spec)
    _, expected = reference_conv2d_gradients(x, np.zeros(w_shape), g, stride=spec.stride, padding=spec.padding,
                                             dilation=spec.dilation, groups=spec.groups)
    assert dw.shape == w_shape and dw.dtype == dtype
    assert relative_error(dw, expected) <= (5e-6 if dtype == np.float32 else 1e-12)
    np.testing.assert_array_equal(x, saved[0])
    np.testing.assert_array_equal(g, saved[1])
    return spec


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("x_shape, w_shape, kwargs", [
    ((1, 3, 9, 9), (5, 3, 3, 3), dict(padding=1)),                                  # channel tails
    ((2, 8, 11, 10), (6, 4, 3, 2), dict(padding=((1, 0), (2, 1)), stride=(2, 3), dilation=(2, 1), groups=2)),
    ((2, 6, 7, 7), (12, 1, 3, 3), dict(padding=1, groups=6)),                       # depthwise, multiplier 2
    ((1, 4, 9, 8), (4, 1, 5, 5), dict(padding=2, stride=2, groups=4)),              # depthwise 5x5, strided
    ((1, 2, 1, 1), (3, 2, 1, 1), {}),                                               # one pixel
    ((1, 16, 7, 7), (40, 4, 1, 3), dict(padding=(0, 4), dilation=(1, 4), groups=4)),  # 1x3 dilated, grouped
    ((3, 2, 20, 19), (5, 2, 3, 3), dict(stride=1)),                                 # batch, no padding
])
def test_matches_the_reference(dtype, x_shape, w_shape, kwargs):
    _check(x_shape, w_shape, dtype, **kwargs)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("x_shape, w_shape, kwargs", [
    ((1, 3, 9, 9), (5, 3, 3, 3), dict(padding=1)),
    ((2, 8, 11, 10), (6, 4, 3, 2), dict(padding=((1, 0), (2, 1)), stride=(2, 3), dilation=(2, 1), groups=2)),
    ((1, 6, 7, 7), (12, 1, 3, 3), dict(padding=1, groups=6)),
    ((2, 20, 5, 6), (70, 10, 3, 3), dict(padding=1, groups=2)),                    # several channel blocks
])
def test_output_channels_in_lanes_match_the_reference(monkeypatch, dtype, x_shape, w_shape, kwargs):
    """The form for few pixels and many channels: output channels in the lanes, a pixel a step."""
    monkeypatch.setattr(numba_cpu, "weight_grad_form", lambda spec, threads: "channel_lanes")
    _check(x_shape, w_shape, dtype, **kwargs)


def _force_layout(monkeypatch, spec, copies, chunk=None):
    """Make the pixels-in-lanes plan use phase planes or column copies (and ``chunk``)."""
    layout = numba_cpu._layout(spec, copies)
    real = numba_cpu.weight_grad_plan.__wrapped__

    def forced(spec, threads):
        plan = real(spec, threads)
        lanes = layout.lanes
        in_place = layout.plane_width == spec.out_width
        vectors = layout.pixels // lanes if in_place else -(-layout.pixels // lanes)
        return numba_cpu.WeightGradPlan(layout, plan.rows, plan.cols,
                                        spec.out_height * spec.out_width if in_place else vectors * lanes,
                                        vectors, in_place, plan.row_blocks_per_task, 1, plan.tasks,
                                        chunk or plan.chunk)

    monkeypatch.setattr(numba_cpu, "weight_grad_plan", forced)


@pytest.mark.parametrize("copies", [False, True])
def test_both_layouts_and_split_passes(monkeypatch, copies):
    """Phase planes (the gradient packed into runs crossing row ends) and column copies (read in
    place, with a tail of single pixels), over several pixel passes, in parallel."""
    spec = make_spec((1, 5, 23, 21), (18, 5, 3, 3), padding=1, dtype=np.float32)
    _force_layout(monkeypatch, spec, copies, chunk=3)
    monkeypatch.setattr(numba_cpu, "SERIAL_MACS", 0)
    _check((1, 5, 23, 21), (18, 5, 3, 3), padding=1)


def test_thread_counts_and_non_contiguous_operands():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 4, 12, 12, 2), dtype=np.float32)[..., 0]
    spec = make_spec(x.shape, (8, 2, 3, 3), padding=1, groups=2, dtype=np.float32)
    g = rng.standard_normal(spec.out_shape[::-1], dtype=np.float32).T
    results = []
    for threads in (1, 2):
        previous = config.threads
        config.set_threads(threads)
        try:
            results.append(_weight_grad(x, g, spec))
        finally:
            config.set_threads(previous)
    np.testing.assert_allclose(results[0], results[1], rtol=1e-5, atol=1e-5)
    _, expected = reference_conv2d_gradients(x, np.zeros((8, 2, 3, 3)), g, padding=spec.padding, groups=2)
    assert relative_error(results[0], expected) <= 5e-6


@pytest.mark.parametrize("form", ["pixel_lanes", "channel_lanes"])
def test_inf_the_runs_cross_only_between_rows_does_not_reach_the_sum(monkeypatch, form):
    """Runs crossing row ends (phase planes) multiply a zero gradient by inputs no tap of theirs
    reads: an inf there must not turn a finite gradient into NaN (as torch's would not)."""
    x = np.ones((1, 1, 6, 6))
    x[0, 0, 2, 0] = np.inf  # read only by tap v = 0 (no padding)
    spec = make_spec(x.shape, (1, 1, 3, 3), dtype=np.float64)
    _force_layout(monkeypatch, spec, copies=False)
    monkeypatch.setattr(numba_cpu, "weight_grad_form", lambda spec, threads: form)
    monkeypatch.setattr(numba_cpu, "plan", lambda spec: numba_cpu._layout(spec, False))
    g = np.ones(spec.out_shape)
    dw = _weight_grad(x, g, spec)
    _, expected = reference_conv2d_gradients(x, np.zeros((1, 1, 3, 3)), g)
    np.testing.assert_array_equal(np.isfinite(dw), np.isfinite(expected))
    np.testing.assert_allclose(dw[np.isfinite(dw)], expected[np.isfinite(expected)])


def test_empty_batch():
    spec = make_spec((0, 2, 5, 5), (3, 2, 3, 3), dtype=np.float32)
    dw = _weight_grad(np.ones((0, 2, 5, 5), np.float32), np.ones(spec.out_shape, np.float32), spec)
    np.testing.assert_array_equal(dw, np.zeros((3, 2, 3, 3)))


@njit
def _dot_reduction(a, a_rows, v, offsets, first, count, out):
    acc = simd.block_zero(2, 3, a)
    acc = simd.block_dot_loop(acc, a, 1, 7, a_rows, v, 2, offsets, first, count)
    lanes = simd.lanes(a.dtype)
    for m in range(2):
        for n in range(3):
            simd.store(out, (m * 3 + n) * lanes, acc[m][n])


@pytest.mark.parametrize("count, valid", [(0, 2), (3, 2), (2, 1)])
def test_block_dot_loop_is_the_reduction_it_documents(count, valid):
    lanes = simd.lanes(np.float64)
    a = np.arange(1.0, 2 + 7 + count * lanes) % 5
    v = (np.arange(40 + count * lanes + 2, dtype=np.float64) * 0.5) % 3
    offsets = np.array([9, 0, 5, 11, 30], dtype=np.int64)
    out = np.empty(6 * lanes)
    _dot_reduction(a, valid, v, offsets, 1, count, out)
    expected = np.zeros((2, 3, lanes))
    for s in range(count):
        for m in range(2):
            row = a[1 + min(m, valid - 1) * 7 + s * lanes:][:lanes]
            for n in range(3):
                expected[m, n] += row * v[2 + offsets[1 + n] + s * lanes:][:lanes]
    np.testing.assert_allclose(out.reshape(2, 3, lanes), expected)
