"""max_pool2d/avg_pool2d against brute-force loops written from torch's definitions, and torch."""

import numpy as np
import pytest
from hypothesis import given, strategies as st

import fastconv
from strategies import _layout


def brute_force_output_size(size, kernel, stride, padding, dilation, ceil_mode):
    """Walk the window starts: every window inside the padded input, plus, with ceil_mode, the
    next (partial) one when the full windows leave the end of the padded input uncovered and it
    starts inside the input or its left padding (torch's rule)."""
    last_tap = dilation * (kernel - 1)
    starts = []
    start = -padding
    while start + last_tap <= size - 1 + padding:
        starts.append(start)
        start += stride
    if ceil_mode and starts and starts[-1] + last_tap < size - 1 + padding and start < size:
        starts.append(start)
    return len(starts)


def brute_force_pool(x, kind, kernel, stride, padding, dilation=(1, 1), ceil_mode=False, count_include_pad=True,
                     divisor_override=None):
    """One window at a time, in float64."""
    x = np.asarray(x, dtype=np.float64)
    batch, channels, height, width = x.shape
    out_h, out_w = (brute_force_output_size(n, k, s, p, d, ceil_mode)
                    for n, k, s, p, d in zip((height, width), kernel, stride, padding, dilation))
    out = np.empty((batch, channels, out_h, out_w))
    for i in range(out_h):
        for j in range(out_w):
            top, left = i * stride[0] - padding[0], j * stride[1] - padding[1]
            rows = [top + u * dilation[0] for u in range(kernel[0])]
            cols = [left + v * dilation[1] for v in range(kernel[1])]
            inside_rows = [r for r in rows if 0 <= r < height]
            inside_cols = [c for c in cols if 0 <= c < width]
            window = x[:, :, inside_rows][:, :, :, inside_cols]
            if kind == "max":
                out[:, :, i, j] = window.max(axis=(2, 3)) if window.size else -np.inf
                continue
            total = window.sum(axis=(2, 3))
            if divisor_override is not None:
                divisor = divisor_override
            elif count_include_pad:  # the padded input's pixels, never what lies beyond it
                divisor = (len([r for r in rows if r < height + padding[0]])
                           * len([c for c in cols if c < width + padding[1]]))
            else:
                divisor = len(inside_rows) * len(inside_cols)
            out[:, :, i, j] = total / divisor
    return out


@st.composite
def pool_problems(draw, kind):
    kernel = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    padding = tuple(draw(st.integers(0, k // 2)) for k in kernel)
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2))) if kind == "max" else (1, 1)
    ceil_mode = draw(st.booleans())
    size = [draw(st.integers(1, 9)), draw(st.integers(1, 9))]
    for axis in range(2):  # grow until one window fits
        while size[axis] + 2 * padding[axis] < dilation[axis] * (kernel[axis] - 1) + 1:
            size[axis] += 1
    dtype = np.dtype(draw(st.sampled_from([np.float32, np.float64])))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = rng.standard_normal((draw(st.integers(1, 2)), draw(st.integers(1, 3)), *size)).astype(dtype)
    kwargs = dict(kernel_size=kernel, stride=stride, padding=padding, ceil_mode=ceil_mode)
    if kind == "max":
        kwargs["dilation"] = dilation
    else:
        kwargs["count_include_pad"] = draw(st.booleans())
        kwargs["divisor_override"] = draw(st.sampled_from([None, None, 3, -2]))
    return _layout(draw, x), kwargs


def _brute(kind, x, kwargs):
    kwargs = dict(kwargs)
    kernel = kwargs.pop("kernel_size")
    return brute_force_pool(x, kind, kernel, kwargs.pop("stride"), kwargs.pop("padding"), **kwargs)


@given(problem=pool_problems("max"))
def test_max_pool_matches_brute_force(problem):
    x, kwargs = problem
    before = x.copy()
    out = fastconv.max_pool2d(x, **kwargs)
    expected = _brute("max", x, kwargs)
    assert out.dtype == x.dtype and out.shape == expected.shape
    np.testing.assert_array_equal(out, expected.astype(x.dtype))  # a maximum is exact
    np.testing.assert_array_equal(x, before)


