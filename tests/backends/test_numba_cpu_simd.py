"""The explicit-SIMD direct kernels against the float64 reference: hypothesis-drawn problems, the
plane kernel's geometries (depthwise, multipliers, strides, dilation, tiny and banded planes), the
register-block kernel's edges (channel tails, groups, 1x1 images, kernels as large as the padded
input, huge strides), non-finite values, the weight cache, threads, and the same checks compiled
for an AVX2-only and for a generic x86-64 CPU."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given

from fastconv import config
from fastconv.backends import simd
from fastconv.backends import numba_cpu
from fastconv.geometry import make_spec, pad_input
from reference import reference_conv2d, relative_error
from strategies import REAL_DTYPES, conv_problems


def _run(x, weight, bias=None, **kwargs):
    """Call the backend as the front end does: contiguous, other padding modes materialised."""
    spec = make_spec(x.shape, weight.shape, dtype=x.dtype, **kwargs)
    x = np.ascontiguousarray(x)
    if spec.padding_mode != "zeros":
        x, spec = pad_input(x, spec), spec.zero_padded()
    return numba_cpu.run(x, np.ascontiguousarray(weight), bias, spec), spec


def _check(x_shape, w_shape, dtype=np.float32, bias=True, seed=0, **kwargs):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(x_shape).astype(dtype)
    w = rng.standard_normal(w_shape).astype(dtype)
    b = rng.standard_normal(w_shape[0]).astype(dtype) if bias else None
    out, spec = _run(x, w, b, **kwargs)
    expected = reference_conv2d(x, w, b, stride=spec.stride, padding=spec.padding, dilation=spec.dilation,
                                groups=spec.groups)
    assert out.dtype == dtype and out.shape == expected.shape
    assert relative_error(out, expected) <= (2e-6 if dtype == np.float32 else 1e-12)
    return spec


@given(problem=conv_problems(dtypes=REAL_DTYPES))
def test_matches_the_reference(problem):
    x, w = problem.x.copy(), problem.weight.copy()
    out, spec = _run(problem.x, problem.weight, problem.bias, **problem.kwargs)
    expected = reference_conv2d(problem.x, problem.weight, problem.bias, stride=spec.stride,
                                padding=problem.explicit_padding, dilation=spec.dilation, groups=spec.groups,
                                padding_mode=problem.kwargs["padding_mode"])
    assert out.shape == expected.shape and out.dtype == problem.x.dtype
    assert relative_error(out, expected) <= (2e-6 if problem.x.dtype == np.float32 else 1e-12)
    np.testing.assert_array_equal(problem.x, x)  # inputs untouched
    np.testing.assert_array_equal(problem.weight, w)


# ---------------------------------------------------------------------------------------------
# the plane kernel (one input channel per group)


@pytest.mark.parametrize("kernel, stride, dilation, dtype", [
    (3, 1, 1, np.float32), (3, 2, 1, np.float64), (5, 1, 1, np.float64), (5, 2, 1, np.float32),
    (7, 1, 2, np.float32), (3, (2, 1), (1, 3), np.float32), ((1, 5), 1, 1, np.float64),
    ((5, 3), (1, 2), 1, np.float32)])
def test_plane_kernel_geometries(dtype, kernel, stride, dilation):
    # two shapes: odd sizes with every border, and asymmetric padding (tiny images: test_edge_geometries)
    for x_shape, padding in [((2, 3, 37, 45), "same"), ((1, 2, 19, 30), ((0, 3), (4, 1)))]:
        spec = make_spec(x_shape, (6, 1) + ((kernel,) * 2 if isinstance(kernel, int) else kernel), groups=x_shape[1],
                         stride=stride, dilation=dilation, padding=padding)
        assert numba_cpu.uses_plane_kernel(spec)
        _check(x_shape, spec.weight_shape, dtype, groups=x_shape[1], stride=stride, dilation=dilation,
               padding=padding)


@pytest.mark.parametrize("multiplier", [1, 2, 3])
def test_plane_kernel_channel_multiplier(multiplier):
    spec = _check((2, 5, 11, 19), (5 * multiplier, 1, 3, 3), groups=5, padding=1, bias=multiplier != 2)
    assert numba_cpu.uses_plane_kernel(spec)


def test_plane_kernel_splits_few_planes_into_bands():
    spec = _check((1, 1, 301, 70), (1, 1, 5, 5), padding=2)
    assert numba_cpu._plane_plan(spec, config.threads).bands > 1


@pytest.mark.parametrize("x_shape, w_shape, kwargs", [
    ((1, 1, 64, 2048 + 3), (1, 1, 3, 3), dict(padding=1, dtype=np.float64)),
    ((1, 2, 37, 700), (2, 1, 5, 5), dict(groups=2, stride=2, padding=(2, 1))),
    ((1, 1, 45, 1030), (1, 1, 11, 11), dict(padding=5)),
])
def test_plane_kernel_copies_strips_of_wide_images(x_shape, w_shape, kwargs):
    """Rows of 2 KiB or more are read from a padded copy of each column strip."""
    spec = _check(x_shape, w_shape, **kwargs)
    layout = numba_cpu._plane_plan(spec, config.threads)
    assert layout.strip_pitch > 0 and layout.column_tiles > layout.strip_tiles


def test_plane_kernel_up_to_15x15_where_the_registers_hold_it():
    """Past 11×11 the plane kernel needs a kernel column and a block of accumulators in registers:
    AVX-512's 32 hold a 15×15 kernel's, AVX2's 16 do not (it runs dense there); stride 2 in the
    columns needs two kernel columns."""
    # (one unrolled geometry: compiling it takes about 15 s; the tiny image makes every block an edge one)
    for x_shape, w_shape, kwargs in [((2, 2, 40, 70), (2, 1, 15, 15), dict(groups=2, padding=((0, 9), (14, 2)))),
                                     ((1, 1, 9, 5), (1, 1, 15, 15), dict(padding=7)),
                                     ((1, 1, 30, 50), (1, 1, 15, 15), dict(padding=7, stride=(1, 2)))]:
        spec = _check(x_shape, w_shape, **kwargs)
        fits = numba_cpu._plane_registers(spec) >= 2
        assert numba_cpu.uses_plane_kernel(spec) == fits
        assert fits == (simd.VECTOR_REGISTERS >= 32 and spec.stride[1] == 1)


def test_depthwise_that_the_plane_kernel_declines_runs_as_dense():
    for w_shape, kwargs in [((4, 1, 17, 17), dict(groups=4, padding=8)), ((16, 1, 3, 3), dict(groups=4, padding=1)),
                            ((4, 1, 3, 3), dict(groups=4, stride=3))]:
        spec = make_spec((1, 4, 20, 21), w_shape, **kwargs)
        assert not numba_cpu.uses_plane_kernel(spec)
        _check((1, 4, 20, 21), w_shape, **kwargs)


# ---------------------------------------------------------------------------------------------
# the register-block kernel


@pytest.mark.parametrize("dtype", REAL_DTYPES)
@pytest.mark.parametrize("out_channels", [1, 3, 4, 5, 8, 13])
def test_every_channel_tail(dtype, out_channels):
    _check((2, 3, 10, 13), (out_channels, 3, 3, 3), dtype, padding=1)


@pytest.mark.parametrize("groups, per_group", [(4, 8), (8, 2), (3, 5)])
def test_groups(groups, per_group):
    _check((2, groups * per_group, 12, 9), (groups * per_group, per_group, 3, 3), groups=groups, padding=1)


@pytest.mark.parametrize("x_shape, w_shape, kwargs", [
    ((1, 2, 1, 1), (3, 2, 1, 1), {}),                                   # 1x1 image
    ((1, 2, 1, 1), (2, 1, 3, 3), dict(groups=2, padding=4)),            # 1x1 image on the plane kernel
    ((1, 2, 1, 1), (3, 2, 3, 3), dict(padding=1)),                      # 1x1 image, padding all round
    ((1, 3, 6, 7), (4, 3, 8, 9), dict(padding=1)),                      # kernel as large as the padded input
    ((2, 2, 5, 5), (3, 2, 2, 2), dict(stride=1000, padding=2)),         # huge stride: one output pixel
    ((1, 2, 4, 4), (3, 2, 2, 2), dict(dilation=(1, 40), padding=(0, 20))),  # dilation beyond the image
    ((3, 2, 7, 5), (3, 2, 3, 3), dict(stride=(3, 2), dilation=(2, 1), padding=((0, 2), (3, 1)))),
    ((1, 3, 30, 31), (5, 3, 7, 7), dict(stride=2, padding=3)),          # the ResNet stem's geometry
    ((2, 8, 3, 40), (16, 8, 1, 1), dict(stride=(1, 2))),                # 1x1, stride 2 along the width
])
@pytest.mark.parametrize("dtype", REAL_DTYPES)
def test_edge_geometries(x_shape, w_shape, kwargs, dtype):
    _check(x_shape, w_shape, dtype, **kwargs)


@pytest.mark.parametrize("copies", [False, True])
@pytest.mark.parametrize("kwargs", [dict(padding=12, dilation=12), dict(stride=2, padding=1),
                                    dict(stride=(1, 3), dilation=(2, 2), padding=((0, 1), (5, 2)))])
def test_both_layouts_with_channel_slices(monkeypatch, copies, kwargs):
    """Phase planes and one copy per kernel column, each with its reduction split into channel
    slices (partial sums kept in between)."""
    spec = make_spec((2, 40, 30, 27), (6, 40, 3, 3), dtype=np.float32, **kwargs)
    layout = numba_cpu._layout(spec, copies)
    assert layout.channel_slice < spec.in_channels_per_group
    monkeypatch.setattr(numba_cpu, "plan", lambda spec: layout)
    _check((2, 40, 30, 27), (6, 40, 3, 3), **kwargs)


def test_empty_batch():
    spec = make_spec((0, 3, 5, 5), (4, 3, 3, 3), dtype=np.float32)
    assert numba_cpu.run(np.zeros((0, 3, 5, 5), np.float32), np.zeros((4, 3, 3, 3), np.float32), None,
                            spec).shape == (0, 4, 3, 3)


def test_float64_keeps_float64_precision():
    _check((1, 16, 20, 20), (16, 16, 3, 3), np.float64, padding=1)
    _check((1, 16, 20, 20), (16, 1, 3, 3), np.float64, padding=1, groups=16)


# ---------------------------------------------------------------------------------------------
# non-finite values, caches, threads


@pytest.mark.parametrize("w_shape, groups", [((4, 3, 3, 3), 1), ((3, 1, 3, 3), 3)])
def test_padding_meets_infinite_weights_like_zero_padding(w_shape, groups):
    """0 · inf = NaN where a window covers the padding, as with torch's zero padding; a NaN pixel
    spreads to exactly the windows that contain it."""
    x = np.ones((1, 3, 6, 7), np.float32)
    x[0, 1, 3, 4] = np.nan
    w = np.ones(w_shape, np.float32)
    w[:, :, 0, 0] = np.inf
    out, spec = _run(x, w, None, padding=1, groups=groups)
    expected = reference_conv2d(x, w, padding=spec.padding, groups=groups)
    np.testing.assert_array_equal(np.isnan(out), np.isnan(expected))
    finite = np.isfinite(expected)
    np.testing.assert_allclose(out[finite], expected[finite], rtol=1e-6)
    np.testing.assert_array_equal(np.isposinf(out), np.isposinf(expected))


def test_packed_weights_follow_in_place_updates():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, 8, 9, 9)).astype(np.float32)
    w = rng.standard_normal((8, 8, 3, 3)).astype(np.float32)
    first, spec = _run(x, w, padding=1)
    w[3, 2, 1, 1] += 5.0  # an optimiser step: the cached packing must not be served
    second, _ = _run(x, w, padding=1)
    expected = reference_conv2d(x, w, padding=spec.padding)
    assert relative_error(second, expected) <= 2e-6
    assert not np.allclose(first, second)


def test_cached_kernels_follow_the_simd_source():
    """numba's disk cache tracks a kernel's own file only: each kernel keeps the simd module's
    source hash in its closure, which numba's cache key includes."""
    for kernel in (numba_cpu._block_kernel(2, 3), numba_cpu._plane_kernel(2, 1, (3, 3, 1, 1, 1, 1)),
                   numba_cpu._input_packer(simd.SOURCE_VERSION)):
        assert simd.SOURCE_VERSION in [cell.cell_contents for cell in kernel.parallel.py_func.__closure__]


