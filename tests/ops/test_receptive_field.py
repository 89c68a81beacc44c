"""receptive_field on stacks worked out by hand."""

import pytest

from fastconv import ReceptiveField, receptive_field


def test_two_convs_a_pool_and_a_conv():
    # sizes: 3; 3 + 2 = 5; 5 + 1 = 6 (pool 2x2/s2); 6 + 2·2 = 10 (jump 2 after the pool)
    layers = [{"kernel_size": 3}, {"kernel_size": 3}, {"kernel_size": 2, "stride": 2}, {"kernel_size": 3}]
    records = receptive_field(layers)
    assert [r.size for r in records] == [3, 5, 6, 10]
    assert [r.jump for r in records] == [1, 1, 2, 2]
    # centres: 1, 2, 2.5 (the first 2x2 window covers pixels 2..5 of the input), 4.5
    assert [r.start for r in records] == [1.0, 2.0, 2.5, 4.5]


def test_two_convs_with_a_stride_two_between():
    assert [r.size for r in receptive_field([{"kernel_size": 3}, {"kernel_size": 3, "stride": 2},
                                             {"kernel_size": 3}])] == [3, 5, 9]
    assert receptive_field([{"kernel_size": 3, "stride": 2}, {"kernel_size": 3}])[-1] == ReceptiveField(7, 2, 3.0)


def test_padding_moves_the_start_and_dilation_widens_the_field():
    # 'same' 3x3 conv keeps the first centre at pixel 0; a dilation-2 3x3 spans 5 pixels
    assert receptive_field([{"kernel_size": 3, "padding": 1}])[0] == ReceptiveField(3, 1, 0.0)
    assert receptive_field([{"kernel_size": 3, "dilation": 2}])[0] == ReceptiveField(5, 1, 2.0)
    # ResNet stem: 7x7/s2/p3 then 3x3/s2/p1 max-pool -> 11 pixels, jump 4, first centre at 0
    assert receptive_field([{"kernel_size": 7, "stride": 2, "padding": 3},
                            {"kernel_size": 3, "stride": 2, "padding": 1}])[-1] == ReceptiveField(11, 4, 0.0)


def test_pairs_give_pairs_for_every_record():
    records = receptive_field([{"kernel_size": 3}, {"kernel_size": (3, 1), "stride": (2, 1)}, {"kernel_size": 3}])
    assert records[0] == ReceptiveField((3, 3), (1, 1), (1.0, 1.0))
    assert records[2] == ReceptiveField((9, 5), (2, 1), (4.0, 2.0))


@pytest.mark.parametrize("layers, error, pattern", [
    ([{"stride": 2}], ValueError, r"layers\[0\] needs a 'kernel_size'"),
    ([{"kernel_size": 3, "strides": 2}], ValueError, r"layers\[0\] has unknown keys \['strides'\]"),
    ([{"kernel_size": 3}, {"kernel_size": 0}], ValueError, r"layers\[1\]\['kernel_size'\] must be positive"),
    ([{"kernel_size": 3, "padding": -1}], ValueError, r"layers\[0\]\['padding'\] must be >= 0"),
    ([3], TypeError, r"layers\[0\] must be a dict"),
    ({"kernel_size": 3}, TypeError, r"layers must be a sequence of dicts"),
])
def test_bad_layers_raise_with_a_message_that_names_them(layers, error, pattern):
    with pytest.raises(error, match=pattern):
        receptive_field(layers)
