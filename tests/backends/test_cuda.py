"""The cuda backend from a process without the CUDA simulator: availability, kernel choice, PTX.

The kernels themselves run in ``tests/backends/cuda/`` under the simulator, which must be switched on
before numba is first imported; ``test_simulator_suite_passes`` runs that directory in a pytest
process of its own, so the single ``python3 -m pytest`` runs everything.
"""

import os
import subprocess
import sys
import types as pytypes
from pathlib import Path

import numpy as np
import pytest

import fastconv
from fastconv import backends
from fastconv.backends import cuda as cuda_backend
from fastconv.geometry import make_spec

SIMULATING = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"


def _skip_if_cuda_runs_here():
    if backends.unavailable_reason("cuda") is None:
        pytest.skip("a CUDA GPU (or the simulator) is available in this process")


def test_unavailable_without_gpu_says_how_to_simulate():
    _skip_if_cuda_runs_here()
    row = [r for r in fastconv.list_backends() if r.name == "cuda"][0]
    assert row == ("cuda", False, cuda_backend.NO_GPU_REASON)
    assert "NUMBA_ENABLE_CUDASIM=1" in row.reason
    x, w = np.ones((1, 1, 4, 4)), np.ones((1, 1, 3, 3))
    with pytest.raises(ValueError, match="backend 'cuda' is not available: no CUDA GPU found; set NUMBA_ENABLE_CUDASIM=1"):
        fastconv.conv2d(x, w, backend="cuda")
    with pytest.raises(ValueError, match="no CUDA GPU found"):
        with fastconv.use_backend("cuda"):
            pass
    assert fastconv.conv2d(x, w)[0, 0, 0, 0] == 9.0  # auto still works


class _ForeignGpuArray:
    """Stands for a CuPy array or torch CUDA tensor: only the interface that marks GPU memory."""

    shape, dtype = (1, 1, 4, 4), np.dtype(np.float32)
    __cuda_array_interface__ = {"shape": (1, 1, 4, 4), "typestr": "<f4", "data": (0, False), "version": 3}


def test_gpu_array_without_gpu_raises_instead_of_copying():
    _skip_if_cuda_runs_here()
    with pytest.raises(ValueError, match="need a GPU backend, and none is available .cuda: no CUDA GPU found"):
        fastconv.conv2d(_ForeignGpuArray(), np.ones((1, 1, 3, 3), np.float32))
    with pytest.raises(ValueError, match="need a GPU backend, and none is available"):
        fastconv.conv2d(np.ones((1, 1, 4, 4)), _ForeignGpuArray(), backend="naive")


