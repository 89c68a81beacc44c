"""Every backend that cuts its work into tiles or chunks, with the pieces drawn down to a few KiB.

The backends bound their scratch memory by ``fastconv.config.workspace_bytes``: im2col's column
tiles, fft's filter-spectrum chunks, overlap-save tiles and tile chunks, winograd's blocks and
chunks of tiles, separable's strips (its ring of filtered rows is bounded by the workspace too).
Each of those splits has a remainder case (the last, shorter piece; a piece that
does not divide a group or an image), and with the default 64 MiB small test problems never reach
them. Here the workspace is drawn from 1 KiB to 1 MiB (log-uniform), together with each backend's own knobs
(fft's smallest tile and its dilation split, winograd's tile size and schedule), over grouped,
depthwise, strided and dilated geometry, and every result is compared with the float64 reference.
"""

import contextlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fastconv
from fastconv import backends, config
from fastconv.geometry import make_spec, pad_input, resolve_dtypes
from reference import reference_conv2d, relative_error
from strategies import COMPLEX_DTYPES, REAL_DTYPES, conv_problems

TILING_BACKENDS = ("im2col", "fft", "separable", "winograd")
TOLERANCE = {np.dtype(np.float32): 1e-4, np.dtype(np.float64): 1e-10,
             np.dtype(np.complex64): 1e-4, np.dtype(np.complex128): 1e-10}


@contextlib.contextmanager
def workspace(size):
    previous = config.workspace_bytes
    config.set_workspace_bytes(size)
    try:
        yield
    finally:
        config.set_workspace_bytes(previous)


def _available(name):
    return backends.unavailable_reason(name) is None


BACKENDS = [pytest.param(name, marks=pytest.mark.skipif(not _available(name), reason=f"{name} unavailable"))
            for name in TILING_BACKENDS]


def _rank_one(rng, shape, dtype):
    out_channels, channels, kernel_h, kernel_w = shape
    cols, rows = rng.standard_normal((out_channels, channels, kernel_h)), rng.standard_normal(
        (out_channels, channels, kernel_w))
    return (cols[..., :, None] * rows[..., None, :]).astype(dtype)


def _knobs(draw, backend, patch):
    """Draw and apply the backend's own splitting knobs; return the keyword arguments of run()."""
    if backend == "fft":
        from fastconv.backends import fft

        patch.setattr(fft, "_SMALLEST_TILE", draw(st.sampled_from([4, 8, 16, 64]), label="smallest tile"))
        if draw(st.booleans(), label="split dilation"):
            patch.setattr(fft, "_SPLIT_SPECTRUM_BYTES", 0)
        if draw(st.booleans(), label="stream planes"):  # one input channel per group: tile by tile per thread
            patch.setattr(fft, "_STREAM_ABOVE_BYTES", 0)
        fft.clear_caches()  # spectra cached under another grid choice must not hide a chunking path
    if backend == "winograd":
        from fastconv.backends import winograd

        if draw(st.booleans(), label="staged schedule"):
            patch.setattr(winograd, "_FUSED_FILTER_BYTES", 0)
        return {"tile": draw(st.sampled_from([2, 4]), label="winograd tile")}
    return {}


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=100)
@given(data=st.data())
def test_tiny_workspaces_give_the_reference_result(backend, data):
    dtypes = REAL_DTYPES + COMPLEX_DTYPES if backend in ("im2col", "fft") else REAL_DTYPES
    geometry = dict(kernels=[(3, 3)], strides=[(1, 1)]) if backend == "winograd" else {}
    problem = data.draw(conv_problems(dtypes=dtypes, max_size=20, max_channels=4, **geometry))
    compute, _ = resolve_dtypes(problem.x.dtype, problem.weight.dtype)
    module = backends.get(backend)
    if module.supports(make_spec(problem.x.shape, problem.weight.shape, dtype=compute, **problem.kwargs)):
        return  # winograd's depthwise draws; the declines themselves are tested in test_conv2d.py
    x = np.ascontiguousarray(problem.x, dtype=compute)
    weight = np.ascontiguousarray(problem.weight, dtype=compute)
    if backend == "separable":
        kernel_h, kernel_w = weight.shape[2:]
        if min(kernel_h, kernel_w) > 1 and kernel_h + kernel_w >= kernel_h * kernel_w:
            return  # 2x2: rank 1 does not pay off, declined
        weight = _rank_one(np.random.default_rng(0), weight.shape, compute)
    bias = None if problem.bias is None else np.ascontiguousarray(problem.bias, dtype=compute)
    run_spec = make_spec(problem.x.shape, weight.shape, dtype=compute, **problem.kwargs)
    if run_spec.padding_mode != "zeros":  # as conv2d does: the backends see zero padding only
        x, run_spec = pad_input(x, run_spec), run_spec.zero_padded()
    size = data.draw(st.integers(10, 19).flatmap(lambda bits: st.integers(1 << bits, (2 << bits) - 1)),
                     label="workspace bytes")  # 1 KiB to 1 MiB, log-uniform
    previous = config.workspace_bytes
    with pytest.MonkeyPatch.context() as patch, workspace(size):
        out = module.run(x, weight, bias, run_spec, **_knobs(data.draw, backend, patch))
    assert config.workspace_bytes == previous
    expected = reference_conv2d(problem.x, weight, problem.bias, padding=problem.explicit_padding,
                                **{k: v for k, v in problem.kwargs.items() if k != "padding"})
    assert out.shape == expected.shape and out.dtype == compute
    assert relative_error(out, expected) <= TOLERANCE[out.dtype]


