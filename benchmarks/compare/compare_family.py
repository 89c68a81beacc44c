"""Time conv_transpose2d and pooling against torch (CPU), each library in its own process.

Every library runs in a fresh subprocess (an idle BLAS or OpenMP pool left behind by one library
spins and steals cores from the next), on the same float32 data from a fixed seed, with the same
thread count (2: torch.set_num_threads, numba's and OpenBLAS's pools). Each case is warmed up
(JIT compilation, first-touch allocation), then timed as the best of 7 repeats of enough calls
to last >= 50 ms; the ratio is fastconv time / torch time (<= 1 means fastconv is as fast).

    flock -x /work/cpu.lock env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE \\
        PYTHONPATH=$PWD python benchmarks/compare_family.py

Cases: conv_transpose2d on the DCGAN generator layer of ``shapes.json`` (``--shapes``) plus two
decoder layers (U-Net's 2×2/s2 up-convolution, an autoencoder's 3×3/s2 decoder with
output_padding); max/avg pooling on 1×64×112×112 with 3×3 windows, stride 2 (ResNet's stem
pooling, padding 1, and unpadded).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

THREADS = 2
# the team's canonical shapes: the nearest ``shared/shapes.json`` above this file
SHAPES = next((parent / "shared" / "shapes.json" for parent in Path(__file__).resolve().parents
               if (parent / "shared" / "shapes.json").exists()), Path("shared/shapes.json"))

EXTRA_TRANSPOSED = [
    {"name": "unet_up_2x2_s2", "N": 1, "C": 256, "H": 32, "W": 32, "K": 128, "R": 2, "S": 2, "stride": 2, "pad": 0,
     "output_padding": 0, "dilation": 1, "groups": 1},
    {"name": "autoenc_3x3_s2_op1", "N": 1, "C": 64, "H": 56, "W": 56, "K": 32, "R": 3, "S": 3, "stride": 2,
     "pad": 1, "output_padding": 1, "dilation": 1, "groups": 1},
]
POOLING = [
    {"name": f"{kind}_pool_3x3_s2_p{pad}_1x64x112x112", "kind": kind, "shape": [1, 64, 112, 112], "kernel": 3,
     "stride": 2, "pad": pad}
    for kind in ("max", "avg") for pad in (1, 0)
]


def cases(shapes_path: Path) -> list[dict]:
    if not shapes_path.exists():
        raise SystemExit(f"{shapes_path} not found: pass --shapes path/to/shapes.json")
    transposed = json.loads(shapes_path.read_text())["conv_transpose2d"]
    return ([dict(case, op="conv_transpose2d") for case in transposed + EXTRA_TRANSPOSED]
            + [dict(case, op="pool") for case in POOLING])


def _best_time(function) -> float:
    """Seconds per call: best of 7 repeats, each of enough calls to last >= 50 ms."""
    function()
    start, calls = time.perf_counter(), 0
    while time.perf_counter() - start < 0.2:  # warm up
        function()
        calls += 1
    number = max(1, int(0.05 * calls / (time.perf_counter() - start)))
    best = float("inf")
    for _ in range(7):
        start = time.perf_counter()
        for _ in range(number):
            function()
        best = min(best, (time.perf_counter() - start) / number)
    return best


def _worker(library: str, all_cases: list[dict]) -> dict:
    import numpy as np

    if library == "torch":
        import torch

        torch.set_num_threads(THREADS)
        functional = torch.nn.functional
        version = torch.__version__
    else:
        import numba

        import fastconv

        numba.set_num_threads(THREADS)
        version = fastconv.__version__
    results = {}
    for case in all_cases:
        rng = np.random.default_rng(0)
        if case["op"] == "conv_transpose2d":
            x = rng.standard_normal((case["N"], case["C"], case["H"], case["W"]), dtype=np.float32)
            w = rng.standard_normal((case["C"], case["K"] // case["groups"], case["R"], case["S"]), dtype=np.float32)
            kwargs = dict(stride=case["stride"], padding=case["pad"], output_padding=case["output_padding"],
                          dilation=case["dilation"], groups=case["groups"])
            if library == "torch":
                tx, tw = torch.from_numpy(x), torch.from_numpy(w)
                function = lambda: functional.conv_transpose2d(tx, tw, **kwargs)  # noqa: E731
            else:
                function = lambda: fastconv.conv_transpose2d(x, w, **kwargs)  # noqa: E731
        else:
            x = rng.standard_normal(case["shape"], dtype=np.float32)
            args = (case["kernel"], case["stride"], case["pad"])
            if library == "torch":
                tx = torch.from_numpy(x)
                pool = functional.max_pool2d if case["kind"] == "max" else functional.avg_pool2d
                function = lambda: pool(tx, *args)  # noqa: E731
            else:
                pool = fastconv.max_pool2d if case["kind"] == "max" else fastconv.avg_pool2d
                function = lambda: pool(x, *args)  # noqa: E731
        results[case["name"]] = _best_time(function)
    return {"library": library, "version": version, "times": results}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="conv_transpose2d and pooling: fastconv vs torch, as ratios")
    parser.add_argument("--shapes", type=Path, default=SHAPES, help="shapes.json holding the DCGAN layer")
    parser.add_argument("--worker", choices=["torch", "fastconv"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    all_cases = cases(args.shapes)
    if args.worker:
        print(json.dumps(_worker(args.worker, all_cases)))
        return 0
    env = dict(os.environ, OMP_NUM_THREADS=str(THREADS), OPENBLAS_NUM_THREADS=str(THREADS),
               NUMBA_NUM_THREADS=str(THREADS))
    runs = {}
    for library in ("torch", "fastconv"):
        completed = subprocess.run([sys.executable, __file__, "--worker", library, "--shapes", str(args.shapes)],
                                   env=env, capture_output=True, text=True, check=True)
        runs[library] = json.loads(completed.stdout.strip().splitlines()[-1])
    print(f"fastconv {runs['fastconv']['version']} vs torch {runs['torch']['version']}, float32, {THREADS} threads "
          f"each, best of 7; ratio = fastconv / torch")
    print(f"| case | torch (ms) | fastconv (ms) | ratio |\n|---|---:|---:|---:|")
    for case in all_cases:
        torch_time, ours = runs["torch"]["times"][case["name"]], runs["fastconv"]["times"][case["name"]]
        print(f"| {case['name']} | {torch_time * 1e3:.3f} | {ours * 1e3:.3f} | {ours / torch_time:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
