"""depthwise_separable_conv2d against the float64 reference applied twice, and torch."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import fastconv
from reference import explicit_padding, reference_conv2d, relative_error


@given(data=st.data())
def test_matches_two_reference_convolutions(data):
    dtype = np.dtype(data.draw(st.sampled_from([np.float32, np.float64])))
    channels, multiplier, filters = (data.draw(st.integers(1, 3)) for _ in range(3))
    # four kernel shapes, not all nine up to 3×3: each geometry compiles kernels of its own, and the
    # backends' geometries are covered by their own tests
    kernel = data.draw(st.sampled_from([(1, 1), (3, 3), (1, 3), (3, 2)]))
    stride, dilation = data.draw(st.integers(1, 2)), data.draw(st.integers(1, 2))
    padding = data.draw(st.sampled_from([0, 1, "same"]))
    size = [data.draw(st.integers(1, 6)) + dilation * (k - 1) for k in kernel]
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    x = rng.standard_normal((2, channels, *size)).astype(dtype)
    depthwise = rng.standard_normal((channels * multiplier, 1, *kernel)).astype(dtype)
    pointwise = rng.standard_normal((filters, channels * multiplier, 1, 1)).astype(dtype)
    bias = rng.standard_normal(filters).astype(dtype)
    out = fastconv.depthwise_separable_conv2d(x, depthwise, pointwise, bias, stride=stride, padding=padding,
                                              dilation=dilation)
    sides = explicit_padding(padding, size, kernel, (stride, stride), (dilation, dilation))
    hidden = reference_conv2d(x, depthwise, stride=(stride, stride), padding=sides, dilation=(dilation, dilation),
                              groups=channels)
    expected = reference_conv2d(hidden, pointwise, bias)
    assert out.shape == expected.shape and out.dtype == dtype
    assert relative_error(out, expected) <= (1e-10 if dtype == np.float64 else 1e-5)
    assert out.shape == fastconv.output_shape(x.shape, (depthwise.shape, pointwise.shape), stride, padding,
                                              dilation, op="depthwise_separable_conv2d")


def test_matches_torch_mobilenet_block():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 8, 9, 9))
    depthwise, pointwise = rng.standard_normal((16, 1, 3, 3)), rng.standard_normal((4, 16, 1, 1))
    hidden = torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(depthwise), stride=2, padding=1,
                                        groups=8)
    expected = torch.nn.functional.conv2d(hidden, torch.from_numpy(pointwise)).numpy()
    out = fastconv.depthwise_separable_conv2d(x[0], depthwise, pointwise, stride=2, padding=1, backend="naive")
    assert out.shape == (4, 5, 5)
    assert relative_error(out, expected[0]) <= 1e-12


@pytest.mark.parametrize("shapes, pattern", [
    (((5, 1, 3, 3), (4, 5, 1, 1)), r"depthwise_weight must have shape \(C·m, 1, kh, kw\) with C = 2.*\(5, 1, 3, 3\)"),
    (((4, 2, 3, 3), (4, 4, 1, 1)), r"depthwise_weight must have shape"),
    (((4, 1, 3, 3), (4, 2, 1, 1)), r"pointwise_weight must have shape \(K, C·m, 1, 1\) = \(K, 4, 1, 1\).*"
                                   r"\(4, 2, 1, 1\)"),
    (((4, 1, 3, 3), (4, 4, 3, 3)), r"pointwise_weight must have shape"),
])
def test_bad_weights_raise_with_a_message_that_names_them(shapes, pattern):
    with pytest.raises(ValueError, match=pattern):
        fastconv.depthwise_separable_conv2d(np.zeros((1, 2, 6, 6)), np.zeros(shapes[0]), np.zeros(shapes[1]))


@settings(max_examples=15)
@given(data=st.data())
def test_backward_is_the_adjoint(data):
    """<f(x, dw, pw) - b, g> is bilinear in (x, pw) and in (dw, pw): the gradients, with no torch."""
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    channels, multiplier, filters = (data.draw(st.integers(1, 3)) for _ in range(3))
    mode = data.draw(st.sampled_from(["zeros", "reflect", "replicate", "circular"]))
    stride = data.draw(st.integers(1, 2))
    x = rng.standard_normal((2, channels, 6, 5))
    depthwise = rng.standard_normal((channels * multiplier, 1, 3, 2))
    pointwise = rng.standard_normal((filters, channels * multiplier, 1, 1))
    y = fastconv.depthwise_separable_conv2d(x, depthwise, pointwise, stride=stride, padding=1, padding_mode=mode)
    g = rng.standard_normal(y.shape)
    dx, ddw, dpw, db = fastconv.depthwise_separable_conv2d_backward(x, depthwise, pointwise, g, stride=stride,
                                                                    padding=1, padding_mode=mode)
    total = np.vdot(y, g)
    scale = np.abs(y).sum() * np.abs(g).max()
    for operand, gradient in ((x, dx), (depthwise, ddw), (pointwise, dpw)):
        assert gradient.shape == operand.shape
        assert abs(np.vdot(operand, gradient) - total) <= 1e-10 * scale
    np.testing.assert_allclose(db, g.sum(axis=(0, 2, 3)))


def test_backward_matches_torch_autograd():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(4)
    x, depthwise = rng.standard_normal((2, 3, 9, 8)), rng.standard_normal((6, 1, 3, 3))
    pointwise, bias = rng.standard_normal((4, 6, 1, 1)), rng.standard_normal(4)
    tensors = [torch.from_numpy(a).requires_grad_() for a in (x, depthwise, pointwise, bias)]
    hidden = torch.nn.functional.conv2d(torch.nn.functional.pad(tensors[0], (1, 1, 1, 1), mode="reflect"),
                                        tensors[1], stride=2, groups=3)
    y = torch.nn.functional.conv2d(hidden, tensors[2], tensors[3])
    g = rng.standard_normal(tuple(y.shape))
    expected = [t.numpy() for t in torch.autograd.grad(y, tensors, torch.from_numpy(g))]
    got = fastconv.depthwise_separable_conv2d_backward(x, depthwise, pointwise, g, stride=2, padding=1,
                                                       padding_mode="reflect")
    for ours, want in zip(got, expected):
        assert relative_error(ours, want) <= 1e-10
    unbatched = fastconv.depthwise_separable_conv2d_backward(x[0], depthwise, pointwise, g[0], stride=2, padding=1,
                                                             padding_mode="reflect", needs=(True, False, True, False))
    assert unbatched[1] is None and unbatched[3] is None
    assert relative_error(unbatched[0], expected[0][0]) <= 1e-10
    with pytest.raises(ValueError, match="grad_output has shape"):
        fastconv.depthwise_separable_conv2d_backward(x, depthwise, pointwise, g[:, :3], stride=2, padding=1)