@settings(max_examples=60)
@given(groups=st.integers(1, 4), outs_per_group=st.integers(1, 5), channels_per_group=st.integers(1, 4),
       kernel=st.tuples(st.integers(1, 4), st.integers(1, 4)), dilation=st.tuples(st.integers(1, 2), st.integers(1, 2)),
       grid=st.tuples(st.sampled_from([8, 10, 16]), st.sampled_from([8, 12, 16])), dtype=st.sampled_from(REAL_DTYPES),
       filters_per_chunk=st.integers(1, 8), spare=st.floats(0, 0.99))
def test_fft_filter_spectra_are_right_for_every_chunk_of_filters(groups, outs_per_group, channels_per_group, kernel,
                                                                dilation, grid, dtype, filters_per_chunk, spare):
    """The filters are transformed in workspace-sized chunks that never straddle a group; every
    (k, c) spectrum must equal numpy's FFT of that kernel, whatever the chunk (which need not
    divide the filters per group: the first filters of later groups were once skipped)."""
    from fastconv.backends import fft

    rng = np.random.default_rng(0)
    out_channels, channels = groups * outs_per_group, groups * channels_per_group
    weight = rng.standard_normal((out_channels, channels_per_group) + kernel).astype(dtype)
    extent = [d * (k - 1) + 1 for k, d in zip(kernel, dilation)]
    spec = make_spec((1, channels, max(grid[0], extent[0]), max(grid[1], extent[1])), weight.shape,
                     dilation=dilation, groups=groups, dtype=dtype)
    per_filter_bytes = 3 * grid[0] * grid[1] * np.dtype(dtype).itemsize
    fft.clear_caches()
    with workspace(int((filters_per_chunk + spare) * per_filter_bytes)):
        spectrum = fft._filter_spectrum(weight, spec, grid)
    dilated = np.zeros((out_channels, channels_per_group) + grid)
    dilated[:, :, :extent[0]:dilation[0], :extent[1]:dilation[1]] = weight
    expected = np.conj(np.fft.rfft2(dilated)) / (grid[0] * grid[1])  # (K, Cg, bins_h, bins_w)
    expected = expected.reshape(out_channels, channels_per_group, -1)
    if channels_per_group == 1:
        actual = spectrum.reshape(out_channels, 1, -1)
    else:  # (groups, bins, K/g, C/g) -> (K, C/g, bins)
        actual = spectrum.transpose(0, 2, 3, 1).reshape(out_channels, channels_per_group, -1)
    scale = np.abs(expected).max()
    assert np.abs(actual - expected).max() <= (1e-5 if dtype == np.float32 else 1e-12) * scale
