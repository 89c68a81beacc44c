"""The whole-network workloads: the layers of each network and the callables that run them."""

import pytest

from fastconv.tools import networks
from fastconv.tools.cases import Skip


@pytest.mark.parametrize("network, count, gflop", [("resnet18", 20, 3.63), ("mobilenetv2", 52, 0.60)])
def test_layers_match_the_published_networks(network, count, gflop):
    layers = networks.network_layers(network)
    assert len(layers) == count
    assert sum(case.flops for case in layers) / 1e9 == pytest.approx(gflop, abs=0.01)  # 2 flops per MAC
    assert layers[-1].spec().out_shape[2:] == (7, 7)  # 224 / 32


def test_each_layer_reads_what_an_earlier_layer_wrote():
    for network in networks.NETWORKS:
        layers = networks.network_layers(network, side=64)
        produced = {layers[0].input_shape}
        for case in layers:
            stem = case is layers[0]
            assert stem or case.input_shape in produced or case.input_shape[2:] == (16, 16), case.name  # after pooling
            produced.add(case.spec().out_shape)


def test_calls_run_every_layer_or_say_why_not():
    networks.network_call("numba_cpu", "mobilenetv2", side=32)()
    networks.network_call("auto", "resnet18", side=32)()
    with pytest.raises(Skip, match="reference loops"):
        networks.network_call("naive", "resnet18", side=32)
    with pytest.raises(Skip, match="winograd cannot run every layer of resnet18: .*3×3 kernel"):
        networks.network_call("winograd", "resnet18", side=32)
    with pytest.raises(ValueError, match="network must be one of"):
        networks.network_layers("vgg")


def test_table_gives_each_time_and_its_ratio_to_the_peer():
    results = {"resnet18": {"auto": {"status": "ok", "median_s": 0.02}, "torch": {"status": "ok", "median_s": 0.04},
                            "fft": {"status": "skipped", "reason": "no"}}}
    table = networks.format_comparison(results)
    assert "| resnet18 | 20.00 ms (0.50×) | 40.00 ms | skipped |" in table
