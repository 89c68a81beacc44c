"""The SIMD layer on its own: every intrinsic in float32 and float64, partial vectors at array
ends (with a guard page after the array, so a read or write past the end would crash), register
blocks against numpy, stencils against the reference, and the typing errors."""

import mmap
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from numba import njit
from numba.core.errors import TypingError

from fastconv.backends import simd
from reference import reference_conv2d

DTYPES = (np.float32, np.float64)


def _data(count, dtype, seed=0):
    return np.random.default_rng(seed).standard_normal(count).astype(dtype)


def test_width_and_registers_describe_a_real_vector_unit():
    assert simd.VECTOR_BYTES in (16, 32, 64)
    assert simd.VECTOR_REGISTERS in (16, 32)
    assert simd.lanes(np.float32) == simd.VECTOR_BYTES // 4
    assert simd.lanes(np.float64) == simd.VECTOR_BYTES // 8


@njit
def _lanes_in_numba(a):
    return simd.lanes(a.dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_lanes_in_compiled_code(dtype):
    assert _lanes_in_numba(np.zeros(1, dtype)) == simd.lanes(dtype)


@njit
def _copy_vector(source, i, target, k):
    simd.store(target, k, simd.load(source, i))


@pytest.mark.parametrize("dtype", DTYPES)
def test_load_and_store_at_any_offset(dtype):
    lanes = simd.lanes(dtype)
    source = _data(3 * lanes + 5, dtype)
    for i in (0, 1, lanes - 1, 2 * lanes + 5):
        target = np.zeros(3 * lanes + 7, dtype)
        _copy_vector(source, i, target, 2)
        expected = np.zeros_like(target)
        expected[2:2 + lanes] = source[i:i + lanes]
        np.testing.assert_array_equal(target, expected)


@pytest.mark.parametrize("dtype", DTYPES)
def test_load_and_store_index_a_c_contiguous_array_flat(dtype):
    lanes = simd.lanes(dtype)
    source = _data(4 * lanes, dtype).reshape(4, lanes)
    target = np.zeros((2, 2 * lanes), dtype)
    _copy_vector(source, lanes + 1, target, 3)
    np.testing.assert_array_equal(target.reshape(-1)[3:3 + lanes], source.reshape(-1)[lanes + 1:2 * lanes + 1])


@njit
def _copy_lanes(source, i, target, k, lo, hi):
    simd.store_lanes(target, k, simd.load_lanes(source, i, lo, hi), lo, hi)


@njit
def _loaded_lanes(source, i, lo, hi, out):
    simd.store(out, 0, simd.load_lanes(source, i, lo, hi))


@pytest.mark.parametrize("dtype", DTYPES)
def test_partial_load_and_store_touch_only_their_lanes(dtype):
    lanes = simd.lanes(dtype)
    source = _data(3 * lanes, dtype) + 10  # never 0, so a loaded 0 means "not loaded"
    for lo, hi in [(0, lanes), (0, 1), (3, 5), (lanes - 1, lanes), (2, 2), (5, 1), (-4, 3), (lanes - 2, lanes + 9)]:
        target = np.full(3 * lanes, -1.0, dtype)
        _copy_lanes(source, lanes, target, 4, lo, hi)
        inside = [t for t in range(lanes) if lo <= t < hi]
        expected = np.full_like(target, -1.0)
        for t in inside:
            expected[4 + t] = source[lanes + t]
        np.testing.assert_array_equal(target, expected)
        loaded = np.empty(lanes, dtype)
        _loaded_lanes(source, lanes, lo, hi, loaded)
        np.testing.assert_array_equal(loaded, [source[lanes + t] if t in inside else 0 for t in range(lanes)])


def _guarded(count, dtype):
    """An array of ``count`` elements whose last element is the last before an unreadable page."""
    page = mmap.PAGESIZE
    itemsize = np.dtype(dtype).itemsize
    nbytes = -(-count * itemsize // page) * page
    buffer = mmap.mmap(-1, nbytes + page, prot=mmap.PROT_READ | mmap.PROT_WRITE)
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    address = ctypes.addressof(ctypes.c_char.from_buffer(buffer))
    if libc.mprotect(ctypes.c_void_p(address + nbytes), page, 0) != 0:
        pytest.skip("mprotect unavailable")
    whole = np.frombuffer(buffer, dtype=dtype, count=nbytes // itemsize)
    return buffer, whole[nbytes // itemsize - count:]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="guard pages via mprotect")
def test_tails_never_touch_memory_past_the_array():
    """Run in a child: touching the guard page would kill it with SIGSEGV instead of failing."""
    code = textwrap.dedent("""
        import numpy as np
        from test_simd import _guarded, _copy_lanes
        from fastconv.backends import simd
        for dtype in (np.float32, np.float64):
            lanes = simd.lanes(dtype)
            for tail in range(1, lanes):
                keep, source = _guarded(tail, dtype)
                source[:] = np.arange(1, tail + 1)
                keep2, target = _guarded(tail, dtype)
                _copy_lanes(source, 0, target, 0, 0, tail)
                assert (target == source).all()
        print("ok")
    """)
    here = Path(__file__).resolve().parent
    environment = dict(os.environ, PYTHONPATH=os.pathsep.join([str(here.parents[1]), str(here.parent), str(here)]))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=str(here),
                          env=environment, timeout=300)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-2000:]


@njit
def _arithmetic(a, b, c, s, out):
    va, vb, vc = simd.load(a, 0), simd.load(b, 0), simd.load(c, 0)
    lanes = simd.lanes(a.dtype)
    simd.store(out, 0, simd.fma(va, vb, vc))
    simd.store(out, lanes, simd.add(va, vb))
    simd.store(out, 2 * lanes, simd.mul(va, vb))
    simd.store(out, 3 * lanes, simd.maximum(va, vb))
    simd.store(out, 4 * lanes, simd.broadcast(s))
    simd.store(out, 5 * lanes, simd.zero(a))
    return simd.hsum(va)


@pytest.mark.parametrize("dtype", DTYPES)
def test_arithmetic_broadcast_zero_and_sum(dtype):
    lanes = simd.lanes(dtype)
    a, b, c = _data(lanes, dtype, 1), _data(lanes, dtype, 2), _data(lanes, dtype, 3)
    a[1], b[2] = np.nan, np.nan  # maximum ignores a NaN operand, like numpy.fmax
    out = np.empty(6 * lanes, dtype)
    total = _arithmetic(a, b, c, dtype(2.5), out)
    tolerance = 1e-6 if dtype == np.float32 else 1e-14
    np.testing.assert_allclose(out[:lanes], a * b + c, rtol=tolerance, atol=tolerance)
    np.testing.assert_array_equal(out[lanes:2 * lanes], a + b)
    np.testing.assert_array_equal(out[2 * lanes:3 * lanes], a * b)
    np.testing.assert_array_equal(out[3 * lanes:4 * lanes], np.fmax(a, b))
    np.testing.assert_array_equal(out[4 * lanes:5 * lanes], 2.5)
    np.testing.assert_array_equal(out[5 * lanes:], 0)
    assert np.isnan(total)
    a[1] = 0.5
    total = _arithmetic(a, b, c, dtype(1), out)
    assert total == pytest.approx(float(np.sum(a.astype(np.float64))), rel=tolerance, abs=tolerance)


@njit
def _split(a, out):
    lanes = simd.lanes(a.dtype)
    pair = simd.even_odd(simd.load(a, 0), simd.load(a, lanes))
    simd.store(out, 0, pair[0])
    simd.store(out, lanes, pair[1])


@pytest.mark.parametrize("dtype", DTYPES)
def test_even_odd_deinterleaves_two_vectors(dtype):
    lanes = simd.lanes(dtype)
    a = np.arange(2 * lanes, dtype=dtype)
    out = np.empty(2 * lanes, dtype)
    _split(a, out)
    np.testing.assert_array_equal(out, np.concatenate([a[::2], a[1::2]]))


ROWS, COLS = 3, 2


@njit
def _outer_step(b, v, out):
    acc = simd.block_zero(ROWS, COLS, v)
    acc = simd.block_fma(acc, b, 1, 2, v, 3, simd.lanes(v.dtype) + 1)
    acc = simd.block_fma(acc, b, 0, 1, v, 0, simd.lanes(v.dtype))
    lanes = simd.lanes(v.dtype)
    for m in range(ROWS):
        for n in range(COLS):
            simd.store(out, (m * COLS + n) * lanes, acc[m][n])


@pytest.mark.parametrize("dtype", DTYPES)
def test_block_fma_is_an_outer_product_step(dtype):
    lanes = simd.lanes(dtype)
    b, v = _data(16, dtype, 4), _data(4 * lanes, dtype, 5)
    out = np.empty(ROWS * COLS * lanes, dtype)
    _outer_step(b, v, out)
    expected = np.empty((ROWS, COLS, lanes))
    for m in range(ROWS):
        for n in range(COLS):
            expected[m, n] = (b[1 + 2 * m] * v[3 + n * (lanes + 1):3 + n * (lanes + 1) + lanes].astype(float)
                              + b[m] * v[n * lanes:(n + 1) * lanes].astype(float))
    np.testing.assert_allclose(out.reshape(ROWS, COLS, lanes), expected, rtol=1e-5)


@njit
def _round_trip(source, target):
    like = simd.block_zero(ROWS, COLS, source)
    simd.block_store(target, 3, simd.block_load(source, 1, like))


@pytest.mark.parametrize("dtype", DTYPES)
def test_block_load_and_store_move_consecutive_vectors(dtype):
    size = ROWS * COLS * simd.lanes(dtype)
    source = _data(size + 2, dtype, 11)
    target = np.zeros(size + 5, dtype)
    _round_trip(source, target)
    np.testing.assert_array_equal(target[3:3 + size], source[1:1 + size])
    assert not target[:3].any() and not target[3 + size:].any()


@njit
def _reduction(b, valid, v, offsets, count, stride, out):
    lanes = simd.lanes(v.dtype)
    acc = simd.block_zero(ROWS, COLS, v)
    acc = simd.block_fma_loop(acc, b, 2, 13, valid, v, 1, lanes, offsets, count, stride)
    for m in range(ROWS):
        for n in range(COLS):
            simd.store(out, (m * COLS + n) * lanes, acc[m][n])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("count, valid", [(0, 3), (1, 3), (4, 3), (4, 1), (2, 2)])
def test_block_fma_loop_is_the_reduction_it_documents(dtype, count, valid):
    """Rows of b are 13 apart from b[2]; rows past `valid` repeat the last valid row, and b holds
    nothing past that row's last element read, so an overhang would read out of bounds."""
    lanes = simd.lanes(dtype)
    offsets = np.array([0, 3, 7], dtype=np.int64)
    stride = 11
    steps = count * len(offsets)
    b = _data(2 + (valid - 1) * 13 + max(steps, 1), dtype, 6)
    v = _data(1 + (count + 1) * stride + 7 + COLS * lanes, dtype, 7)
    out = np.empty(ROWS * COLS * lanes, dtype)
    _reduction(b, valid, v, offsets, count, stride, out)
    expected = np.zeros((ROWS, COLS, lanes))
    step = 0
    for c in range(count):
        for offset in offsets:
            start = 1 + c * stride + offset
            for m in range(ROWS):
                for n in range(COLS):
                    weight = b[2 + min(m, valid - 1) * 13 + step]
                    expected[m, n] += weight * v[start + n * lanes:start + (n + 1) * lanes]
            step += 1
    np.testing.assert_allclose(out.reshape(ROWS, COLS, lanes), expected, rtol=1e-5, atol=1e-5)


def _stencil_runner(rows, cols, geometry, edge):
    block_rows, block_cols, stencil = rows, cols, geometry

    @njit
    def run(w, x, base, pitch, height, width, top, left, out):
        lanes = simd.lanes(x.dtype)
        acc = simd.block_zero(block_rows, block_cols, x)
        if edge:
            acc = simd.block_stencil_edge(acc, w, 1, x, base, pitch, height, width, top, left, stencil)
        else:
            acc = simd.block_stencil(acc, w, 1, x, base, pitch, height, width, top, left, stencil)
        for r in range(block_rows):
            for n in range(block_cols):
                simd.store(out, (r * block_cols + n) * lanes, acc[r][n])

    return run


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("geometry", [(3, 3, 1, 1, 1, 1), (3, 2, 2, 2, 1, 1), (2, 3, 1, 2, 2, 3)])
def test_block_stencil_inside_and_at_the_edges(dtype, geometry):
    kh, kw, sh, sw, dh, dw = geometry
    lanes = simd.lanes(dtype)
    rows, cols = 2, 2
    height, width, pitch = 9, 2 * lanes * sw + 9, 2 * lanes * sw + 12
    plane = _data(height * pitch, dtype, 8).reshape(height, pitch)
    x = np.concatenate([_data(5, dtype, 9), plane.reshape(-1)])  # the plane starts at base 5
    w = _data(1 + kh * kw, dtype, 10)
    image = plane[:, :width].astype(np.float64)
    for top, left, edge in [(0, 0, False), (1, 2, False), (-2, -3, True), (5, width - 9, True), (-9, 0, True)]:
        out = np.empty(rows * cols * lanes, dtype)
        _stencil_runner(rows, cols, geometry, edge)(w, x, 5, pitch, height, width, top, left, out)
        expected = np.zeros((rows, cols * lanes))
        for r in range(rows):
            for column in range(cols * lanes):
                for u in range(kh):
                    for v in range(kw):
                        y, z = top + r * sh + u * dh, left + sw * column + v * dw
                        if 0 <= y < height and 0 <= z < width:
                            expected[r, column] += w[1 + u * kw + v] * image[y, z]
        np.testing.assert_allclose(out.reshape(rows, cols * lanes), expected, rtol=1e-5, atol=1e-5)


def test_block_stencil_edge_pads_with_zeros_that_meet_the_weights():
    """Outside pixels are zeros multiplied by the weight: an infinite weight makes NaN, as torch's
    zero padding does, where skipping the tap would not."""
    lanes = simd.lanes(np.float64)
    x = np.ones(4 * lanes, np.float64)
    w = np.array([0.0, np.inf, 1.0])  # taps (0, 0) = inf, (0, 1) = 1 at weight index 1
    out = np.empty(lanes, np.float64)
    _stencil_runner(1, 1, (1, 2, 1, 1, 1, 1), True)(w, x, 0, 2 * lanes, 2, 2 * lanes, -1, 0, out)
    assert np.isnan(out).all()
    np.testing.assert_allclose(reference_conv2d(np.ones((1, 1, 1, 2)), np.array([[[[np.inf, 1.0]]]]),
                                                padding=((1, 0), (0, 0)))[0, 0, 0], [np.nan], equal_nan=True)


def test_intrinsics_reject_what_they_cannot_do():
    @njit
    def strided(a):
        return simd.load(a[::2], 0)

    @njit
    def mixed(a, b):
        return simd.add(simd.load(a, 0), simd.load(b, 0))

    @njit
    def integer(a):
        return simd.load(a, 0)

    with pytest.raises(TypingError, match="C-contiguous"):
        strided(np.zeros(64))
    with pytest.raises(TypingError, match="one type"):
        mixed(np.zeros(64), np.zeros(64, np.float32))
    with pytest.raises(TypingError, match="float32 or float64"):
        integer(np.zeros(64, np.int64))
