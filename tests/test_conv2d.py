"""Every backend against the float64 reference on hypothesis-drawn problems.

A new backend is covered by registering it: this file runs the same property test for every
registered backend that is available here. ``MAY_DECLINE`` says which specs each backend is allowed
to decline; declining anything else fails, so a backend cannot pass by refusing work.
"""

import numpy as np
import pytest
from hypothesis import given

import fastconv
from fastconv import backends
from fastconv.geometry import make_spec, resolve_dtypes
from reference import reference_conv2d, relative_error
from strategies import COMPLEX_DTYPES, REAL_DTYPES, conv_problems

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
    # before cancelling, so float32 rounding reaches ~1e-6-1e-5 relative (measured, docs/performance.md)
    ("winograd", np.dtype(np.float32)): 1e-4,
}

# Which specs a backend may decline; any other decline is a test failure.
MAY_DECLINE = {
    "naive": lambda spec: False,
    "im2col": lambda spec: False,
    "numba_cpu": lambda spec: spec.dtype.kind == "c",  # direct kernels are compiled for real dtypes only
    "fft": lambda spec: False,
    # separable declines 2-D kernels whose weight is not low-rank enough
    # (supports_weight): random weights are full-rank, so tests/test_separable.py draws low-rank ones
    "separable": lambda spec: min(spec.kernel_height, spec.kernel_width) > 1,
    # minimal filtering exists for 3x3 kernels at stride 1; depthwise does not pay; real only
    "winograd": lambda spec: (spec.dtype.kind == "c" or (spec.kernel_height, spec.kernel_width) != (3, 3)
                              or spec.stride != (1, 1) or spec.is_depthwise),
}


def _may_decline(name, spec):
    return MAY_DECLINE.get(name, lambda spec: spec.dtype.kind == "c")(spec)


def _skip_unavailable(name):
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


@pytest.mark.parametrize("name", backends.backend_names())
@given(problem=conv_problems(dtypes=REAL_DTYPES))
def test_backend_matches_reference(name, problem):
    _skip_unavailable(name)
    check_against_reference(name, problem)


@pytest.mark.parametrize("name", backends.backend_names())
@given(problem=conv_problems(dtypes=COMPLEX_DTYPES, max_size=6))
def test_backend_matches_reference_complex(name, problem):
    _skip_unavailable(name)
    probe = {dtype: backends.get(name).supports(make_spec((1, 1, 4, 4), (1, 1, 3, 3), dtype=dtype))
             for dtype in (np.float64, np.complex128)}
    if probe[np.float64] is None and probe[np.complex128] is not None:
        pytest.skip(f"backend {name} declines complex dtypes")  # else every example is filtered out
    check_against_reference(name, problem)


@given(problem=conv_problems())
def test_auto_matches_reference(problem):
    out = fastconv.conv2d(problem.x, problem.weight, problem.bias, **problem.kwargs)
    expected = reference_conv2d(problem.x, problem.weight, problem.bias, padding=problem.explicit_padding,
                                **{k: v for k, v in problem.kwargs.items() if k != "padding"})
    assert relative_error(out, expected) <= 1e-4


def test_unbatched_input_gives_unbatched_output():
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((2, 7, 6)), rng.standard_normal((3, 2, 3, 3))
    out = fastconv.conv2d(x, w, padding=1)
    assert out.shape == (3, 7, 6)
    np.testing.assert_allclose(out, fastconv.conv2d(x[None], w, padding=1)[0], rtol=1e-12)


@pytest.mark.parametrize("x_dtype, w_dtype, out_dtype", [
    (np.float32, np.float32, np.float32),
    (np.float64, np.float64, np.float64),
    (np.float32, np.float64, np.float64),
    (np.int32, np.int64, np.float64),
    (np.bool_, np.bool_, np.float64),
    (np.int16, np.float32, np.float32),
    (np.float16, np.float16, np.float16),
    (np.complex64, np.float32, np.complex64),
    (np.float64, np.complex64, np.complex128),
])
def test_dtype_rules(x_dtype, w_dtype, out_dtype):
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((1, 2, 5, 5)) * 3).astype(x_dtype)
    w = (rng.standard_normal((2, 2, 3, 3)) * 3).astype(w_dtype)
    out = fastconv.conv2d(x, w)
    assert out.dtype == out_dtype
    expected = reference_conv2d(x, w)
    tolerance = 1e-3 if out_dtype == np.float16 else 1e-5
    assert relative_error(out, expected) <= tolerance


def test_nan_and_inf_propagate():
    x = np.zeros((1, 1, 4, 4))
    x[0, 0, 0, 0] = np.nan
    x[0, 0, 3, 3] = np.inf
    out = fastconv.conv2d(x, np.ones((1, 1, 2, 2)), backend="naive")[0, 0]
    assert np.isnan(out[0, 0]) and np.isinf(out[2, 2])
    assert np.isfinite(out[0, 2]) and np.isfinite(out[2, 0])
    # zero padding contributes 0 * w, so an infinite weight turns border outputs into NaN, as in torch
    w = np.full((1, 1, 3, 3), np.inf)
    out = fastconv.conv2d(np.ones((1, 1, 3, 3)), w, padding=1, backend="naive")[0, 0]
    border = np.ones((3, 3), dtype=bool)
    border[1, 1] = False
    assert np.isnan(out[border]).all() and out[1, 1] == np.inf


def test_large_values_do_not_overflow_integer_inputs():
    x = np.full((1, 1, 3, 3), 2**40, dtype=np.int64)
    out = fastconv.conv2d(x, np.ones((1, 1, 3, 3), dtype=np.int64))
    assert out.dtype == np.float64 and out[0, 0, 0, 0] == 9 * 2.0**40
