"""The ``fastconv`` command line (also ``python -m fastconv``).

``fastconv bench`` times every available backend on a built-in suite and prints a table;
``fastconv backends`` lists the registered backends and why any is unavailable.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np

# (name, input shape NCHW, weight shape KCRS, conv2d keyword arguments)
DEFAULT_SUITE = [
    ("image 512x512, 5x5", (1, 1, 512, 512), (1, 1, 5, 5), {"padding": "same"}),
    ("resnet 3x3, 64ch 28x28", (1, 64, 28, 28), (64, 64, 3, 3), {"padding": 1}),
    ("1x1, 64->128ch 28x28", (1, 64, 28, 28), (128, 64, 1, 1), {}),
    ("depthwise 3x3, 64ch 56x56", (1, 64, 56, 56), (64, 1, 3, 3), {"padding": 1, "groups": 64}),
    ("7x7 stride 2, 3->16ch 112x112", (1, 3, 112, 112), (16, 3, 7, 7), {"padding": 3, "stride": 2}),
]


def _time_call(function, repeat: int) -> float:
    """Median wall time of ``repeat`` calls, after one untimed warm-up call (JIT compile)."""
    function()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _bench(args) -> int:
    import fastconv
    from fastconv.dispatch import choose_backend
    from fastconv.geometry import make_spec

    rng = np.random.default_rng(0)
    names = [row.name for row in fastconv.list_backends() if row.available]
    if args.backends:
        unknown = sorted(set(args.backends) - set(names))
        if unknown:
            print(f"fastconv bench: error: unknown or unavailable backends {unknown}; available: {names}",
                  file=sys.stderr)
            return 2
        names = args.backends
    for title, x_shape, w_shape, kwargs in DEFAULT_SUITE:
        x = rng.standard_normal(x_shape).astype(np.float32)
        w = rng.standard_normal(w_shape).astype(np.float32)
        spec = make_spec(x_shape, w_shape, dtype=np.float32, **kwargs)
        print(f"\n{title}: input {x_shape}, weight {w_shape}, {kwargs}  "
              f"(auto picks {choose_backend(spec)})")
        print(f"  {'backend':<12} {'median ms':>10} {'GFLOP/s':>9}")
        for name in names:
            if fastconv.backends.get(name).supports(spec) is not None:
                print(f"  {name:<12} {'declines':>10}")
                continue
            seconds = _time_call(lambda: fastconv.conv2d(x, w, backend=name, **kwargs), args.repeat)
            print(f"  {name:<12} {seconds * 1e3:10.3f} {spec.flops / seconds / 1e9:9.2f}")
    return 0


def _list(args) -> int:
    import fastconv

    for row in fastconv.list_backends():
        print(f"{row.name:<12} {'available' if row.available else 'unavailable: ' + row.reason}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastconv", description="2-D convolution backends and benchmarks")
    commands = parser.add_subparsers(dest="command", required=True)
    bench = commands.add_parser("bench", help="time every backend on the built-in suite")
    bench.add_argument("--backends", nargs="+", metavar="NAME", help="backends to time (default: all available)")
    bench.add_argument("--repeat", type=int, default=5, help="timed calls per backend and case (default 5)")
    bench.set_defaults(run=_bench)
    listing = commands.add_parser("backends", help="list registered backends and their availability")
    listing.set_defaults(run=_list)
    from fastconv import tuning  # `fastconv tune`: its options and logic live with the autotuner

    tuning.add_arguments(commands.add_parser("tune", help="calibrate auto's cost model; show or clear the tuning cache"))
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "repeat", 1) < 1:
        build_parser().error("--repeat must be >= 1")
    return args.run(args)
