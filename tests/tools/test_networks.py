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


def test_rounds_give_the_median_and_the_range_of_each_library_and_of_its_ratio():
    results = {"resnet18": {"auto": networks._combined([{"status": "ok", "median_s": s} for s in (0.03, 0.02, 0.05)]),
                            "torch": networks._combined([{"status": "ok", "median_s": s} for s in (0.04, 0.04, 0.05)])}}
    assert results["resnet18"]["auto"] == {"status": "ok", "median_s": 0.03, "rounds_s": [0.03, 0.02, 0.05]}
    table = networks.format_comparison(results)
    # ratios paired by round: 0.75, 0.5, 1.0
    assert "| resnet18 | 30.00 ms, 20.00–50.00 ms (0.75×, 0.50–1.00×) | 40.00 ms, 40.00–50.00 ms |" in table


def test_a_round_that_is_not_ok_is_the_result():
    skipped = {"status": "skipped", "reason": "no torch"}
    assert networks._combined([{"status": "ok", "median_s": 0.01}, skipped]) == skipped
