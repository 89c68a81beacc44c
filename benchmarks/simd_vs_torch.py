"""fastconv's explicit-SIMD direct kernels against torch and OpenCV, each library in its own process.

For every case it prints the time of the SIMD kernels (``fastconv.backends._simd_direct``, called
the way the front end calls a backend), of ``backend="numba_cpu"`` and of ``backend="auto"``, the
peer's time (torch's ``conv2d`` for network layers, ``cv2.filter2D`` for the single-channel image
filters) and each time divided by the peer's (below 1: fastconv is faster). Times are medians of up
to ``--repeat`` calls within a 1 s budget after a warm-up call (which compiles the kernels), on
float32 data from a fixed seed, with ``--threads`` threads for every library (torch.set_num_threads,
cv2.setNumThreads, FASTCONV_NUM_THREADS, OpenBLAS). ``--float64`` also times the SIMD kernels on
float64 data and prints float64 time / float32 time.

Each library runs in a separate subprocess (``compare_cpu.py``'s harness) so that one library's
idle thread pool cannot steal cores from another's. The libraries take turns for ``--rounds``
rounds and each keeps its best median, so that a burst of load from elsewhere on a shared machine
slows one round of one library, not the comparison. Run it on a quiet machine, e.g.::

    flock -x /work/cpu.lock python benchmarks/simd_vs_torch.py
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_cpu import SHAPES_CANDIDATES, _time, case_arrays, flops, geometric_mean  # noqa: E402

#: Layers of shapes.json timed here, by name.
SHAPES_LAYERS = ["resnet50_3x3_56", "vgg_conv2", "vgg_conv5", "resnet50_conv1", "mobilenetv2_dw_56",
                 "mobilenetv2_dw_s2", "deeplabv3_aspp_d12", "resnet50_1x1_expand", "resnet50_1x1_down_s2",
                 "mobilenetv2_pw"]

#: Layer kinds shapes.json lacks.
EXTRA_LAYERS = [
    # EfficientNet-B0 block 3b: 5x5 depthwise on 240 channels at 28x28 (batch 4)
    {"name": "efficientnet_b0_dw5x5_28", "N": 4, "C": 240, "H": 28, "W": 28, "K": 240, "R": 5, "S": 5,
     "stride": 1, "pad": 2, "dilation": 1, "groups": 240},
    # ResNeXt-50 (32x4d) stage 3: grouped 3x3, 8 channels per group
    {"name": "resnext50_3x3_g32_28", "N": 1, "C": 256, "H": 28, "W": 28, "K": 256, "R": 3, "S": 3,
     "stride": 1, "pad": 1, "dilation": 1, "groups": 32},
    # ResNet-50 (v1.5) stage 3, first block: the 3x3 convolution with stride 2
    {"name": "resnet50_3x3_s2", "N": 1, "C": 128, "H": 56, "W": 56, "K": 128, "R": 3, "S": 3,
     "stride": 2, "pad": 1, "dilation": 1, "groups": 1},
]

IMAGE_CASES = [
    {"name": "image_2048_5x5", "N": 1, "C": 1, "H": 2048, "W": 2048, "K": 1, "R": 5, "S": 5,
     "stride": 1, "pad": 2, "dilation": 1, "groups": 1},
    {"name": "image_2048_11x11", "N": 1, "C": 1, "H": 2048, "W": 2048, "K": 1, "R": 11, "S": 11,
     "stride": 1, "pad": 5, "dilation": 1, "groups": 1},
]


def load_cases():
    for path in SHAPES_CANDIDATES:
        if path.is_file():
            layers = {layer["name"]: layer for layer in json.loads(path.read_text())["conv2d"]}
            break
    else:
        raise SystemExit(f"shapes.json not found at {SHAPES_CANDIDATES}")
    cases = [dict(layers[name], kind="layer") for name in SHAPES_LAYERS]
    cases += [dict(layer, kind="layer") for layer in EXTRA_LAYERS]
    cases += [dict(case, kind="image") for case in IMAGE_CASES]
    return cases


def _kwargs(case):
    return dict(stride=case["stride"], padding=case["pad"], dilation=case["dilation"], groups=case["groups"])


# ---------------------------------------------------------------------------------------------
# worker side: one process per library


def _worker_simd(cases, repeat, dtype):
    import numpy as np

    from fastconv.backends import _simd_direct
    from fastconv.geometry import make_spec

    results = {}
    for case in cases:
        x, w, b = (np.ascontiguousarray(a, dtype=dtype) for a in case_arrays(case))

        def call():  # what the front end does for a backend: validate, then run on contiguous arrays
            spec = make_spec(x.shape, w.shape, dtype=x.dtype, **_kwargs(case))
            return _simd_direct.run(x, w, b, spec)

        results[case["name"]] = _time(call, repeat)
    return results


def _worker_fastconv(backend, cases, repeat):
    import fastconv

    results = {}
    for case in cases:
        x, w, b = case_arrays(case)
        results[case["name"]] = _time(lambda: fastconv.conv2d(x, w, b, backend=backend, **_kwargs(case)), repeat)
    return results


def _worker_torch(cases, repeat, threads):
    import torch

    torch.set_num_threads(threads)
    results = {}
    with torch.no_grad():
        for case in cases:
            x, w, b = (torch.from_numpy(a) for a in case_arrays(case))
            results[case["name"]] = _time(lambda: torch.nn.functional.conv2d(x, w, b, **_kwargs(case)), repeat)
    return results


def _worker_cv2(cases, repeat, threads):
    import cv2

    cv2.setNumThreads(threads)
    results = {}
    for case in cases:
        if case["kind"] != "image":
            continue
        x, w, _ = case_arrays(case)
        image, kernel = x[0, 0], w[0, 0]
        # correlation (no flip) centred on the kernel with zero borders: conv2d's 'same' for odd kernels
        results[case["name"]] = _time(
            lambda: cv2.filter2D(image, -1, kernel, borderType=cv2.BORDER_CONSTANT), repeat)
    return results


def worker(library, repeat, threads):
    cases = load_cases()
    if library == "torch":
        return _worker_torch(cases, repeat, threads)
    if library == "cv2":
        return _worker_cv2(cases, repeat, threads)
    if library.startswith("simd:"):
        return _worker_simd(cases, repeat, library.split(":", 1)[1])
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
        print(f"{library} worker failed:\n{done.stderr[-3000:]}", file=sys.stderr)
        return {}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=25, help="timed calls per case (the median is kept)")
    parser.add_argument("--threads", type=int, default=2, help="threads for every library")
    parser.add_argument("--rounds", type=int, default=3, help="turns each library takes (its best median is kept)")
    parser.add_argument("--float64", action="store_true", help="also time the SIMD kernels on float64")
    parser.add_argument("--json", help="also write all timings to this file")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker, args.repeat, args.threads)))
        return

    libraries = ["simd:float32", "fastconv:numba_cpu", "fastconv:auto", "torch", "cv2"]
    libraries += ["simd:float64"] if args.float64 else []
    timings = {library: {} for library in libraries}
    for round_index in range(args.rounds):
        for library in libraries:
            print(f"round {round_index + 1}: timing {library} ...", file=sys.stderr, flush=True)
            for name, seconds in run_library(library, args.repeat, args.threads).items():
                timings[library][name] = min(seconds, timings[library].get(name, seconds))

    def ms(seconds):
        return f"{seconds * 1e3:9.3f}" if seconds is not None else f"{'n/a':>9s}"

    def ratio(seconds, peer):
        return f"{seconds / peer:6.2f}" if seconds is not None and peer else f"{'n/a':>6s}"

    print(f"float32, {args.threads} threads, best of {args.rounds} rounds of a median of <= {args.repeat} calls; "
          f"ratio = time / peer's time")
    print(f"{'case':26s} {'GFLOP':>6s} {'simd ms':>9s} {'numba ms':>9s} {'auto ms':>9s} {'peer':>5s} "
          f"{'peer ms':>9s} {'simd':>6s} {'numba':>6s} {'auto':>6s} {'GF/s':>6s}"
          + (f" {'f64/f32':>7s}" if args.float64 else ""))
    ratios = {"simd": [], "numba": [], "auto": []}
    rows = []
    for case in load_cases():
        name = case["name"]
        simd_s = timings["simd:float32"].get(name)
        numba_s = timings["fastconv:numba_cpu"].get(name)
        auto_s = timings["fastconv:auto"].get(name)
        peer_name = "cv2" if case["kind"] == "image" else "torch"
        peer_s = timings[peer_name].get(name)
        row = dict(case=name, kind=case["kind"], gflop=flops(case) / 1e9, simd_s=simd_s, numba_cpu_s=numba_s,
                   auto_s=auto_s, peer=peer_name, peer_s=peer_s, torch_s=timings["torch"].get(name))
        line = (f"{name:26s} {flops(case) / 1e9:6.3f} {ms(simd_s)} {ms(numba_s)} {ms(auto_s)} {peer_name:>5s} "
                f"{ms(peer_s)} {ratio(simd_s, peer_s)} {ratio(numba_s, peer_s)} {ratio(auto_s, peer_s)} "
                f"{flops(case) / simd_s / 1e9 if simd_s else float('nan'):6.1f}")
        if args.float64:
            f64 = timings["simd:float64"].get(name)
            row["simd_float64_s"] = f64
            line += f" {ratio(f64, simd_s):>7s}"
        print(line)
        rows.append(row)
        if case["kind"] == "layer" and peer_s:
            for key, seconds in (("simd", simd_s), ("numba", numba_s), ("auto", auto_s)):
                if seconds is not None:
                    ratios[key].append(seconds / peer_s)
    print("geometric mean over the layers vs torch: " + ", ".join(
        f"{key} {geometric_mean(values):.2f}" for key, values in ratios.items()))
    worst = max(((row["simd_s"] / row["peer_s"], row["case"]) for row in rows
                 if row["kind"] == "layer" and row["simd_s"] and row["peer_s"]), default=None)
    if worst:
        print(f"slowest simd layer vs torch: {worst[1]} at {worst[0]:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"threads": args.threads, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
