"""Winograd vs torch.nn.functional.conv2d on the 3×3 layers of shapes.json, each in its own process.

Prints, per layer: best-of-N milliseconds for each library, the ratio winograd / torch, the
effective GFLOP/s (direct-convolution flops / time), and winograd's time per stage (input
transform, GEMMs, output transform); then the geometric-mean ratio, the machine's sgemm GFLOP/s
(numpy matmul, 2048³ float32) and the measured relative error of each tile size and dtype.

Each library runs in a fresh subprocess (an idle BLAS or OpenMP pool of one would otherwise spin
on the cores the other needs); both use ``--threads`` threads (torch.set_num_threads, fastconv's
config.threads). Run on a quiet machine, with the OpenBLAS tuning variables unset::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/compare_winograd.py
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import timeit
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHAPES = Path(os.environ.get("FASTCONV_SHAPES", ROOT.parent.parent / "shared" / "shapes.json"))
LAYERS = ["resnet50_3x3_56", "vgg_conv2", "vgg_conv5", "deeplabv3_aspp_d12"]


def load_layers(path: Path = SHAPES) -> list[dict]:
    """The 3×3 layers this comparison uses, plus ResNet's 3×3 layer at batch 8."""
    if not path.exists():
        path = Path("/work/shared/shapes.json")
    by_name = {layer["name"]: layer for layer in json.loads(path.read_text())["conv2d"]}
    layers = [by_name[name] for name in LAYERS]
    layers.append(dict(by_name["resnet50_3x3_56"], name="resnet50_3x3_56_batch8", N=8))
    return layers


