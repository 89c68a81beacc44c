"""The check every backend passes: its result against the float64 reference, or a decline it may make.

``MAY_DECLINE`` says which specs each backend is allowed to decline; declining anything else
fails, so a backend cannot pass by refusing work. Shared by the tests of conv2d (every registered
backend) and of single backends.
"""

import numpy as np
import pytest

import fastconv
from fastconv import backends
from fastconv.geometry import make_spec, resolve_dtypes
from reference import reference_conv2d, relative_error

# Relative error (max |err| / max |ref|) allowed per compute dtype, and per backend where its
# algorithm rounds differently (say why next to the entry).
TOLERANCE = {np.dtype(np.float64): 1e-10, np.dtype(np.complex128): 1e-10,
             np.dtype(np.float32): 1e-5, np.dtype(np.complex64): 1e-5}
BACKEND_TOLERANCE = {  # {("backend", np.dtype): tolerance}
    # FFT rounding error is spread over every output relative to the largest value involved, and
    # grows with log(transform size): ~1e-6 of max |out| in float32, beyond the direct 1e-5 bound
    # on unlucky draws where the largest output is small next to the input's magnitude.
    ("fft", np.dtype(np.float32)): 1e-4, ("fft", np.dtype(np.complex64)): 1e-4,
    # F(4x4,3x3) evaluates at the points 0, ±1, ±2, ∞: its transforms scale values by up to ~100
    # before cancelling, so float32 rounding reaches ~1e-6-1e-5 relative (measured, docs/performance/winograd.md)
    ("winograd", np.dtype(np.float32)): 1e-4,
}

# Which specs a backend may decline; any other decline is a test failure.
MAY_DECLINE = {
    "naive": lambda spec: False,
    "im2col": lambda spec: False,
    "numba_cpu": lambda spec: spec.dtype.kind == "c",  # direct kernels are compiled for real dtypes only
    "fft": lambda spec: False,
    # separable declines 2-D kernels whose weight is not low-rank enough
    # (supports_weight): random weights are full-rank, so tests/backends/test_separable.py draws low-rank ones
    "separable": lambda spec: min(spec.kernel_height, spec.kernel_width) > 1,
    # minimal filtering exists for 3x3 kernels at stride 1; depthwise does not pay; real only
    "winograd": lambda spec: (spec.dtype.kind == "c" or (spec.kernel_height, spec.kernel_width) != (3, 3)
                              or spec.stride != (1, 1) or spec.is_depthwise),
}


def _may_decline(name, spec):
    return MAY_DECLINE.get(name, lambda spec: spec.dtype.kind == "c")(spec)


def skip_unavailable(name):
    reason = backends.unavailable_reason(name)
    if reason is not None:
        pytest.skip(f"backend {name} unavailable: {reason}")


def check_against_reference(name, problem):
    x_before, w_before = problem.x.copy(), problem.weight.copy()
    bias_before = None if problem.bias is None else problem.bias.copy()
    compute, _ = resolve_dtypes(problem.x.dtype, problem.weight.dtype)
    spec = make_spec(problem.x.shape, problem.weight.shape, dtype=compute, **problem.kwargs).zero_padded()
    reason = backends.get(name).supports(spec)
    weight_hook = getattr(backends.get(name), "supports_weight", None)  # optional, see fastconv.backends
    if reason is None and weight_hook is not None:
        reason = weight_hook(np.ascontiguousarray(problem.weight, dtype=compute), spec)
    if reason is not None:
        assert _may_decline(name, spec), f"{name} declined a spec it must support: {reason}"
        with pytest.raises(ValueError, match=name):
            fastconv.conv2d(problem.x, problem.weight, problem.bias, backend=name, **problem.kwargs)
        return  # a checked decline (not assume(False): backends that serve few specs, e.g. winograd's
        # 3x3 stride 1, would have hypothesis filter out nearly every example and fail its health check)
    out = fastconv.conv2d(problem.x, problem.weight, problem.bias, backend=name, **problem.kwargs)
    expected = reference_conv2d(problem.x, problem.weight, problem.bias, padding=problem.explicit_padding,
                                **{k: v for k, v in problem.kwargs.items() if k != "padding"})
    assert out.shape == expected.shape
    assert out.dtype == problem.x.dtype
    tolerance = BACKEND_TOLERANCE.get((name, out.dtype), TOLERANCE[out.dtype])
    assert relative_error(out, expected) <= tolerance
    np.testing.assert_array_equal(problem.x, x_before)  # inputs untouched
    np.testing.assert_array_equal(problem.weight, w_before)
    if bias_before is not None:
        np.testing.assert_array_equal(problem.bias, bias_before)
