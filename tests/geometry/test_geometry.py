"""Output shapes and resolved padding, worked by hand."""

import numpy as np
import pytest

import fastconv
from fastconv.geometry import make_spec


def test_seed_example_64x64_rgb_two_5x5_filters():
    assert fastconv.output_shape((1, 3, 64, 64), (2, 3, 5, 5)) == (1, 2, 60, 60)
    assert fastconv.output_shape((3, 64, 64), (2, 3, 5, 5)) == (2, 60, 60)


@pytest.mark.parametrize("input_hw, kernel, kwargs, expected_hw", [
    ((224, 224), (7, 7), dict(stride=2, padding=3), (112, 112)),       # ResNet conv1
    ((56, 56), (3, 3), dict(padding=1), (56, 56)),
    ((65, 65), (3, 3), dict(padding=12, dilation=12), (65, 65)),       # DeepLab ASPP
    ((10, 10), (3, 3), dict(stride=3), (3, 3)),                        # floor((10-3)/3)+1
    ((10, 10), (3, 3), dict(padding="full"), (12, 12)),
    ((10, 10), (3, 3), dict(padding="full", dilation=2), (14, 14)),
    ((7, 9), (2, 4), dict(padding=((1, 0), (0, 3))), (7, 9)),
    ((10, 11), (3, 3), dict(padding="same", stride=2), (5, 6)),        # ceil(in / stride)
    ((5, 5), (5, 5), dict(padding="valid"), (1, 1)),
])
def test_output_shape_examples(input_hw, kernel, kwargs, expected_hw):
    assert fastconv.output_shape((2, 4, *input_hw), (6, 4, *kernel), **kwargs) == (2, 6, *expected_hw)


def test_same_padding_even_kernel_puts_the_odd_unit_bottom_right():
    spec = make_spec((1, 1, 8, 8), (1, 1, 4, 2), padding="same")
    assert spec.padding == ((1, 2), (0, 1))
    assert spec.out_shape == (1, 1, 8, 8)


def test_same_padding_with_stride_follows_tensorflow():
    # in=10, k=3, s=2: out=5, total = max((5-1)*2 + 3 - 10, 0) = 1 -> (0, 1)
    assert make_spec((1, 1, 10, 10), (1, 1, 3, 3), padding="same", stride=2).padding == ((0, 1), (0, 1))
    # in=11: out=6, total = 10 + 3 - 11 = 2 -> (1, 1)
    assert make_spec((1, 1, 11, 11), (1, 1, 3, 3), padding="same", stride=2).padding == ((1, 1), (1, 1))
    # stride larger than the kernel never needs padding
    assert make_spec((1, 1, 9, 9), (1, 1, 2, 2), padding="same", stride=3).padding == ((0, 0), (0, 0))


def test_same_padding_with_dilation():
    spec = make_spec((1, 1, 9, 9), (1, 1, 3, 3), padding="same", dilation=3)
    assert spec.padding == ((3, 3), (3, 3)) and spec.out_shape == (1, 1, 9, 9)


def test_same_equals_torch_padding_same_at_stride_one():
    # torch: total = dilation * (k - 1), left = total // 2
    for k in range(1, 7):
        spec = make_spec((1, 1, 12, 12), (1, 1, k, k), padding="same", dilation=2)
        total = 2 * (k - 1)
        assert spec.padding[0] == (total // 2, total - total // 2)


def test_spec_is_hashable_and_immutable():
    spec = make_spec((1, 2, 5, 5), (3, 2, 3, 3), dtype=np.float32)
    assert hash(spec) == hash(make_spec((1, 2, 5, 5), (3, 2, 3, 3), dtype=np.float32))
    with pytest.raises(AttributeError):
        spec.groups = 2


def test_flops_counts_multiply_and_add_per_tap():
    spec = make_spec((2, 4, 10, 10), (6, 2, 3, 3), groups=2)
    assert spec.flops == 2 * 2 * 6 * 8 * 8 * (2 * 3 * 3)


def test_zero_padded_spec_keeps_output_shape():
    spec = make_spec((1, 1, 6, 7), (1, 1, 3, 3), padding=((1, 2), (3, 0)), padding_mode="reflect")
    padded = spec.zero_padded()
    assert padded.out_shape == spec.out_shape
    assert (padded.in_height, padded.in_width, padded.padding) == (9, 10, ((0, 0), (0, 0)))
