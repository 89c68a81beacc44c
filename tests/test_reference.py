"""The test oracle is itself checked against scipy.signal.correlate2d, channel by channel."""

import numpy as np
import pytest
from scipy.signal import correlate2d

from reference import explicit_padding, reference_conv2d


@pytest.mark.parametrize("kernel", [(1, 1), (3, 3), (2, 5), (4, 1)])
def test_reference_matches_scipy_correlate2d(kernel):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, 9, 11))
    w = rng.standard_normal((4, 3, *kernel))
    ours = reference_conv2d(x, w)
    for n in range(2):
        for k in range(4):
            expected = sum(correlate2d(x[n, c], w[k, c], mode="valid") for c in range(3))
            np.testing.assert_allclose(ours[n, k], expected, rtol=1e-12, atol=1e-12)


def test_reference_full_padding_is_scipy_full_mode():
    rng = np.random.default_rng(2)
    x, w = rng.standard_normal((1, 1, 6, 7)), rng.standard_normal((1, 1, 3, 4))
    sides = explicit_padding("full", (6, 7), (3, 4), (1, 1), (1, 1))
    np.testing.assert_allclose(reference_conv2d(x, w, padding=sides)[0, 0],
                               correlate2d(x[0, 0], w[0, 0], mode="full"), rtol=1e-12)


def test_reference_stride_and_dilation_match_a_dilated_kernel_then_subsampling():
    rng = np.random.default_rng(3)
    x, w = rng.standard_normal((1, 1, 13, 12)), rng.standard_normal((1, 1, 3, 2))
    dilated = np.zeros((5, 4))  # dilation (2, 3): taps spread apart with zeros between
    dilated[::2, ::3] = w[0, 0]
    expected = correlate2d(x[0, 0], dilated, mode="valid")[::3, ::2]
    got = reference_conv2d(x, w, stride=(3, 2), dilation=(2, 3))[0, 0]
    np.testing.assert_allclose(got, expected, rtol=1e-12)


def test_reference_groups_are_independent_convolutions():
    rng = np.random.default_rng(4)
    x, w = rng.standard_normal((1, 4, 6, 6)), rng.standard_normal((6, 2, 3, 3))
    got = reference_conv2d(x, w, groups=2)
    np.testing.assert_allclose(got[:, :3], reference_conv2d(x[:, :2], w[:3]), rtol=1e-12)
    np.testing.assert_allclose(got[:, 3:], reference_conv2d(x[:, 2:], w[3:]), rtol=1e-12)


def test_reference_gradients_satisfy_the_adjoint_identity():
    """<conv2d(x, w), g> = <x, dx> = <w, dw>: the gradients of a bilinear form, for every padding mode."""
    from reference import reference_conv2d_gradients

    rng = np.random.default_rng(5)
    for mode in ("zeros", "reflect", "replicate", "circular"):
        x, w = rng.standard_normal((2, 4, 7, 6)), rng.standard_normal((6, 2, 3, 2))
        sides = ((2, 1), (0, 1))
        y = reference_conv2d(x, w, stride=(2, 1), padding=sides, dilation=(1, 2), groups=2, padding_mode=mode)
        g = rng.standard_normal(y.shape)
        dx, dw = reference_conv2d_gradients(x, w, g, stride=(2, 1), padding=sides, dilation=(1, 2), groups=2,
                                            padding_mode=mode)
        assert np.isclose((y * g).sum(), (x * dx).sum(), rtol=1e-12)
        assert np.isclose((y * g).sum(), (w * dw).sum(), rtol=1e-12)


def test_reference_gradients_match_torch_autograd():
    torch = pytest.importorskip("torch")
    from reference import reference_conv2d_gradients

    rng = np.random.default_rng(6)
    for dtype in (np.float64, np.complex128):
        x = rng.standard_normal((2, 4, 7, 6)).astype(dtype)
        w = rng.standard_normal((6, 2, 3, 2)).astype(dtype)
        if dtype == np.complex128:
            x, w = x + 1j * rng.standard_normal(x.shape), w + 1j * rng.standard_normal(w.shape)
        xt, wt = torch.from_numpy(x).requires_grad_(), torch.from_numpy(w).requires_grad_()
        y = torch.nn.functional.conv2d(torch.nn.functional.pad(xt, (0, 1, 2, 1), mode="reflect"), wt,
                                       stride=(2, 1), dilation=(1, 2), groups=2)
        g = rng.standard_normal(tuple(y.shape)).astype(dtype)
        expected = [t.numpy() for t in torch.autograd.grad(y, (xt, wt), torch.from_numpy(g))]
        ours = reference_conv2d_gradients(x, w, g, stride=(2, 1), padding=((2, 1), (0, 1)), dilation=(1, 2),
                                          groups=2, padding_mode="reflect")
        for got, want in zip(ours, expected):
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