@pytest.mark.parametrize("input_shape, weight_shape, kwargs, expected", [
    ((1, 64, 56, 56), (64, 64, 3, 3), dict(padding=1), ("tiled", "direct")),
    ((1, 8, 56, 56), (8, 1, 3, 3), dict(padding=1, groups=8), ("depthwise", "tiled", "direct")),
    ((1, 8, 56, 56), (8, 1, 3, 3), dict(stride=2, groups=8), ("depthwise", "tiled", "direct")),  # 31 rows
    ((1, 8, 56, 56), (8, 1, 7, 7), dict(stride=2, groups=8), ("direct",)),  # 15*2+7 = 37 > 36 rows
    ((1, 3, 64, 64), (4, 3, 5, 5), dict(stride=2), ("tiled", "direct")),  # 7*2+5 = 19 <= 20 rows
    ((1, 3, 64, 64), (4, 3, 7, 7), dict(stride=2), ("direct",)),  # 7*2+7 = 21 > 20 rows
    ((1, 3, 64, 64), (4, 3, 7, 7), dict(), ("tiled", "direct")),
    ((1, 3, 64, 64), (4, 3, 14, 3), dict(), ("direct",)),  # 42 taps fit, but 7 + 14 = 21 rows > 20
    ((1, 3, 64, 64), (4, 3, 7, 8), dict(), ("direct",)),  # the halo fits, but 56 taps > 49
    ((1, 3, 64, 64), (4, 3, 3, 3), dict(dilation=7), ("direct",)),  # 7 + 2*7+1 = 22 rows > 20
])
def test_kernel_choice_follows_the_halo_rule(input_shape, weight_shape, kwargs, expected):
    spec = make_spec(input_shape, weight_shape, **kwargs)
    assert cuda_backend.kernels_that_fit(spec) == expected
    plan = cuda_backend.launch_plan(spec)
    assert plan.kernel == expected[0]
    rows = cuda_backend.THREADS_DOWN * (2 if plan.kernel == "depthwise" else 1)
    tiles = -(-spec.out_height // rows) * -(-spec.out_width // cuda_backend.THREADS_ACROSS)
    assert plan.grid == (tiles, spec.groups * -(-spec.out_channels_per_group // 4), 1)
    with pytest.raises(ValueError, match="kernel must be one of"):
        cuda_backend.launch_plan(spec, "no_such_kernel")


def test_supports_declines_complex_and_oversized_grids():
    assert "complex" in cuda_backend.supports(make_spec((1, 1, 4, 4), (1, 1, 3, 3), dtype=np.complex64))
    assert cuda_backend.supports(make_spec((1, 1, 4, 4), (1, 1, 3, 3), dtype=np.float32)) is None
    too_many = make_spec((1, 1, 4, 4), (4 * 65536, 1, 1, 1))
    assert "grid limit" in cuda_backend.supports(too_many)


def _nvvm_or_skip():
    """Compile a trivial kernel to PTX, or skip naming what is missing."""
    if SIMULATING:
        pytest.skip("the CUDA simulator has no compiler; run without NUMBA_ENABLE_CUDASIM")
    from numba import cuda, types

    def trivial(a):
        a[0] = 1.0

    try:
        cuda.compile_ptx(trivial, (types.float32[::1],), cc=(8, 0))
    except Exception as error:  # NVVM or NVRTC not found: numba raises several types for that
        pytest.skip(f"no CUDA compiler (NVVM) installed: pip install 'cuda-toolkit[nvvm,nvrtc]' ({error})")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("kernel", ["tiled", "depthwise", "direct"])
def test_kernels_compile_to_ptx_for_a_real_gpu(kernel, dtype, monkeypatch):
    """What the simulator lets through (shared arrays with run-time shapes, untypable code) fails here."""
    _nvvm_or_skip()
    import numba.cuda.dispatcher
    from numba import cuda, types

    # Kernels call the device function _source_index, which numba compiles for the current GPU's
    # compute capability; there is no GPU, so name the target the PTX is compiled for.
    monkeypatch.setattr(numba.cuda.dispatcher, "get_current_device",
                        lambda: pytypes.SimpleNamespace(compute_capability=(8, 0)), raising=False)
    compute = getattr(types, dtype)
    source = cuda_backend._kernel_sources(compute)[kernel]
    host_path = (types.Array(compute, 4, "C"),) * 2 + (types.Array(compute, 1, "C"), types.Array(compute, 4, "C"))
    # the device path: any layout, inputs of another dtype cast on load, a float16 result
    other_input = types.float16 if dtype == "float32" else types.int32
    device_path = (types.Array(other_input, 4, "A"), types.Array(compute, 4, "A"),
                   types.Array(compute, 1, "A"), types.Array(types.float16, 4, "C"))
    for arrays in (host_path, device_path):
        ptx, _ = cuda.compile_ptx(source, arrays + (types.int64,) * 8, cc=(8, 0))
        assert ".target sm_80" in ptx and ".entry" in ptx
        if kernel != "direct":
            assert ".shared" in ptx  # the staged tile really lives in shared memory


def test_simulator_suite_passes():
    """Run tests/backends/cuda in its own process with NUMBA_ENABLE_CUDASIM=1 and require real passes."""
    if SIMULATING:
        pytest.skip("this process simulates already, so it collects tests/backends/cuda itself")
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(Path(__file__).parent / "cuda")],
        cwd=Path(__file__).parents[2], env=env, capture_output=True, text=True, timeout=900,
    )
    report = result.stdout[-6000:] + result.stderr[-3000:]
    assert result.returncode == 0, report  # exit 5 (nothing collected) fails here too
    assert " passed" in result.stdout.splitlines()[-1] and " failed" not in result.stdout.splitlines()[-1], report
