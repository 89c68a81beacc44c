"""convolve2d/correlate2d against scipy.signal on every mode x boundary pair."""

import warnings

import numpy as np
import pytest
import scipy.signal
from hypothesis import given, settings, strategies as st

import fastconv
from strategies import _layout

MODES = ("full", "same", "valid")
BOUNDARIES = ("fill", "wrap", "symm")
KERNEL_SIDES = (1, 2, 3, 4, 6, 9)
DTYPES = (np.float64, np.float32, np.complex128, np.complex64, np.int16, np.uint8, np.int64)


def _scipy(function, *args, **kwargs):
    """scipy's result, or the ValueError it raises."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # scipy warns about its own complex fillvalue casts
            return getattr(scipy.signal, function)(*args, **kwargs)
    except ValueError as error:
        return error


def _check_same_as_scipy(function, in1, in2, **kwargs):
    expected = _scipy(function, in1, in2, **kwargs)
    if isinstance(expected, ValueError):
        with pytest.raises(ValueError):
            getattr(fastconv, function)(in1, in2, **kwargs)
        return
    out = getattr(fastconv, function)(in1, in2, **kwargs)
    assert out.shape == expected.shape
    assert out.dtype == expected.dtype
    if out.dtype.kind in "iu":
        np.testing.assert_array_equal(out, expected)
    else:
        # relative to the sum of absolute products, so that results cancelling to ~0 compare fairly
        magnitude = dict(kwargs, fillvalue=abs(complex(np.asarray(kwargs.get("fillvalue", 0)).item())))
        scale = np.abs(_scipy(function, np.abs(in1).astype(float), np.abs(in2).astype(float), **magnitude)).max()
        tolerance = 1e-10 if np.finfo(out.dtype).bits >= 64 else 1e-5
        assert np.abs(out - expected).max() <= tolerance * scale


@st.composite
def signal_problems(draw):
    dtype1, dtype2 = draw(st.sampled_from(DTYPES)), draw(st.sampled_from(DTYPES))
    shape1 = (draw(st.integers(1, 7)), draw(st.integers(1, 7)))
    # often larger than in1 (wraps several times); odd and even sizes from a small set, since every
    # new kernel shape is a kernel for numba to compile (seconds) and repeated draws reuse them
    shape2 = (draw(st.sampled_from(KERNEL_SIDES)), draw(st.sampled_from(KERNEL_SIDES)))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))

    def sample(shape, dtype):
        values = rng.standard_normal(shape) * 4
        if np.dtype(dtype).kind == "c":
            values = values + 1j * rng.standard_normal(shape)
        return _layout(draw, values.astype(dtype))

    fillvalue = draw(st.sampled_from([0, 1, -2.5, 3]))
    return sample(shape1, dtype1), sample(shape2, dtype2), fillvalue


# half the profile's examples for each of the 18 function x mode x boundary pairs (360 in all in
# the ci profile): the draws of one pair cover the dtypes, shapes and layouts again
@pytest.mark.parametrize("function", ["convolve2d", "correlate2d"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("boundary", BOUNDARIES)
@settings(max_examples=max(1, settings().max_examples // 2))
@given(problem=signal_problems())
def test_matches_scipy(function, mode, boundary, problem):
    in1, in2, fillvalue = problem
    before = in1.copy(), in2.copy()
    _check_same_as_scipy(function, in1, in2, mode=mode, boundary=boundary, fillvalue=fillvalue)
    np.testing.assert_array_equal(in1, before[0])
    np.testing.assert_array_equal(in2, before[1])


@pytest.mark.parametrize("function", ["convolve2d", "correlate2d"])
@pytest.mark.parametrize("shapes", [((2, 3), (5, 6)), ((5, 6), (2, 3)), ((3, 3), (3, 3)), ((2, 6), (5, 3)),
                                    ((4, 1), (1, 4))])
def test_valid_mode_swaps_or_raises_as_scipy(function, shapes):
    rng = np.random.default_rng(0)
    in1 = rng.standard_normal(shapes[0]) + 1j * rng.standard_normal(shapes[0])
    in2 = rng.standard_normal(shapes[1]) + 1j * rng.standard_normal(shapes[1])
    _check_same_as_scipy(function, in1, in2, mode="valid")
    if shapes == ((2, 6), (5, 3)):
        with pytest.raises(ValueError, match="For 'valid' mode, one must be at least as large as the other"):
            getattr(fastconv, function)(in1, in2, mode="valid")


def test_integer_arithmetic_wraps_like_scipy():
    in1, in2 = np.full((3, 3), 100, dtype=np.int8), np.full((2, 2), 2, dtype=np.int8)
    _check_same_as_scipy("convolve2d", in1, in2)
    big = np.full((2, 2), 2**62, dtype=np.int64)
    _check_same_as_scipy("correlate2d", big, big, boundary="wrap")


@pytest.mark.parametrize("dtype", [np.int8, np.uint8, np.int32, np.float32, np.float64, np.complex64,
                                   np.complex128])
@pytest.mark.parametrize("fillvalue", [127, 128, -1, 255, 256, 1.5, -1.5, 1e10, np.inf, np.nan, 1e40, 1 + 0j,
                                       0.5j, np.float32(2), np.int64(300), True, np.array([2.0]), np.array([2]), np.array([2j]),
                                       np.complex64(1j), np.float64(np.inf), [2.0], [1, 2], "a"])
def test_fillvalue_is_cast_as_scipy_casts_it(dtype, fillvalue):
    in1, in2 = np.zeros((1, 1), dtype=dtype), np.ones((1, 2), dtype=dtype)
    expected = _scipy("convolve2d", in1, in2, fillvalue=fillvalue)
    if isinstance(expected, ValueError):
        with pytest.raises(ValueError):
            fastconv.convolve2d(in1, in2, fillvalue=fillvalue)
    else:
        out = fastconv.convolve2d(in1, in2, fillvalue=fillvalue)
        np.testing.assert_array_equal(out, expected)
        assert out.dtype == expected.dtype


@pytest.mark.parametrize("dtypes", [(np.bool_, np.bool_), (np.float16, np.float16), (object, np.float64)])
def test_dtypes_scipy_refuses_are_refused(dtypes):
    in1, in2 = np.ones((3, 3), dtype=dtypes[0]), np.ones((2, 2), dtype=dtypes[1])
    assert isinstance(_scipy("convolve2d", in1, in2), ValueError)
    with pytest.raises(ValueError, match="convolve2d not available for this type.*accepted"):
        fastconv.convolve2d(in1, in2)


@pytest.mark.parametrize("dtype", [np.longdouble, np.clongdouble])
def test_longdouble_keeps_its_precision_as_scipy(dtype):
    rng = np.random.default_rng(3)
    in1, in2 = rng.standard_normal((5, 4)).astype(dtype), rng.standard_normal((3, 2)).astype(dtype)
    expected = scipy.signal.convolve2d(in1, in2, mode="same", boundary="symm")
    out = fastconv.convolve2d(in1, in2, mode="same", boundary="symm")
    assert out.dtype == expected.dtype
    assert np.abs(out - expected).max() <= 1e-17 * np.abs(expected).max()  # below float64 rounding


def test_float16_with_float32_computes_in_float32_as_scipy():
    _check_same_as_scipy("correlate2d", np.ones((4, 4), np.float16), np.ones((2, 3), np.float32), mode="same")


@pytest.mark.parametrize("kwargs, pattern", [
    (dict(mode="FULL"), r"mode must be one of \('full', 'same', 'valid'\), got 'FULL'"),
    (dict(boundary="reflect"), r"boundary must be one of 'fill', 'wrap' .*got 'reflect'"),
    (dict(in1=np.ones(3)), r"convolve2d inputs must both be 2-D arrays"),
    (dict(in1=np.ones((0, 3))), r"inputs must not be empty"),
    (dict(fillvalue=[1, 2]), r"`fillvalue` must be scalar or an array with one element"),
    (dict(backend="cudnn"), r"Unknown backend 'cudnn'"),
    # integers never reach a backend, but a name that is no backend is still a mistake
    (dict(in1=np.ones((4, 4), int), in2=np.ones((2, 2), int), backend="cudnn"), r"Unknown backend 'cudnn'"),
])
def test_bad_input_raises_with_a_message_that_names_it(kwargs, pattern):
    args = dict(in1=np.ones((4, 4)), in2=np.ones((2, 2)))
    args.update(kwargs)
    with pytest.raises(ValueError, match=pattern):
        fastconv.convolve2d(args.pop("in1"), args.pop("in2"), **args)


def test_scipy_boundary_aliases_are_accepted():
    in1, in2 = np.arange(12.0).reshape(3, 4), np.arange(6.0).reshape(2, 3)
    for alias in ("pad", "circular", "symmetric"):
        _check_same_as_scipy("correlate2d", in1, in2, mode="same", boundary=alias, fillvalue=2)


def test_backend_is_passed_to_conv2d():
    in1, in2 = np.arange(12.0).reshape(3, 4), np.ones((2, 2))
    np.testing.assert_array_equal(fastconv.convolve2d(in1, in2, backend="naive"), fastconv.convolve2d(in1, in2))
