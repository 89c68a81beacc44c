"""Every backend against the float64 reference on hypothesis-drawn problems.

A new backend is covered by registering it: this file runs the same property test for every
registered backend that is available here (the check itself, and which specs each backend may
decline, are in ``tests/conformance.py``).
"""

import numpy as np
import pytest
from hypothesis import given

import fastconv
from fastconv import backends
from fastconv.geometry import make_spec
from conformance import check_against_reference, skip_unavailable
from reference import reference_conv2d, relative_error
from strategies import COMPLEX_DTYPES, REAL_DTYPES, conv_problems



@pytest.mark.parametrize("name", backends.backend_names())
@given(problem=conv_problems(dtypes=REAL_DTYPES))
def test_backend_matches_reference(name, problem):
    skip_unavailable(name)
    check_against_reference(name, problem)


@pytest.mark.parametrize("name", backends.backend_names())
@given(problem=conv_problems(dtypes=COMPLEX_DTYPES, max_size=6))
def test_backend_matches_reference_complex(name, problem):
    skip_unavailable(name)
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
