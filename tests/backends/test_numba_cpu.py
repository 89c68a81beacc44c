"""The numba_cpu backend's paths through conv2d against the float64 reference: the plane kernel
(depthwise and single-channel) and the register-block kernel (channel tails, groups), kernel
widths, unit and non-unit steps, threads, the serial path of small calls, and lazy compilation.
The kernels' own geometry tests are in test_numba_cpu_simd.py, the SIMD layer's in test_simd.py."""

import subprocess
import sys

import numba
import numpy as np
import pytest

import fastconv
from fastconv import config
from fastconv.backends import numba_cpu
from fastconv.geometry import make_spec
from reference import reference_conv2d, relative_error


def _check(x_shape, w_shape, dtype=np.float64, bias=True, seed=0, **kwargs):
    """conv2d(backend="numba_cpu") against the reference; returns the spec the backend saw."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(x_shape).astype(dtype)
    w = rng.standard_normal(w_shape).astype(dtype)
    b = rng.standard_normal(w_shape[0]).astype(dtype) if bias else None
    out = fastconv.conv2d(x, w, b, backend="numba_cpu", **kwargs)
    spec = make_spec(x.shape, w.shape, dtype=dtype, **kwargs)
    expected = reference_conv2d(x, w, b, stride=spec.stride, padding=spec.padding, dilation=spec.dilation,
                                groups=spec.groups)
    assert out.dtype == dtype and out.shape == expected.shape
    assert relative_error(out, expected) <= (1e-5 if dtype == np.float32 else 1e-10)
    return spec


@pytest.mark.parametrize("width", [1, 2, 3, 5, 7])
def test_kernel_widths_on_both_kernels(width):
    """Borders on every side, on the plane kernel and on the register-block kernel."""
    spec = _check((1, 1, 9, 12), (1, 1, 3, width), padding=((1, 2), (width // 2, width - 1)))
    assert numba_cpu.uses_plane_kernel(spec)
    spec = _check((2, 3, 7, 10), (4, 3, 2, width), padding=((0, 1), (width, 1)))
    assert not numba_cpu.uses_plane_kernel(spec)


@pytest.mark.parametrize("stride, dilation", [((1, 2), (1, 1)), ((2, 1), (1, 3)), ((3, 3), (2, 2))])
def test_non_unit_steps_along_the_width(stride, dilation):
    _check((1, 1, 13, 17), (1, 1, 3, 3), stride=stride, dilation=dilation, padding=2)
    _check((2, 2, 13, 17), (4, 2, 3, 3), stride=stride, dilation=dilation, padding=((0, 3), (4, 1)))


@pytest.mark.parametrize("multiplier", [1, 2, 3])
def test_depthwise_path(multiplier):
    spec = _check((2, 5, 11, 9), (5 * multiplier, 1, 3, 3), groups=5, padding="same")
    assert spec.is_depthwise and numba_cpu.uses_plane_kernel(spec)


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("x_shape, padding", [
    ((2, 4, 9, 8), 1),
    ((1, 3, 10, 11), ((0, 2), (2, 0))),   # asymmetric
    ((1, 3, 7, 6), 0),                    # no padding
    ((1, 2, 2, 1), ((3, 1), (2, 4))),     # image smaller than the kernel: every pixel is a border
])
def test_depthwise_3x3(stride, x_shape, padding):
    channels = x_shape[1]
    for multiplier in (1, 2):
        spec = _check(x_shape, (channels * multiplier, 1, 3, 3), dtype=np.float32, groups=channels,
                      stride=stride, padding=padding)
        assert numba_cpu.uses_plane_kernel(spec)


def test_single_channel_image_path():
    spec = _check((1, 1, 64, 70), (1, 1, 5, 5), dtype=np.float32, padding="same")
    assert numba_cpu.uses_plane_kernel(spec)
    # a large single plane is split into row blocks, one per task
    _check((1, 1, 300, 40), (1, 1, 3, 3), padding=1, bias=False)


@pytest.mark.parametrize("groups, per_group_out", [(1, 4), (1, 6), (2, 5), (3, 8)])
def test_register_block_path_with_channel_tails(groups, per_group_out):
    spec = _check((2, 2 * groups, 8, 9), (groups * per_group_out, 2, 3, 3), groups=groups, padding=1)
    assert not numba_cpu.uses_plane_kernel(spec)


def test_kernel_larger_than_input_touches_only_padding_columns():
    _check((1, 2, 3, 2), (4, 2, 3, 3), padding=((2, 2), (3, 3)))
    _check((1, 1, 3, 2), (1, 1, 3, 5), padding=((2, 2), (4, 4)))


def test_declines_complex_with_a_reason():
    spec = make_spec((1, 1, 4, 4), (1, 1, 3, 3), dtype=np.complex128)
    assert "complex128" in numba_cpu.supports(spec)
    with pytest.raises(ValueError, match="numba_cpu.*complex128"):
        fastconv.conv2d(np.ones((1, 1, 4, 4), complex), np.ones((1, 1, 3, 3)), backend="numba_cpu")


@pytest.fixture
def requested_threads(monkeypatch):
    """The thread counts handed to ``numba.set_num_threads`` during the test (numba's pool full first)."""
    numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    requested = []
    set_num_threads = numba.set_num_threads
    monkeypatch.setattr(numba, "set_num_threads", lambda count: (requested.append(count), set_num_threads(count)))
    return requested


def test_thread_count_follows_config_and_the_callers_count_is_restored(requested_threads, monkeypatch):
    monkeypatch.setattr(config, "threads", 1)
    _check((1, 8, 40, 40), (8, 8, 3, 3), padding=1)  # large enough to run in parallel
    if numba.config.NUMBA_NUM_THREADS > 1:
        assert requested_threads[0] == 1  # the kernel ran on one thread ...
    assert numba.get_num_threads() == numba.config.NUMBA_NUM_THREADS  # ... and the caller's count is back
    requested_threads.clear()
    monkeypatch.setattr(config, "threads", 10**6)  # capped at numba's pool size: nothing to change
    _check((1, 8, 40, 40), (8, 8, 3, 3), padding=1)
    assert requested_threads == [] and numba.get_num_threads() == numba.config.NUMBA_NUM_THREADS


def test_importing_fastconv_compiles_nothing():
    code = (
        "import fastconv\n"
        "from fastconv.backends import im2col, numba_cpu\n"
        "for cached in (numba_cpu._launch, numba_cpu._block_kernel, numba_cpu._plane_kernel, numba_cpu._input_packer):\n"
        "    assert cached.cache_info().currsize == 0, cached\n"
        "for kernel in (im2col._im2col_images, im2col._im2col_pixels, im2col._inside):\n"
        "    assert not kernel.signatures, kernel\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("backend", ["numba_cpu", "im2col"])
def test_empty_batch_gives_an_empty_result(backend):
    out = fastconv.conv2d(np.ones((0, 2, 5, 5)), np.ones((4, 2, 3, 3)), padding=1, backend=backend)
    assert out.shape == (0, 4, 5, 5)
    out = fastconv.conv2d(np.ones((0, 2, 5, 5)), np.ones((2, 1, 3, 3)), groups=2, backend=backend)
    assert out.shape == (0, 2, 3, 3)


def test_small_calls_run_on_the_calling_thread_and_large_ones_in_parallel(requested_threads, monkeypatch):
    monkeypatch.setattr(config, "threads", 1)
    small = _check((1, 1, 8, 8), (1, 1, 3, 3))
    assert small.flops < 2 * numba_cpu.SERIAL_MACS and requested_threads == []  # no parallel region entered


@pytest.mark.parametrize("threads", [1, 2])
def test_chunks_past_the_last_block_do_nothing(threads):
    """Tasks split a tile's channel blocks into chunks; when the chunks do not divide the blocks
    evenly the last ones start past the end (e.g. 9 blocks in 8 chunks of 2) and must do no work.
    Small outputs with many filters reach them (the weight gradient's swapped-axes problems do)."""
    rng = np.random.default_rng(0)
    previous = config.threads
    config.set_threads(threads)
    try:
        for filters in (43, 50, 57, 131):
            x, w = rng.standard_normal((1, 2, 3, 3)), rng.standard_normal((filters, 2, 3, 3))
            got = fastconv.conv2d(x, w, backend="numba_cpu")
            np.testing.assert_allclose(got, np.einsum("nchw,kchw->nk", x, w)[..., None, None], rtol=1e-10)
    finally:
        config.set_threads(previous)
