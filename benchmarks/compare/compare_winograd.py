"""Winograd vs torch.nn.functional.conv2d on canonical 3×3 layers, each in its own process.

Prints, per layer: the median milliseconds of each library, the ratio winograd / torch, the
effective GFLOP/s (direct-convolution flops / time), and winograd's time per stage (input
transform, GEMMs, output transform; :func:`fastconv.backends.winograd.stages`); then the
geometric-mean ratio, the machine's sgemm GFLOP/s (:func:`fastconv.tools.bench.sgemm_gflops`,
2048³ float32) and the measured relative error of each tile size and dtype.

Each library runs in a fresh process (:func:`fastconv.tools.isolated.time_isolated`: an idle BLAS
or OpenMP pool of one would otherwise spin on the cores the other needs); both use ``--threads``
threads (torch.set_num_threads, fastconv's config.threads). Times are medians by fastconv's timing
rule (:func:`fastconv.tools.bench.time_call`: a warm-up call, a settle pause and 30 ms of untimed
calls, then up to ``--repeat`` calls within 1 s). Run it from the repository root with fastconv
importable, on a quiet machine, with the OpenBLAS tuning variables unset::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/compare/compare_winograd.py

``--quick`` runs two tiny layers instead, to check that the script works.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys

import numpy as np

from fastconv.backends import winograd
from fastconv.tools import bench
from fastconv.tools.cases import Case, canonical_layers, make_inputs
from fastconv.tools.isolated import run_isolated, time_isolated

LAYERS = ["resnet50_3x3_56", "vgg_conv2", "vgg_conv5", "deeplabv3_aspp_d12"]
# layers whose accuracy is reported: 64 and 512 input channels
ERROR_LAYERS = ["resnet50_3x3_56", "vgg_conv5"]

QUICK_LAYERS = [Case("tiny_3x3_16ch_20x20", (1, 16, 20, 20), (16, 16, 3, 3), padding=1),
                Case("tiny_3x3_d2_batch2", (2, 16, 20, 20), (16, 16, 3, 3), padding=2, dilation=2)]


def load_layers(quick: bool = False) -> list[Case]:
    """The 3×3 layers this comparison uses, plus ResNet's 3×3 layer at batch 8."""
    if quick:
        return list(QUICK_LAYERS)
    by_name = {case.name: case for case in canonical_layers()}
    resnet = by_name["resnet50_3x3_56"]
    return [by_name[name] for name in LAYERS] + [
        dataclasses.replace(resnet, name="resnet50_3x3_56_batch8", input_shape=(8, *resnet.input_shape[1:]))]


def build(name: str, library: str, quick: bool):
    """The call that times layer ``name`` on ``library`` ("torch" or "winograd")."""
    case = {case.name: case for case in load_layers(quick)}[name]
    return bench.prepare_call(case, library, *make_inputs(case))


def stage_times(quick: bool, repeat: int) -> dict:
    """Per layer, winograd's tile and the median seconds of each stage run alone on the whole image."""
    results = {}
    for case in load_layers(quick):
        x, w = make_inputs(case)
        spec = case.spec()
        with winograd.stages(x, w, None, spec) as calls:
            results[case.name] = {"tile": winograd.choose_tile(spec)}
            for stage, call in calls.items():
                call()  # warm-up: JIT compilation, first touch of the buffers
                results[case.name][stage] = bench.time_call(call, repeat=repeat, budget_s=1.0)[0]
    return results


def errors(quick: bool) -> dict:
    """Relative error (max |err| / max |ref|) of each tile and dtype against the float64 reference."""
    import fastconv

    layers = load_layers(quick)
    errors = {}
    for case in layers[:1] if quick else [case for case in layers if case.name in ERROR_LAYERS]:
        case = dataclasses.replace(case, dtype="float64")
        x, w = make_inputs(case)
        reference = fastconv.conv2d(x, w, backend="naive", **case.conv_kwargs())
        scale = np.abs(reference).max()
        for dtype in (np.float32, np.float64):
            spec = dataclasses.replace(case, dtype=np.dtype(dtype).name).spec()
            for tile in (2, 4):
                out = winograd.run(x.astype(dtype), w.astype(dtype), None, spec, tile=tile)
                errors[f"{case.name} {np.dtype(dtype).name} F({tile}x{tile})"] = float(
                    np.abs(out - reference).max() / scale)
    return errors


def _median(results: dict, name: str, library: str) -> float:
    result = results[name]
    if result["status"] != "ok":
        raise SystemExit(f"{library} {result['status']} on {name}: {result['reason']}")
    return result["median_s"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--quick", action="store_true", help="two tiny layers: check that the script works")
    args = parser.parse_args(argv)
    layers = load_layers(args.quick)
    names = [case.name for case in layers]
    timing = dict(repeat=args.repeat, budget_s=1.0, threads=args.threads)
    torch_results = time_isolated(build, names, "torch", args.quick, **timing)
    ours = time_isolated(build, names, "winograd", args.quick, **timing, peer=False)
    stages = run_isolated(stage_times, args.quick, args.repeat, threads=args.threads, peer=False)
    size = 256 if args.quick else 2048
    sgemm = run_isolated(bench.sgemm_gflops, size, threads=args.threads, peer=False)
    print(f"threads {args.threads}, median of <= {args.repeat}; sgemm (numpy matmul {size}^3 float32): "
          f"{sgemm:.0f} GFLOP/s\n")
    print(f"{'layer':<24} {'tile':>4} {'torch ms':>9} {'winograd ms':>11} {'ratio':>6} {'torch GF/s':>10} "
          f"{'wino GF/s':>9}   {'in':>6} {'gemm':>6} {'out':>6}  (ms, stages alone)")
    ratios = []
    for case in layers:
        name, mine = case.name, stages[case.name]
        total = _median(ours, name, "winograd")
        theirs = torch_results[name].get("median_s")  # None: torch is not installed
        if theirs is not None:
            ratios.append(total / theirs)
        torch_ms = f"{theirs * 1e3:9.2f}" if theirs else f"{'n/a':>9s}"
        ratio = f"{total / theirs:6.2f}" if theirs else f"{'n/a':>6s}"
        torch_rate = f"{case.flops / theirs / 1e9:10.0f}" if theirs else f"{'n/a':>10s}"
        print(f"{name:<24} {mine['tile']:>4} {torch_ms} {total * 1e3:11.2f} {ratio} {torch_rate} "
              f"{case.flops / total / 1e9:9.0f}   {mine['input_transform'] * 1e3:6.2f} {mine['gemm'] * 1e3:6.2f} "
              f"{mine['output_transform'] * 1e3:6.2f}")
    if ratios:
        print(f"\ngeometric-mean ratio winograd / torch: {math.exp(sum(map(math.log, ratios)) / len(ratios)):.2f}")
    else:
        print(f"\ntorch not timed: {torch_results[names[0]]['reason']}")
    print("\nrelative error max|out - ref| / max|ref| against the float64 reference (naive backend):")
    for case, error in run_isolated(errors, args.quick, threads=args.threads, peer=False).items():
        print(f"  {case:<40} {error:.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