@given(problem=pool_problems("avg"))
def test_avg_pool_matches_brute_force(problem):
    x, kwargs = problem
    out = fastconv.avg_pool2d(x, **kwargs)
    expected = _brute("avg", x, kwargs)
    assert out.dtype == x.dtype and out.shape == expected.shape
    tolerance = 1e-12 if x.dtype == np.float64 else 1e-5
    np.testing.assert_allclose(out, expected, rtol=tolerance, atol=tolerance * np.abs(x).max())


@pytest.mark.parametrize("kind", ["max", "avg"])
def test_output_size_matches_the_brute_force_walk_and_output_shape(kind):
    function = getattr(fastconv, f"{kind}_pool2d")
    for size in range(1, 9):
        for kernel in range(1, 5):
            for stride in range(1, 4):
                for padding in range(0, kernel // 2 + 1):
                    for ceil_mode in (False, True):
                        expected = brute_force_output_size(size, kernel, stride, padding, 1, ceil_mode)
                        if expected < 1 or size + 2 * padding < kernel:
                            continue
                        out = function(np.zeros((1, size, size)), kernel, stride, padding, ceil_mode=ceil_mode)
                        assert out.shape == (1, expected, expected)
                        assert out.shape == fastconv.output_shape((1, size, size), op=f"{kind}_pool2d",
                                                                  kernel_size=kernel, stride=stride,
                                                                  padding=padding, ceil_mode=ceil_mode)


def test_nan_propagates_through_max_pool_and_stride_defaults_to_kernel():
    x = np.arange(16.0).reshape(1, 1, 4, 4)
    x[0, 0, 0, 1] = np.nan
    out = fastconv.max_pool2d(x, 2)
    assert out.shape == (1, 1, 2, 2)
    assert np.isnan(out[0, 0, 0, 0]) and not np.isnan(out[0, 0, 1:]).any() and out[0, 0, 0, 1] == 7


def test_dtypes_and_unbatched_input():
    x = np.arange(2 * 4 * 4).reshape(2, 4, 4)
    assert fastconv.max_pool2d(x, 2).dtype == np.float64
    assert fastconv.avg_pool2d(x.astype(np.float16), 2).dtype == np.float16
    assert fastconv.max_pool2d(x, 2).shape == (2, 2, 2)


@pytest.mark.parametrize("kind", ["max", "avg"])
def test_matches_torch(kind):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 11, 12))
    for kernel, stride, padding, ceil_mode in [(3, 2, 1, False), (3, 2, 1, True), (2, 2, 0, True), ((3, 2), (2, 3),
                                                                                                    (1, 0), True)]:
        if kind == "max":
            expected = torch.nn.functional.max_pool2d(torch.from_numpy(x), kernel, stride, padding, dilation=(1, 2),
                                                      ceil_mode=ceil_mode).numpy()
            out = fastconv.max_pool2d(x, kernel, stride, padding, dilation=(1, 2), ceil_mode=ceil_mode)
        else:
            expected = torch.nn.functional.avg_pool2d(torch.from_numpy(x), kernel, stride, padding,
                                                      ceil_mode=ceil_mode, count_include_pad=False).numpy()
            out = fastconv.avg_pool2d(x, kernel, stride, padding, ceil_mode=ceil_mode, count_include_pad=False)
        np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("call, error, pattern", [
    (lambda: fastconv.max_pool2d(np.zeros((1, 1, 5, 5)), 3, padding=2), ValueError,
     r"max_pool2d: padding must be at most half the kernel size, got padding 2 for kernel size 3"),
    (lambda: fastconv.avg_pool2d(np.zeros((1, 1, 2, 2)), 3), ValueError, r"does not fit the input \(2, 2\)"),
    (lambda: fastconv.max_pool2d(np.zeros((1, 1, 5, 5)), 0), ValueError, r"kernel_size must be positive"),
    (lambda: fastconv.max_pool2d(np.zeros((1, 1, 5, 5)), 2, stride=0), ValueError, r"stride must be positive"),
    (lambda: fastconv.max_pool2d(np.zeros((5, 5)), 2), ValueError, r"max_pool2d: x must have shape \(N, C, H, W\)"),
    (lambda: fastconv.max_pool2d(np.zeros((1, 2, 2), dtype=complex), 2), TypeError, r"pooling needs real values"),
    (lambda: fastconv.max_pool2d(np.zeros((1, 2, 2)), 2, ceil_mode="yes"), TypeError, r"ceil_mode must be True or"),
    (lambda: fastconv.avg_pool2d(np.zeros((1, 2, 2)), 2, divisor_override=0), ValueError,
     r"divisor_override must be None or a non-zero int, got 0"),
    (lambda: fastconv.avg_pool2d(np.zeros((1, 2, 2)), 2, divisor_override=1.5), TypeError,
     r"divisor_override must be an int"),
    (lambda: fastconv.avg_pool2d(np.zeros((1, 2, 2)), 2, count_include_pad=None), TypeError,
     r"count_include_pad must be True or False"),
    (lambda: fastconv.max_pool2d(None, 2), TypeError, r"x must be an array of numbers"),
])
def test_bad_input_raises_with_a_message_that_names_it(call, error, pattern):
    with pytest.raises(error, match=pattern):
        call()


