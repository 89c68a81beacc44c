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
