"""output_shape(op=...) agrees with the shape each operation returns, and refuses what it should."""

import numpy as np
import pytest

import fastconv

X = np.zeros((2, 4, 9, 8))
CASES = [
    ("conv2d", (X.shape, (6, 2, 3, 3)), dict(stride=2, padding=1, groups=2),
     lambda: fastconv.conv2d(X, np.zeros((6, 2, 3, 3)), stride=2, padding=1, groups=2)),
    ("conv_transpose2d", (X.shape, (4, 3, 4, 4)), dict(stride=2, padding=1, output_padding=1),
     lambda: fastconv.conv_transpose2d(X, np.zeros((4, 3, 4, 4)), stride=2, padding=1, output_padding=1)),
    ("depthwise_separable_conv2d", (X.shape, ((8, 1, 3, 3), (5, 8, 1, 1))), dict(padding="same"),
     lambda: fastconv.depthwise_separable_conv2d(X, np.zeros((8, 1, 3, 3)), np.zeros((5, 8, 1, 1)),
                                                 padding="same")),
    ("local_conv2d", (X.shape, (4, 3, 2, 4, 3, 3)), dict(stride=2),
     lambda: fastconv.local_conv2d(X, np.zeros((4, 3, 2, 4, 3, 3)), stride=2)),
    ("tiled_conv2d", (X.shape, (2, 2, 2, 4, 3, 3)), dict(dilation=2),
     lambda: fastconv.tiled_conv2d(X, np.zeros((2, 2, 2, 4, 3, 3)), dilation=2)),
    ("max_pool2d", (X.shape[1:],), dict(kernel_size=3, stride=2, ceil_mode=True),
     lambda: fastconv.max_pool2d(X[0], 3, stride=2, ceil_mode=True)),
    ("avg_pool2d", (X.shape,), dict(kernel_size=2),
     lambda: fastconv.avg_pool2d(X, 2)),
    ("convolve2d", ((9, 8), (4, 3)), dict(mode="same"),
     lambda: fastconv.convolve2d(X[0, 0], np.ones((4, 3)), mode="same")),
    ("correlate2d", ((3, 2), (9, 8)), dict(mode="valid"),
     lambda: fastconv.correlate2d(np.ones((3, 2)), X[0, 0], mode="valid")),
]


@pytest.mark.parametrize("op, shapes, kwargs, call", CASES, ids=[case[0] for case in CASES])
def test_output_shape_matches_the_operation(op, shapes, kwargs, call):
    assert fastconv.output_shape(*shapes, op=op, **kwargs) == call().shape


@pytest.mark.parametrize("kwargs, error, pattern", [
    (dict(op="deconv"), ValueError, r"op must be one of \('conv2d', 'conv_transpose2d'.*got 'deconv'"),
    (dict(op="conv2d", mode="same"), TypeError, r"output_shape\(op='conv2d'\) got unexpected arguments \['mode'\]"),
    (dict(op="max_pool2d"), TypeError, r"output_shape\(op='max_pool2d'\) needs kernel_size="),
])
def test_bad_requests_raise(kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        fastconv.output_shape((1, 1, 8, 8), (1, 1, 3, 3), **kwargs)