# --------------------------------------------------------------------------------------------
# gradients


def brute_force_pool_gradient(x, grad, kind, kernel, stride, padding, dilation=(1, 1), ceil_mode=False,
                              count_include_pad=True, divisor_override=None):
    """One window at a time: max pooling credits torch's argmax (scanning rows, the first of equal
    maxima, the last NaN); average pooling spreads the gradient over the window's input pixels."""
    x = np.asarray(x, dtype=np.float64)
    batch, channels, height, width = x.shape
    out = np.zeros_like(x)
    for n in range(batch):
        for c in range(channels):
            for i in range(grad.shape[2]):
                for j in range(grad.shape[3]):
                    top, left = i * stride[0] - padding[0], j * stride[1] - padding[1]
                    rows = [r for r in (top + u * dilation[0] for u in range(kernel[0])) if 0 <= r < height]
                    cols = [q for q in (left + v * dilation[1] for v in range(kernel[1])) if 0 <= q < width]
                    if not rows or not cols:
                        continue
                    if kind == "max":
                        best, where = -np.inf, (rows[0], cols[0])
                        for r in rows:
                            for q in cols:
                                if x[n, c, r, q] > best or np.isnan(x[n, c, r, q]):
                                    best, where = x[n, c, r, q], (r, q)
                        out[n, c, where[0], where[1]] += grad[n, c, i, j]
                        continue
                    ones = np.zeros((1, 1, height, width))
                    ones[0, 0, rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1] = 1
                    mean = brute_force_pool(ones, "avg", kernel, stride, padding, ceil_mode=ceil_mode,
                                            count_include_pad=count_include_pad,
                                            divisor_override=divisor_override)[0, 0, i, j]
                    out[n, c, rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1] += grad[n, c, i, j] * mean / (
                        len(rows) * len(cols))
    return out


def _pool_gradient_problem(kind, problem, ties):
    x, kwargs = problem
    if ties:  # few distinct values: ties in most windows
        x = np.round(x)
    out = getattr(fastconv, f"{kind}_pool2d")(x, **kwargs)
    g = np.random.default_rng(out.size).standard_normal(out.shape).astype(x.dtype)
    return x, kwargs, g


@given(problem=pool_problems("max"), ties=st.booleans())
def test_max_pool_gradient_matches_brute_force(problem, ties):
    x, kwargs, g = _pool_gradient_problem("max", problem, ties)
    before = x.copy()
    got = fastconv.max_pool2d_backward(x, g, **kwargs)
    kernel, stride = kwargs.pop("kernel_size"), kwargs.pop("stride")
    expected = brute_force_pool_gradient(x, g, "max", kernel, stride, kwargs.pop("padding"), **kwargs)
    assert got.dtype == x.dtype and got.shape == x.shape
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * np.abs(g).max())
    np.testing.assert_array_equal(x, before)


