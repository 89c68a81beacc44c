"""fastconv's CPU backends against their peers, each library timed in its own process.

For every case it prints fastconv's best-of-{im2col, numba_cpu} time, the peer's time (torch's
``conv2d`` for network layers, ``scipy.ndimage.correlate`` for the image filter) and the ratio
fastconv / peer (below 1: fastconv is faster), plus the machine's measured sgemm rate, which bounds
what any GEMM-based convolution can reach.

Each library runs in a separate subprocess so that one library's idle thread pool (OpenMP spin
waits, OpenBLAS workers) cannot steal cores from another's. Every library gets the same thread
count (``--threads``, default 2: torch.set_num_threads, FASTCONV_NUM_THREADS, OpenBLAS). Times are
medians of up to ``--repeat`` calls within a 1 s budget (``fastconv.bench.time_call``), after a
warm-up call (which also compiles numba kernels). Data are float32 with a fixed seed.

Run it on a quiet machine, e.g.::

    flock -x /work/cpu.lock env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE \\
        python benchmarks/compare_cpu.py
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

# The canonical layer list: $FASTCONV_SHAPES, else the copy fastconv ships (fastconv/data).
SHAPES_CANDIDATES = [Path(p) for p in (os.environ.get("FASTCONV_SHAPES"),) if p] + [
    Path(__file__).resolve().parents[1] / "fastconv" / "data" / "shapes.json",
]

# Layers added to the shapes.json set where it has no example of a kind the issue asks for.
EXTRA_LAYERS = [
    # ResNeXt-50 (32x4d) stage-2 grouped 3x3 convolution
    {"name": "resnext50_3x3_g32", "N": 1, "C": 128, "H": 56, "W": 56, "K": 128, "R": 3, "S": 3,
     "stride": 1, "pad": 1, "dilation": 1, "groups": 32},
    # ResNet-50 stage-3 3x3 convolution on a batch of 8
    {"name": "resnet50_3x3_28_batch8", "N": 8, "C": 128, "H": 28, "W": 28, "K": 128, "R": 3, "S": 3,
     "stride": 1, "pad": 1, "dilation": 1, "groups": 1},
]

IMAGE_CASE = {"name": "image_2048_5x5_same", "N": 1, "C": 1, "H": 2048, "W": 2048, "K": 1, "R": 5, "S": 5,
              "stride": 1, "pad": "same", "dilation": 1, "groups": 1}


def load_cases():
    """Every case: shapes.json's conv2d layers, EXTRA_LAYERS and the image filter, with a ``kind``."""
    for path in SHAPES_CANDIDATES:
        if path.is_file():
            layers = json.loads(path.read_text())["conv2d"]
            break
    else:
        raise SystemExit(f"shapes.json not found at {SHAPES_CANDIDATES}; set FASTCONV_SHAPES=/path/to/shapes.json")
    cases = []
    for layer in layers + EXTRA_LAYERS:
        kind = "depthwise" if layer["groups"] == layer["C"] and layer["groups"] > 1 else "cnn"
        cases.append(dict(layer, kind=kind))
    cases.append(dict(IMAGE_CASE, kind="image"))
    return cases