@pytest.mark.parametrize("threads", [1, 3])
def test_thread_counts_give_the_same_result(threads):
    previous = config.threads
    try:
        config.set_threads(threads)
        _check((1, 8, 17, 23), (12, 8, 3, 3), padding=1)
        _check((1, 2, 40, 33), (2, 1, 3, 3), padding=1, groups=2)
    finally:
        config.set_threads(previous)


# ---------------------------------------------------------------------------------------------
# portability: the same kernels compiled for CPUs without AVX-512

_HASWELL_FEATURES = ("+64bit,+avx,+avx2,+bmi,+bmi2,+cmov,+cx16,+f16c,+fma,+fxsr,+lzcnt,+mmx,+movbe,+pclmul,"
                     "+popcnt,+sahf,+sse,+sse2,+sse3,+sse4.1,+sse4.2,+ssse3,+xsave,-avx512f")

_PORTABILITY_CHECK = textwrap.dedent("""
    import sys
    import numpy as np
    from fastconv.backends import simd
    from test_numba_cpu_simd import _check
    assert simd.VECTOR_BYTES == int(sys.argv[1]), simd.VECTOR_BYTES
    _check((2, 6, 11, 21), (8, 3, 3, 3), np.float32, groups=2, padding=1, stride=(1, 2))
    _check((1, 4, 13, 37), (4, 1, 3, 3), np.float64, groups=4, padding=1)
    _check((1, 3, 9, 40), (3, 1, 5, 5), np.float32, groups=3, padding=2, stride=2)
    _check((1, 1, 20, 40), (1, 1, 15, 15), np.float32, padding=7)  # dense: a 15x15 column fills 16 registers
    # the separable backend's fused kernel, in the same process (one compile setup for both)
    from test_separable import check_fused
    check_fused((1, 2, 19, 45), (2, 2, 7, 5), np.float32, padding="same")
    check_fused((1, 1, 13, 30), (1, 1, 3, 5), np.float64, stride=(1, 2), padding=(1, 2))
    print("ok")
""")


@pytest.mark.parametrize("cpu, features, vector_bytes", [("haswell", _HASWELL_FEATURES, 32), ("generic", None, 16)])
def test_kernels_compiled_for_older_cpus(tmp_path, cpu, features, vector_bytes):
    """Compiled for an AVX2-only and for a baseline x86-64 CPU (fresh cache: nothing reused), with
    the separable backend's fused kernel checked in the same child process."""
    import llvmlite.binding as llvm

    if not llvm.get_process_triple().startswith("x86_64"):
        pytest.skip("x86-64 CPU models")
    environment = dict(os.environ, NUMBA_CPU_NAME=cpu, NUMBA_CACHE_DIR=str(tmp_path))
    if features is not None:
        environment["NUMBA_CPU_FEATURES"] = features
    here = Path(__file__).resolve().parent
    root = here.parents[1]
    environment["PYTHONPATH"] = os.pathsep.join([str(root), str(root / "tests"), str(here),
                                                 environment.get("PYTHONPATH", "")])
    done = subprocess.run([sys.executable, "-c", _PORTABILITY_CHECK, str(vector_bytes)], env=environment,
                          capture_output=True, text=True, timeout=600, cwd=str(here))
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-3000:]