@given(problem=pool_problems("avg"))
def test_avg_pool_gradient_is_the_adjoint(problem):
    """<avg_pool2d(x), g> = <x, avg_pool2d_backward(g)>, and the brute force agrees."""
    x, kwargs, g = _pool_gradient_problem("avg", problem, False)
    got = fastconv.avg_pool2d_backward(x.shape, g, **kwargs)
    assert got.dtype == x.dtype and got.shape == x.shape
    total = np.vdot(fastconv.avg_pool2d(x.astype(np.float64), **kwargs), g.astype(np.float64))
    assert abs(np.vdot(x.astype(np.float64), got.astype(np.float64)) - total) <= 1e-4 * (np.abs(x).sum() + 1)
    kernel, stride = kwargs.pop("kernel_size"), kwargs.pop("stride")
    expected = brute_force_pool_gradient(x, g, "avg", kernel, stride, kwargs.pop("padding"), **kwargs)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * np.abs(g).max())


def test_max_pool_gradient_ties_and_nan_as_torch():
    x = np.array([[[1.0, 3.0, 3.0], [3.0, 0.0, np.nan], [np.nan, 2.0, 1.0]]])
    got = fastconv.max_pool2d_backward(x, np.ones((1, 2, 2)), 2, stride=1)
    # 2x2 windows: the first of two 3s; a NaN over 3s; the NaN; the NaN
    np.testing.assert_array_equal(got[0], [[0, 1, 0], [0, 0, 2], [1, 0, 0]])
    torch = pytest.importorskip("torch")
    xt = torch.from_numpy(x[None].copy()).requires_grad_()
    y = torch.nn.functional.max_pool2d(xt, 2, stride=1)
    (expected,) = torch.autograd.grad(y, xt, torch.ones_like(y))
    np.testing.assert_array_equal(got, expected.numpy()[0])


@pytest.mark.parametrize("kind", ["max", "avg"])
def test_pool_gradients_match_torch(kind):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(8)
    x = np.round(rng.standard_normal((2, 3, 11, 10)) * 2)
    for kwargs in (dict(kernel_size=3, stride=2, padding=1, ceil_mode=True), dict(kernel_size=(2, 3), stride=1)):
        if kind == "avg":
            kwargs.update(count_include_pad=False, divisor_override=None)
        xt = torch.from_numpy(x).requires_grad_()
        y = getattr(torch.nn.functional, f"{kind}_pool2d")(xt, **kwargs)
        g = rng.standard_normal(tuple(y.shape))
        (expected,) = torch.autograd.grad(y, xt, torch.from_numpy(g))
        function = getattr(fastconv, f"{kind}_pool2d_backward")
        got = function(x if kind == "max" else x.shape, g, **kwargs)
        np.testing.assert_allclose(got, expected.numpy(), rtol=1e-12, atol=1e-12)


def test_pool_gradient_validation_and_dtypes():
    x = np.ones((2, 4, 4), dtype=np.float32)
    assert fastconv.max_pool2d_backward(x, np.ones((2, 2, 2), np.float32), 2).dtype == np.float32
    assert fastconv.avg_pool2d_backward([2, 4, 4], np.ones((2, 2, 2), np.float16), 2).dtype == np.float16
    with pytest.raises(ValueError, match="grad_output has shape"):
        fastconv.max_pool2d_backward(x, np.ones((2, 3, 3)), 2)
    with pytest.raises(ValueError, match="padding must be at most half"):
        fastconv.avg_pool2d_backward(x.shape, np.ones((2, 2, 2)), 2, padding=2)
    with pytest.raises(TypeError, match="grad_output has dtype complex"):
        fastconv.max_pool2d_backward(x, np.ones((2, 2, 2), np.complex64), 2)
    with pytest.raises(ValueError, match="divisor_override"):
        fastconv.avg_pool2d_backward(x.shape, np.ones((2, 2, 2)), 2, divisor_override=0)
    with pytest.raises(TypeError, match="input_shape"):
        fastconv.avg_pool2d_backward((2, "4", 4), np.ones((2, 2, 2)), 2)