def flops(case):
    """Floating-point operations of direct convolution for a case."""
    out_h = _out_size(case, "H", "R")
    out_w = _out_size(case, "W", "S")
    return 2 * case["N"] * case["K"] * out_h * out_w * (case["C"] // case["groups"]) * case["R"] * case["S"]


def _out_size(case, size_key, kernel_key):
    if case["pad"] == "same":
        return -(-case[size_key] // case["stride"])
    extent = case["dilation"] * (case[kernel_key] - 1) + 1
    return (case[size_key] + 2 * case["pad"] - extent) // case["stride"] + 1


# ---------------------------------------------------------------------------------------------
# worker side: one process per library


def case_arrays(case):
    """Fixed-seed float32 (x, weight, bias) for a case."""
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.standard_normal((case["N"], case["C"], case["H"], case["W"]), dtype=np.float32)
    w = rng.standard_normal((case["K"], case["C"] // case["groups"], case["R"], case["S"]), dtype=np.float32)
    b = rng.standard_normal(case["K"], dtype=np.float32)
    return x, w, b


def _time(call, repeat):
    """Median seconds of up to ``repeat`` calls (1 s budget) after a warm-up call: fastconv's harness."""
    from fastconv.tools.bench import time_call

    call()  # warm-up: JIT compilation, plan caches, page faults
    return time_call(call, repeat=repeat, budget_s=1.0)[0]


def _worker_fastconv(backend, cases, repeat):
    import fastconv

    results = {}
    for case in cases:
        x, w, b = case_arrays(case)
        kwargs = dict(stride=case["stride"], padding=case["pad"], dilation=case["dilation"], groups=case["groups"])
        results[case["name"]] = _time(lambda: fastconv.conv2d(x, w, b, backend=backend, **kwargs), repeat)
    return results


def _worker_torch(cases, repeat, threads):
    import torch

    torch.set_num_threads(threads)
    results = {}
    with torch.no_grad():
        for case in cases:
            if case["kind"] == "image":
                continue
            x, w, b = (torch.from_numpy(a) for a in case_arrays(case))
            kwargs = dict(stride=case["stride"], padding=case["pad"], dilation=case["dilation"],
                          groups=case["groups"])
            results[case["name"]] = _time(lambda: torch.nn.functional.conv2d(x, w, b, **kwargs), repeat)
    return results


def _worker_scipy(cases, repeat):
    from scipy import ndimage

    results = {}
    for case in cases:
        if case["kind"] != "image":
            continue
        x, w, _ = case_arrays(case)
        image, kernel = x[0, 0], w[0, 0]
        # fastconv's "same" puts the odd padding unit after; for odd kernels both centre the kernel
        results[case["name"]] = _time(lambda: ndimage.correlate(image, kernel, mode="constant"), repeat)
    return results


def _worker_sgemm(repeat):
    import numpy as np
    from threadpoolctl import threadpool_limits

    size = 2048
    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size), dtype=np.float32)
    b = rng.standard_normal((size, size), dtype=np.float32)
    with threadpool_limits(int(os.environ["FASTCONV_NUM_THREADS"]), user_api="blas"):
        seconds = _time(lambda: a @ b, repeat)
    return {"sgemm_gflops": 2 * size**3 / seconds / 1e9}


def worker(library, repeat, threads):
    cases = load_cases()
    if library == "torch":
        return _worker_torch(cases, repeat, threads)
    if library == "scipy":
        return _worker_scipy(cases, repeat)
    if library == "sgemm":
        return _worker_sgemm(repeat)
    return _worker_fastconv(library.split(":", 1)[1], cases, repeat)


# ---------------------------------------------------------------------------------------------
# driver side


def run_library(library, repeat, threads):
    env = dict(os.environ, FASTCONV_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads),
               OPENBLAS_NUM_THREADS=str(threads))
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    command = [sys.executable, __file__, "--worker", library, "--repeat", str(repeat), "--threads", str(threads)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{library} worker failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def geometric_mean(values):
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else float("nan")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=25, help="timed calls per case (the median is kept)")
    parser.add_argument("--threads", type=int, default=2, help="threads for every library")
    parser.add_argument("--json", help="also write all timings to this file")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker, args.repeat, args.threads)))
        return

    libraries = ["fastconv:im2col", "fastconv:numba_cpu", "torch", "scipy", "sgemm"]
    timings = {}
    for library in libraries:
        print(f"timing {library} ...", file=sys.stderr, flush=True)
        timings[library] = run_library(library, args.repeat, args.threads)
    sgemm = timings["sgemm"]["sgemm_gflops"]

    header = (f"{'case':26s} {'GFLOP':>7s} {'im2col ms':>10s} {'numba ms':>9s} {'peer ms':>8s} "
              f"{'ratio':>6s} {'GFLOP/s':>8s} {'%sgemm':>6s}")
    print(f"float32, {args.threads} threads, median of <= {args.repeat} calls; measured sgemm (2048^3, numpy): "
          f"{sgemm:.1f} GFLOP/s")
    ratios = {"cnn": [], "depthwise": [], "image": []}
    rows = []
    print(header)
    for case in load_cases():
        case_name = case["name"]
        im2col_s = timings["fastconv:im2col"].get(case_name)
        numba_s = timings["fastconv:numba_cpu"].get(case_name)
        best = min(t for t in (im2col_s, numba_s) if t is not None)
        peer = timings["scipy" if case["kind"] == "image" else "torch"][case_name]
        ratio = best / peer
        ratios[case["kind"]].append(ratio)
        gflops = flops(case) / best / 1e9
        rows.append(dict(case=case_name, kind=case["kind"], gflop=flops(case) / 1e9, im2col_s=im2col_s,
                         numba_cpu_s=numba_s, peer_s=peer, ratio=ratio))
        print(f"{case_name:26s} {flops(case) / 1e9:7.3f} {im2col_s * 1e3:10.2f} {numba_s * 1e3:9.2f} "
              f"{peer * 1e3:8.2f} {ratio:6.2f} {gflops:8.1f} {100 * gflops / sgemm:5.0f}%")
    targets = {"cnn": ("CNN layers vs torch", 2.0), "depthwise": ("depthwise vs torch", 1.0),
               "image": ("single-channel image vs scipy.ndimage", 0.1)}
    for kind, (label, target) in targets.items():
        mean = geometric_mean(ratios[kind])
        verdict = "met" if mean <= target else "MISSED"
        print(f"geometric-mean ratio, {label}: {mean:.2f} (target <= {target}: {verdict})")
    if args.json:
        Path(args.json).write_text(json.dumps({"sgemm_gflops": sgemm, "threads": args.threads, "rows": rows},
                                              indent=1))


if __name__ == "__main__":
    main()
