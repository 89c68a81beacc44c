"""Every invalid input raises ValueError or TypeError naming the argument, the value and what is accepted."""

import numpy as np
import pytest

import fastconv

X = np.zeros((1, 4, 8, 8))
W = np.zeros((6, 4, 3, 3))


@pytest.mark.parametrize("kwargs, error, pattern", [
    (dict(x=np.zeros((1, 3, 8, 8))), ValueError, r"weight.*2 input channels per group|expected weight.shape\[1\] == 3"),
    (dict(groups=3), ValueError, r"groups=3 must divide.*4.*6"),
    (dict(groups=0), ValueError, r"groups must be a positive int, got 0"),
    (dict(groups=1.5), TypeError, r"groups must be an int, got 1.5"),
    (dict(stride=0), ValueError, r"stride must be positive.*got 0"),
    (dict(stride=(1, -2)), ValueError, r"stride must be positive.*\(1, -2\)"),
    (dict(stride=(1, 2, 3)), ValueError, r"stride must be an int or a pair.*3 entries"),
    (dict(stride="2"), TypeError, r"stride must be an int or a pair"),
    (dict(stride=True), TypeError, r"stride must be an int or a pair \(h, w\) of ints, got True"),
    (dict(dilation=0), ValueError, r"dilation must be positive.*got 0"),
    (dict(padding=-1), ValueError, r"padding must be >= 0.*-1"),
    (dict(padding=((1, -1), (0, 0))), ValueError, r"padding must be >= 0"),
    (dict(padding="half"), ValueError, r"padding must be .*'valid', 'same', 'full'.*'half'"),
    (dict(padding=(1, (2, 3))), ValueError, r"padding must be an int, \(ph, pw\)"),
    (dict(padding_mode="mirror"), ValueError, r"padding_mode must be one of .*'mirror'"),
    (dict(padding=8, padding_mode="reflect"), ValueError, r"reflect.*padding < input height \(8\).*\(8, 8\)"),
    (dict(padding=9, padding_mode="circular"), ValueError, r"circular.*padding <= input height \(8\)"),
    (dict(weight=np.zeros((6, 4, 9, 9))), ValueError, r"kernel of extent \(9, 9\).*larger than the padded input \(8, 8\)"),
    (dict(dilation=5), ValueError, r"kernel of extent \(11, 11\).*dilation"),
    (dict(x=np.zeros((4, 8, 8, 1, 1))), ValueError, r"x must have shape \(N, C, H, W\) or \(C, H, W\), got 5 dimensions"),
    (dict(x=np.zeros((8, 8))), ValueError, r"x must have shape .*got 2 dimensions"),
    (dict(weight=np.zeros((6, 4, 3))), ValueError, r"weight must have shape \(K, C // groups, kh, kw\), got 3"),
    (dict(bias=np.zeros(5)), ValueError, r"bias must have shape \(K,\) = \(6,\).*got shape \(5,\)"),
    (dict(bias=np.zeros((6, 1))), ValueError, r"bias must have shape"),
    (dict(x=None), TypeError, r"x must be an array of numbers, got NoneType"),
    (dict(x="image.png"), TypeError, r"x must be an array of numbers, got str"),
    (dict(weight={"a": 1}), TypeError, r"weight has dtype object"),
    (dict(x=np.zeros((1, 4, 8, 8), dtype="datetime64[s]")), TypeError, r"x has dtype datetime64.*accepted"),
    (dict(x=np.zeros((1, 4, 8, 8), dtype=np.longdouble)), TypeError, r"x has dtype float128.*accepted"),
    (dict(x=[[[1, 2], [3]]]), TypeError, r"x must be an array of numbers; numpy could not convert"),
    (dict(backend="cudnn"), ValueError, r"Unknown backend 'cudnn'; valid backends are naive"),
    (dict(backend=None), ValueError, r"Unknown backend None"),
])
def test_bad_input_raises_with_a_message_that_names_it(kwargs, error, pattern):
    args = dict(x=X, weight=W, bias=None)
    args.update(kwargs)
    x, weight, bias = args.pop("x"), args.pop("weight"), args.pop("bias")
    with pytest.raises(error, match=pattern):
        fastconv.conv2d(x, weight, bias, **args)


def test_empty_dimensions_are_rejected():
    with pytest.raises(ValueError, match="input must have non-empty C, H and W"):
        fastconv.conv2d(np.zeros((1, 4, 0, 8)), W)
    with pytest.raises(ValueError, match="weight must have no empty dimension"):
        fastconv.conv2d(X, np.zeros((6, 4, 0, 3)))


def test_empty_batch_gives_empty_output():
    assert fastconv.conv2d(np.zeros((0, 4, 8, 8)), W).shape == (0, 6, 6, 6)


def test_output_shape_validates_like_conv2d():
    with pytest.raises(ValueError, match="groups=4 must divide"):
        fastconv.output_shape((1, 4, 8, 8), (6, 1, 3, 3), groups=4)
