"""Time conv_transpose2d and pooling against torch (CPU), each library in its own process.

Every library runs in a fresh process (:func:`fastconv.tools.isolated.time_isolated`: an idle BLAS
or OpenMP pool left behind by one library spins and steals cores from the next), on the same
float32 data from a fixed seed (:func:`fastconv.tools.cases.make_inputs`), with the same thread
count (2: fastconv's ``config.threads``, ``torch.set_num_threads``). Each case is timed by
fastconv's timing rule (:func:`fastconv.tools.bench.time_call`: a warm-up call, a settle pause and
30 ms of untimed calls, then the median of at least 7 calls); the ratio is fastconv time / torch
time (<= 1 means fastconv is as fast). fastconv runs with ``backend="auto"``.

Run it from the repository root with fastconv importable, on a quiet machine::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/compare/compare_family.py

Cases: conv_transpose2d on the DCGAN generator layer of the canonical shapes (the copy fastconv
ships, or ``--shapes``) plus two decoder layers (U-Net's 2×2/s2 up-convolution, an autoencoder's
3×3/s2 decoder with output_padding); max/avg pooling on 1×64×112×112 with 3×3 windows, stride 2
(ResNet's stem pooling, padding 1, and unpadded). ``--quick`` runs tiny versions of each kind.
"""

from __future__ import annotations

import argparse
import functools
import json
from pathlib import Path

import numpy as np

import fastconv
from fastconv.tools import bench
from fastconv.tools.cases import Case, Skip, make_inputs, shapes
from fastconv.tools.isolated import time_isolated

THREADS = 2
REPEAT = 7

EXTRA_TRANSPOSED = [
    Case("unet_up_2x2_s2", (1, 256, 32, 32), (256, 128, 2, 2), stride=2, op="conv_transpose2d"),
    Case("autoenc_3x3_s2_op1", (1, 64, 56, 56), (64, 32, 3, 3), stride=2, padding=1, output_padding=1,
         op="conv_transpose2d"),
]
# (name, kind, input shape, window, stride, padding)
POOLING = [(f"{kind}_pool_3x3_s2_p{pad}_1x64x112x112", kind, (1, 64, 112, 112), 3, 2, pad)
           for kind in ("max", "avg") for pad in (1, 0)]

QUICK_TRANSPOSED = [Case("tiny_transposed_4x4_s2", (1, 8, 8, 8), (8, 4, 4, 4), stride=2, padding=1,
                         op="conv_transpose2d")]
QUICK_POOLING = [(f"tiny_{kind}_pool_3x3_s2_p1", kind, (1, 8, 16, 16), 3, 2, 1) for kind in ("max", "avg")]


def transposed_layers(shapes_path: str | None) -> list[Case]:
    """The conv_transpose2d layers of shapes.json (fastconv's copy when ``shapes_path`` is None)."""
    layers = json.loads(Path(shapes_path).read_text()) if shapes_path else shapes()
    return [Case(layer["name"], (layer["N"], layer["C"], layer["H"], layer["W"]),
                 (layer["C"], layer["K"] // layer["groups"], layer["R"], layer["S"]), stride=layer["stride"],
                 padding=layer["pad"], dilation=layer["dilation"], groups=layer["groups"],
                 output_padding=layer["output_padding"], op="conv_transpose2d")
            for layer in layers["conv_transpose2d"]]


@functools.lru_cache(maxsize=4)
def cases(shapes_path: str | None, quick: bool = False) -> tuple[list[Case], list[tuple]]:
    """(the conv_transpose2d cases, the pooling cases)."""
    if quick:
        return QUICK_TRANSPOSED, QUICK_POOLING
    return transposed_layers(shapes_path) + EXTRA_TRANSPOSED, POOLING


def build(name: str, library: str, shapes_path: str | None, quick: bool):
    """The call that times case ``name`` with ``library`` ("torch" or "fastconv")."""
    transposed, pooling = cases(shapes_path, quick)
    by_name = {case.name: case for case in transposed}
    if name in by_name:
        case = by_name[name]
        x, w = make_inputs(case)
        if library == "torch":
            return bench.prepare_call(case, "torch", x, w)
        return functools.partial(fastconv.conv_transpose2d, x, w, **case.conv_kwargs())
    _, kind, shape, window, stride, padding = next(entry for entry in pooling if entry[0] == name)
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    if library == "torch":
        try:
            import torch
        except ImportError:
            raise Skip("torch is not installed") from None
        from fastconv import config

        torch.set_num_threads(config.threads)
        x, functions = torch.from_numpy(x), torch.nn.functional
    else:
        functions = fastconv
    pool = functions.max_pool2d if kind == "max" else functions.avg_pool2d
    return functools.partial(pool, x, window, stride, padding)


def torch_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("torch")
    except metadata.PackageNotFoundError:
        return "(not installed)"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="conv_transpose2d and pooling: fastconv vs torch, as ratios")
    parser.add_argument("--shapes", type=Path, default=None,
                        help="shapes.json holding the DCGAN layer (default: the copy fastconv ships)")
    parser.add_argument("--quick", action="store_true", help="tiny cases: check that the script works")
    args = parser.parse_args(argv)
    shapes_path = str(args.shapes) if args.shapes else None
    transposed, pooling = cases(shapes_path, args.quick)
    names = [case.name for case in transposed] + [entry[0] for entry in pooling]
    runs = {library: time_isolated(build, names, library, shapes_path, args.quick, repeat=REPEAT, budget_s=1.0,
                                   threads=THREADS, peer=library != "fastconv")
            for library in ("torch", "fastconv")}
    print(f"fastconv {fastconv.__version__} vs torch {torch_version()}, float32, {THREADS} threads "
          f"each, median of >= {REPEAT} calls; ratio = fastconv / torch")
    print("| case | torch (ms) | fastconv (ms) | ratio |\n|---|---:|---:|---:|")
    for name in names:
        torch_result, ours = runs["torch"][name], runs["fastconv"][name]
        if ours["status"] != "ok":
            raise SystemExit(f"fastconv {ours['status']} on {name}: {ours['reason']}")
        ours = ours["median_s"]
        if torch_result["status"] != "ok":
            print(f"| {name} | n/a ({torch_result['reason']}) | {ours * 1e3:.3f} | n/a |")
            continue
        theirs = torch_result["median_s"]
        print(f"| {name} | {theirs * 1e3:.3f} | {ours * 1e3:.3f} | {ours / theirs:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
