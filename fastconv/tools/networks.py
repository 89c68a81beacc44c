"""Whole networks: every convolution of ResNet-18 and MobileNetV2, called in sequence.

A network's layers one by one flatter a library that switches between algorithms: consecutive
layers that run on different thread pools (OpenBLAS, FFTW, numba's OpenMP) pay for waking one
pool while another still spins, and the caches hold the previous layer's data, not this one's.
So :func:`compare` times the conv layers of a whole forward pass as one workload, each library in
a process of its own (:func:`fastconv.tools.isolated.time_isolated`), at batch 1 and 224×224 as
the networks are usually served. Only the convolutions are timed (no batch norm, activation or
pooling), each layer on its own input of the right shape, so the figure is the convolution work of
the network and nothing else.

Examples
--------
>>> layers = network_layers("resnet18")
>>> len(layers), layers[0].name, layers[0].input_shape, layers[0].weight_shape
(20, 'conv1', (1, 3, 224, 224), (64, 3, 7, 7))
>>> round(sum(layer.flops for layer in network_layers("mobilenetv2")) / 1e9, 2)  # GFLOP per image
0.6
"""

from __future__ import annotations

import dataclasses

import numpy as np

from fastconv.tools.cases import Case, Skip, make_inputs

__all__ = ["NETWORKS", "bench_text", "compare", "format_comparison", "network_call", "network_layers"]

#: The networks this module knows, with what each exercises.
NETWORKS = {
    "resnet18": "ResNet-18: a 7x7 stride-2 stem, 3x3 layers from 56x56 to 7x7, 1x1 stride-2 shortcuts",
    "mobilenetv2": "MobileNetV2: 1x1 expansions and projections around 3x3 depthwise layers, stride 1 and 2",
}