def _operands(layer, dtype=np.float32):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((layer["N"], layer["C"], layer["H"], layer["W"])).astype(dtype)
    w = rng.standard_normal((layer["K"], layer["C"] // layer["groups"], layer["R"], layer["S"])).astype(dtype)
    kwargs = dict(stride=layer["stride"], padding=layer["pad"], dilation=layer["dilation"], groups=layer["groups"])
    return x, w, kwargs


def best_time(function, repeat: int) -> float:
    """Smallest wall time of ``repeat`` calls after two untimed warm-ups (JIT, caches)."""
    function()
    function()
    return min(timeit.repeat(function, number=1, repeat=repeat))


# --------------------------------------------------------------------------------------------
# workers (each runs in its own process)


def worker_torch(layers, threads, repeat):
    import torch

    torch.set_num_threads(threads)
    results = {}
    with torch.no_grad():
        for layer in layers:
            x, w, kwargs = _operands(layer)
            xt, wt = torch.from_numpy(x), torch.from_numpy(w)
            results[layer["name"]] = best_time(lambda: torch.nn.functional.conv2d(xt, wt, **kwargs), repeat)
    return results


def worker_winograd(layers, threads, repeat):
    sys.path.insert(0, str(ROOT))
    import fastconv
    from fastconv.backends import winograd
    from fastconv.geometry import make_spec

    fastconv.config.set_threads(threads)
    results = {}
    for layer in layers:
        x, w, kwargs = _operands(layer)
        total = best_time(lambda: fastconv.conv2d(x, w, backend="winograd", **kwargs), repeat)
        spec = make_spec(x.shape, w.shape, dtype=np.float32, **kwargs)
        results[layer["name"]] = dict(total=total, tile=winograd.choose_tile(spec),
                                      **_stage_times(winograd, x, w, spec, repeat))
    return results


def _stage_times(winograd, x, w, spec, repeat):
    """Time each stage of the pipeline alone on the whole image (one chunk).

    The input stage includes copying the input channels-last (zero-padded), the output stage
    copying the result back to NCHW.
    """
    m = winograd.choose_tile(spec)
    alpha = m + 2
    filters = winograd._cached_filter_transform(w, m, spec.groups)
    origins = winograd._tile_origins(spec, m)
    tiles = len(origins)
    inputs = np.zeros((alpha * alpha, spec.groups, tiles, spec.in_channels_per_group), np.float32)
    products = np.zeros((alpha * alpha, spec.groups, tiles, spec.out_channels_per_group), np.float32)
    out = np.empty(spec.out_shape, np.float32)
    bias = np.zeros(spec.out_channels, np.float32)
    from fastconv import config

    def input_stage():
        x_pad, _ = winograd._channels_last_buffers(x, spec, origins, m)
        winograd._in_parallel(config.threads, tiles, lambda a, b: (
            winograd._input_transform(x_pad, origins, *spec.dilation, inputs, a, b)))

    def output_stage():
        winograd._in_parallel(config.threads, tiles, lambda a, b: (
            winograd._output_transform(products, origins, *spec.dilation, bias, out_pad, a, b)))
        winograd._in_parallel(config.threads, spec.batch * spec.out_height, lambda a, b: (
            winograd._unpack_channels_first(out_pad, out, a, b)))

    with winograd._single_threaded_blas():
        _, out_pad = winograd._channels_last_buffers(x, spec, origins, m)
        return dict(
            input_transform=best_time(input_stage, repeat),
            gemm=best_time(lambda: winograd._batched_gemm(inputs, filters, products, config.threads), repeat),
            output_transform=best_time(output_stage, repeat),
            filter_transform=best_time(lambda: winograd._transform_filters(w, m, spec.groups), 3),
        )


def worker_sgemm(threads):
    from threadpoolctl import threadpool_limits

    a = np.random.default_rng(0).standard_normal((2048, 2048)).astype(np.float32)
    with threadpool_limits(threads, user_api="blas"):
        seconds = best_time(lambda: a @ a, 5)
    return 2 * 2048**3 / seconds / 1e9


def worker_errors(layers):
    """Relative error (max |err| / max |ref|) of each tile and dtype against the float64 reference."""
    sys.path.insert(0, str(ROOT))
    import fastconv
    from fastconv.backends import winograd
    from fastconv.geometry import make_spec

    errors = {}
    for layer in layers[:1] + layers[2:3]:  # resnet (C=64) and vgg_conv5 (C=512)
        x, w, kwargs = _operands(layer, np.float64)
        reference = fastconv.conv2d(x, w, backend="naive", **kwargs)
        scale = np.abs(reference).max()
        for dtype in (np.float32, np.float64):
            spec = make_spec(x.shape, w.shape, dtype=dtype, **kwargs)
            for tile in (2, 4):
                out = winograd.run(x.astype(dtype), w.astype(dtype), None, spec, tile=tile)
                errors[f"{layer['name']} {np.dtype(dtype).name} F({tile}x{tile})"] = float(
                    np.abs(out - reference).max() / scale)
    return errors


# --------------------------------------------------------------------------------------------


def _in_subprocess(role, args):
    command = [sys.executable, __file__, "--worker", role, "--threads", str(args.threads), "--repeat", str(args.repeat)]
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--worker", choices=["torch", "winograd", "sgemm", "errors"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    layers = load_layers()
    if args.worker:
        result = {"torch": lambda: worker_torch(layers, args.threads, args.repeat),
                  "winograd": lambda: worker_winograd(layers, args.threads, args.repeat),
                  "sgemm": lambda: worker_sgemm(args.threads),
                  "errors": lambda: worker_errors(layers)}[args.worker]()
        print(json.dumps(result))
        return 0

    torch_times = _in_subprocess("torch", args)
    ours = _in_subprocess("winograd", args)
    sgemm = _in_subprocess("sgemm", args)
    print(f"threads {args.threads}, best of {args.repeat}; sgemm (numpy matmul 2048^3 float32): {sgemm:.0f} GFLOP/s\n")
    print(f"{'layer':<24} {'tile':>4} {'torch ms':>9} {'winograd ms':>11} {'ratio':>6} {'torch GF/s':>10} "
          f"{'wino GF/s':>9}   {'in':>6} {'gemm':>6} {'out':>6}  (ms, stages alone)")
    sys.path.insert(0, str(ROOT))
    from fastconv.geometry import make_spec  # numpy only: starts no thread pool in this process

    ratios = []
    for layer in layers:
        name = layer["name"]
        x_shape, w_shape = (layer["N"], layer["C"], layer["H"], layer["W"]), (layer["K"], layer["C"], 3, 3)
        flops = make_spec(x_shape, w_shape, padding=layer["pad"], dilation=layer["dilation"]).flops
        mine, theirs = ours[name], torch_times[name]
        ratios.append(mine["total"] / theirs)
        print(f"{name:<24} {mine['tile']:>4} {theirs * 1e3:9.2f} {mine['total'] * 1e3:11.2f} {ratios[-1]:6.2f} "
              f"{flops / theirs / 1e9:10.0f} {flops / mine['total'] / 1e9:9.0f}   "
              f"{mine['input_transform'] * 1e3:6.2f} {mine['gemm'] * 1e3:6.2f} {mine['output_transform'] * 1e3:6.2f}")
    print(f"\ngeometric-mean ratio winograd / torch: {math.exp(sum(map(math.log, ratios)) / len(ratios)):.2f}")
    print("\nrelative error max|out - ref| / max|ref| against the float64 reference (naive backend):")
    for case, error in _in_subprocess("errors", args).items():
        print(f"  {case:<40} {error:.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
