"""fastconv's CPU backends against their peers, each library timed in its own process.

For every case it prints fastconv's best-of-{im2col, numba_cpu} time, the peer's time (torch's
``conv2d`` for network layers, ``scipy.ndimage.correlate`` for the image filter) and the ratio
fastconv / peer (below 1: fastconv is faster), plus the machine's measured sgemm rate, which bounds
what any GEMM-based convolution can reach.

Cases: the conv2d layers of the canonical shapes fastconv ships
(:func:`fastconv.tools.cases.canonical_layers`), a ResNeXt grouped layer and a batched ResNet layer,
and a single-channel 2048×2048 image with a 5×5 kernel, padding "same"; float32 data from a fixed
seed (:func:`fastconv.tools.cases.make_inputs`), no bias.

Each library runs in a process of its own (:func:`fastconv.tools.isolated.time_isolated`), so that
one library's idle thread pool (OpenMP spin waits, OpenBLAS workers) cannot steal cores from
another's, and every library gets the same thread count (``--threads``). Times are medians by
fastconv's timing rule (:func:`fastconv.tools.bench.time_call`: a warm-up call, a settle pause and
30 ms of untimed calls, then up to ``--repeat`` calls within 1 s); the sgemm rate is
:func:`fastconv.tools.bench.sgemm_gflops` (2048³ float32, numpy), in a process of its own too.

Run it from the repository root with fastconv importable, on a quiet machine, e.g.::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/compare/compare_cpu.py

``--quick`` runs three tiny cases (one of each kind) instead, to check that the script works.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import sys
from pathlib import Path

from fastconv.tools import bench
from fastconv.tools.cases import Case, Skip, canonical_layers, make_inputs
from fastconv.tools.isolated import run_isolated, time_isolated

# Layers added to the canonical set, which has no grouped (non-depthwise) or batched layer.
EXTRA_LAYERS = [
    # ResNeXt-50 (32x4d) stage-2 grouped 3x3 convolution
    Case("resnext50_3x3_g32", (1, 128, 56, 56), (128, 4, 3, 3), padding=1, groups=32),
    # ResNet-50 stage-3 3x3 convolution on a batch of 8
    Case("resnet50_3x3_28_batch8", (8, 128, 28, 28), (128, 128, 3, 3), padding=1),
]

IMAGE_CASE = Case("image_2048_5x5_same", (1, 1, 2048, 2048), (1, 1, 5, 5), padding="same", group="image")

QUICK_CASES = [
    Case("tiny_3x3_8ch_16x16", (1, 8, 16, 16), (8, 8, 3, 3), padding=1, group="cnn"),
    Case("tiny_depthwise_8ch_16x16", (1, 8, 16, 16), (8, 1, 3, 3), padding=1, groups=8, group="depthwise"),
    Case("tiny_image_64_5x5_same", (1, 1, 64, 64), (1, 1, 5, 5), padding="same", group="image"),
]

# fastconv's backends here, then the peers: (library, timed as a peer?)
LIBRARIES = {"fastconv:im2col": False, "fastconv:numba_cpu": False, "torch": True, "scipy": True}

TARGETS = {"cnn": ("CNN layers vs torch", 2.0), "depthwise": ("depthwise vs torch", 1.0),
           "image": ("single-channel image vs scipy.ndimage", 0.1)}


@functools.lru_cache(maxsize=2)
def load_cases(quick: bool = False) -> list[Case]:
    """Every case, its kind ("cnn", "depthwise" or "image") in ``Case.group``."""
    if quick:
        return list(QUICK_CASES)
    cases = []
    for case in canonical_layers() + EXTRA_LAYERS:
        channels, groups = case.input_shape[1], case.groups
        kind = "depthwise" if groups == channels and groups > 1 else "cnn"
        cases.append(dataclasses.replace(case, group=kind))
    return cases + [IMAGE_CASE]


def build(name: str, library: str, quick: bool):
    """The call that times case ``name`` on ``library`` (in the library's own process)."""
    case = {case.name: case for case in load_cases(quick)}[name]
    x, w = make_inputs(case)
    if library == "scipy":
        if case.group != "image":
            raise Skip("scipy.ndimage is the peer of the image filter only")
        from scipy import ndimage

        image, kernel = x[0, 0], w[0, 0]
        # fastconv's "same" puts the odd padding unit after; for odd kernels both centre the kernel
        return lambda: ndimage.correlate(image, kernel, mode="constant")
    if library == "torch" and case.group == "image":
        raise Skip("scipy.ndimage is the image filter's peer")
    return bench.prepare_call(case, library.removeprefix("fastconv:"), x, w)


def median(result: dict) -> float | None:
    return result["median_s"] if result["status"] == "ok" else None


def geometric_mean(values):
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else float("nan")


def _ms(seconds: float | None, width: int) -> str:
    return f"{seconds * 1e3:{width}.2f}" if seconds is not None else f"{'n/a':>{width}s}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=25, help="timed calls per case (the median is kept)")
    parser.add_argument("--threads", type=int, default=2, help="threads for every library")
    parser.add_argument("--json", help="also write all timings to this file")
    parser.add_argument("--quick", action="store_true", help="three tiny cases: check that the script works")
    args = parser.parse_args(argv)

    cases = load_cases(args.quick)
    names = [case.name for case in cases]
    timings = {}
    for library, peer in LIBRARIES.items():
        print(f"timing {library} ...", file=sys.stderr, flush=True)
        results = time_isolated(build, names, library, args.quick, repeat=args.repeat, budget_s=1.0,
                                threads=args.threads, peer=peer)
        timings[library] = {name: median(result) for name, result in results.items()}
        failed = [f"{name}: {result['reason']}" for name, result in results.items() if result["status"] == "failed"]
        if failed:
            raise SystemExit(f"{library} failed on " + "; ".join(failed))
    sgemm = run_isolated(bench.sgemm_gflops, 256 if args.quick else 2048, threads=args.threads, peer=False)

    print(f"float32, {args.threads} threads, median of <= {args.repeat} calls; measured sgemm "
          f"({256 if args.quick else 2048}^3, numpy): {sgemm:.1f} GFLOP/s")
    print(f"{'case':26s} {'GFLOP':>7s} {'im2col ms':>10s} {'numba ms':>9s} {'peer ms':>8s} "
          f"{'ratio':>6s} {'GFLOP/s':>8s} {'%sgemm':>6s}")
    ratios = {kind: [] for kind in TARGETS}
    rows = []
    for case in cases:
        im2col_s = timings["fastconv:im2col"][case.name]
        numba_s = timings["fastconv:numba_cpu"][case.name]
        best = min(t for t in (im2col_s, numba_s) if t is not None)
        peer = timings["scipy" if case.group == "image" else "torch"][case.name]
        ratio = best / peer if peer is not None else None
        if ratio is not None:
            ratios[case.group].append(ratio)
        gflops = case.flops / best / 1e9
        rows.append(dict(case=case.name, kind=case.group, gflop=case.flops / 1e9, im2col_s=im2col_s,
                         numba_cpu_s=numba_s, peer_s=peer, ratio=ratio))
        print(f"{case.name:26s} {case.flops / 1e9:7.3f} {_ms(im2col_s, 10)} {_ms(numba_s, 9)} {_ms(peer, 8)} "
              f"{ratio if ratio is not None else float('nan'):6.2f} {gflops:8.1f} {100 * gflops / sgemm:5.0f}%")
    for kind, (label, target) in TARGETS.items():
        if not ratios[kind]:
            print(f"geometric-mean ratio, {label}: n/a (the peer is not installed)")
            continue
        mean = geometric_mean(ratios[kind])
        verdict = "met" if mean <= target else "MISSED"
        print(f"geometric-mean ratio, {label}: {mean:.2f} (target <= {target}: {verdict})")
    if args.json:
        Path(args.json).write_text(json.dumps({"sgemm_gflops": sgemm, "threads": args.threads, "rows": rows},
                                              indent=1))


if __name__ == "__main__":
    main()