def _resnet18(batch: int, side: int) -> list[Case]:
    def conv(name, channels, size, filters, kernel, stride):
        return Case(name, (batch, channels, size, size), (filters, channels, kernel, kernel), stride=stride,
                    padding=kernel // 2, group="resnet18")

    size = (side + 1) // 2
    layers = [conv("conv1", 3, side, 64, 7, 2)]
    size = (size + 1) // 2  # the 3x3 stride-2 max pooling
    channels = 64
    for stage, width in enumerate((64, 128, 256, 512), start=1):
        for block in range(2):
            stride = 2 if stage > 1 and block == 0 else 1
            out_size = (size - 1) // stride + 1
            prefix = f"layer{stage}.{block}"
            layers.append(conv(f"{prefix}.conv1", channels, size, width, 3, stride))
            layers.append(conv(f"{prefix}.conv2", width, out_size, width, 3, 1))
            if stride != 1 or channels != width:
                layers.append(conv(f"{prefix}.downsample", channels, size, width, 1, stride))
            channels, size = width, out_size
    return layers


def _mobilenetv2(batch: int, side: int) -> list[Case]:
    def conv(name, channels, size, filters, kernel, stride, groups=1):
        return Case(name, (batch, channels, size, size), (filters, channels // groups, kernel, kernel),
                    stride=stride, padding=kernel // 2, groups=groups, group="mobilenetv2")

    layers = [conv("features.0", 3, side, 32, 3, 2)]
    size, channels, index = (side + 1) // 2, 32, 1
    # (expansion t, output channels c, repeats n, first stride s), as in the paper's table 2
    for expansion, width, repeats, first_stride in ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                                                    (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)):
        for repeat in range(repeats):
            stride = first_stride if repeat == 0 else 1
            hidden, out_size = channels * expansion, (size - 1) // stride + 1
            if expansion != 1:
                layers.append(conv(f"features.{index}.expand", channels, size, hidden, 1, 1))
            layers.append(conv(f"features.{index}.depthwise", hidden, size, hidden, 3, stride, groups=hidden))
            layers.append(conv(f"features.{index}.project", hidden, out_size, width, 1, 1))
            channels, size, index = width, out_size, index + 1
    layers.append(conv(f"features.{index}", channels, size, 1280, 1, 1))
    return layers


def network_layers(network: str, batch: int = 1, side: int = 224, dtype: str = "float32") -> list[Case]:
    """The convolution layers of ``network`` (a key of :data:`NETWORKS`), in the order they run."""
    builders = {"resnet18": _resnet18, "mobilenetv2": _mobilenetv2}
    if network not in builders:
        raise ValueError(f"network must be one of {sorted(builders)}, got {network!r}")
    return [dataclasses.replace(case, dtype=dtype) for case in builders[network](batch, side)]


def network_call(library: str, network: str, batch: int = 1, side: int = 224):
    """A zero-argument callable that runs every conv layer of ``network`` once, in order.

    ``library`` is a fastconv backend name (``"auto"`` included) or ``"torch"``. Raises
    :class:`~fastconv.tools.cases.Skip` when it cannot run here (torch absent, a backend that
    declines a layer or is the reference loops).
    """
    layers = network_layers(network, batch, side)
    operands = [make_inputs(case, seed=index) for index, case in enumerate(layers)]
    if library == "torch":
        try:
            import torch
            import torch.nn.functional as F
        except ImportError:
            raise Skip("torch is not installed") from None
        from fastconv import config

        torch.set_num_threads(config.threads)
        tensors = [(torch.from_numpy(x), torch.from_numpy(w)) for x, w in operands]

        def run_torch():
            with torch.no_grad():
                for case, (x, w) in zip(layers, tensors):
                    F.conv2d(x, w, None, case.stride, case.padding, case.dilation, case.groups)

        return run_torch
    import fastconv
    from fastconv import backends

    if library != "auto":
        reason = backends.unavailable_reason(library)
        if backends.is_reference(library):
            reason = "the reference loops would take minutes per pass"
        from fastconv.auto.choice import weight_decline_reason

        for case, (_, weight) in zip(layers, operands):
            spec = case.backend_spec()
            reason = reason or backends.get(library).supports(spec) or weight_decline_reason(library, weight, spec)
        if reason is not None:
            raise Skip(f"{library} cannot run every layer of {network}: {reason}")

    def run_fastconv():
        for case, (x, w) in zip(layers, operands):
            fastconv.conv2d(x, w, backend=library, **case.conv_kwargs())

    return run_fastconv


def _build(key: str, batch: int, side: int):
    library, network = key.split("/")
    return network_call(library, network, batch, side)


def compare(networks=tuple(NETWORKS), libraries=("auto", "torch"), batch: int = 1, side: int = 224,
            repeat: int = 5, threads: int | None = None, rounds: int = 1) -> dict[str, dict[str, dict]]:
    """Time each network's conv layers in sequence with each library, each library in its own process.

    With ``rounds`` > 1 every library is timed that many times, each time in a new process, the
    libraries taking turns (a, b, a, b, ...): on a virtual machine one process can run a whole
    pass 1.5× slower than the next, more than the difference being measured, and a slow spell
    lasting minutes then slows both sides of a round.

    Returns ``{network: {library: result}}``, each result as
    :func:`fastconv.tools.isolated.time_isolated` gives it (``"median_s"`` for the whole pass);
    with several rounds, ``"rounds_s"`` holds each round's median and ``"median_s"`` their median
    (a library that fails or is skipped in any round keeps that result).
    """
    from fastconv.tools.isolated import time_isolated

    timed_rounds = {network: {library: [] for library in libraries} for network in networks}
    for _ in range(rounds):
        for library in libraries:
            keys = [f"{library}/{network}" for network in networks]
            timed = time_isolated(_build, keys, batch, side, repeat=repeat, budget_s=2.0, threads=threads,
                                  peer=library == "torch")
            for key, result in timed.items():
                timed_rounds[key.split("/")[1]][library].append(result)
    return {network: {library: _combined(runs) for library, runs in by_library.items()}
            for network, by_library in timed_rounds.items()}


def _combined(runs: list[dict]) -> dict:
    """One result from a library's rounds: the first that is not ok, else their median."""
    for result in runs:
        if result["status"] != "ok":
            return result
    if len(runs) == 1:
        return runs[0]
    seconds = [result["median_s"] for result in runs]
    return {"status": "ok", "median_s": float(np.median(seconds)), "rounds_s": seconds}


def format_comparison(results: dict, peer: str = "torch") -> str:
    """A markdown table of :func:`compare`'s results: each library's time per pass and, in
    parentheses, that time divided by ``peer``'s (below 1: faster than the peer).

    With several rounds the time is the median of the rounds' and the ratio the median of the
    rounds' own ratios (each library against the peer's process beside it), each followed by its
    range over the rounds.
    """
    libraries = list(next(iter(results.values())))
    lines = ["| network | " + " | ".join(libraries) + " |", "|---" + "|---:" * len(libraries) + "|"]
    for network, row in results.items():
        base = row.get(peer, {})
        cells = []
        for name in libraries:
            result = row[name]
            if result["status"] != "ok":
                cells.append(result["status"])
                continue
            rounds = result.get("rounds_s", [result["median_s"]])
            cell = f"{1e3 * result['median_s']:.2f} ms" + _spread([1e3 * s for s in rounds], " ms")
            if name != peer and base.get("status") == "ok":
                ratios = [mine / theirs for mine, theirs in zip(rounds, base.get("rounds_s", [base["median_s"]]))]
                cell += f" ({float(np.median(ratios)):.2f}×{_spread(ratios, '×')})"
            cells.append(cell)
        lines.append(f"| {network} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _spread(values: list[float], unit: str) -> str:
    return f", {min(values):.2f}–{max(values):.2f}{unit}" if len(values) > 1 else ""


def bench_text(names, backends, with_torch: bool, quick: bool = False, repeat: int | None = None,
               rounds: int | None = None) -> str:
    """``fastconv bench --networks``: auto, ``backends`` and torch on the ``names`` networks, as text.

    ``quick`` runs 32×32 inputs once each, in one round (a smoke test), instead of 224×224 in
    ``rounds`` (default 3) rounds of one process per library.
    """
    libraries = ["auto", *backends] + (["torch"] if with_torch else [])
    side = 32 if quick else 224
    rounds = rounds or (1 if quick else 3)
    results = compare(names, libraries, side=side, repeat=repeat or (1 if quick else 5), rounds=rounds)
    how = (f"{rounds} rounds, each library in a new process each round, taking turns; the median of the rounds "
           f"(and their range)" if rounds > 1 else "each library in its own process; median time per pass")
    return (f"every conv layer of each network in sequence, batch 1, {side}x{side} float32; {how}\n"
            + format_comparison(results, peer="torch" if with_torch else libraries[0]))
