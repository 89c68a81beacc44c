"""im2col's bounded workspace: the peak resident memory of one call under each workspace limit.

The layer of the asv benchmark ``bench_im2col.Im2colWorkspace``: a 1×64×256×256 float32 input
(16 MiB), 64 filters of 9×9 (valid padding), output 1×64×248×248 (15 MiB). Untiled, im2col would
allocate a 64·81 × 248·248 column matrix of 1.27 GB; tiled, the column buffer stays within the
workspace limit (``fastconv.config.workspace_bytes``).

Each limit runs in a fresh process (:func:`fastconv.tools.isolated.run_isolated`): it compiles the
kernels and starts the BLAS threads on a small call, reads its peak RSS (``resource.getrusage``)
as the baseline, makes the one big call, and reads the peak RSS again; the growth is what the call
allocated (the column buffer and the output). Run it from the repository root with fastconv
importable::

    python benchmarks/compare/im2col_workspace.py [--limits 16 64 256]
"""

from __future__ import annotations

import argparse
import resource

import numpy as np

from fastconv.auto.timing import timed
from fastconv.backends import im2col
from fastconv.geometry import make_spec
from fastconv.tools.isolated import run_isolated

INPUT_SHAPE = (1, 64, 256, 256)
WEIGHT_SHAPE = (64, 64, 9, 9)


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def one_call(limit_mib: int, input_shape=INPUT_SHAPE, weight_shape=WEIGHT_SHAPE) -> list:
    """(baseline peak RSS, peak RSS after the call, output bytes, input bytes, seconds) of one call
    with the workspace limited to ``limit_mib`` MiB, in the process :func:`measure` starts."""
    import fastconv

    fastconv.config.set_workspace_bytes(limit_mib << 20)
    rng = np.random.default_rng(0)
    x = rng.standard_normal(tuple(input_shape), dtype=np.float32)
    weight = rng.standard_normal(tuple(weight_shape), dtype=np.float32)
    fastconv.conv2d(x[:, :, :16, :16], weight, backend="im2col")  # compile, start BLAS threads
    np.ones((512, 512), np.float32) @ np.ones((512, 512), np.float32)
    baseline = _peak_rss_bytes()
    result = {}
    seconds = timed(lambda: result.setdefault("out", fastconv.conv2d(x, weight, backend="im2col")))
    return [baseline, _peak_rss_bytes(), result["out"].nbytes, x.nbytes, seconds]


def measure(limits_mib, input_shape=INPUT_SHAPE, weight_shape=WEIGHT_SHAPE) -> None:
    """Print, per workspace limit, the peak RSS a fresh process reaches during one call."""
    spec = make_spec(input_shape, weight_shape, dtype=np.float32)
    print(f"input {tuple(input_shape)} float32, weight {tuple(weight_shape)}; untiled column matrix "
          f"{im2col.column_bytes(spec) / 2**30:.2f} GiB")
    print(f"{'limit MiB':>9s} {'baseline MiB':>12s} {'peak MiB':>9s} {'growth MiB':>10s} "
          f"{'limit+output MiB':>16s} {'seconds':>8s}")
    mib = 2**20
    for limit in limits_mib:
        baseline, peak, out_bytes, _, seconds = run_isolated(one_call, limit, list(input_shape), list(weight_shape),
                                                             peer=False)
        print(f"{limit:9d} {baseline / mib:12.1f} {peak / mib:9.1f} {(peak - baseline) / mib:10.1f} "
              f"{limit + out_bytes / mib:16.1f} {seconds:8.2f}")
    print("baseline = peak RSS before the call: interpreter, numpy, numba, OpenBLAS buffers, the compiled "
          "kernels and the input and weight arrays")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--limits", type=int, nargs="+", default=[16, 64, 256], metavar="MIB",
                        help="workspace limits to measure, in MiB (default: 16 64 256)")
    parser.add_argument("--quick", action="store_true",
                        help="a 1x8x64x64 input and 8 filters of 9x9 instead: check that the script works")
    args = parser.parse_args(argv)
    if args.quick:
        measure(args.limits, (1, 8, 64, 64), (8, 8, 9, 9))
    else:
        measure(args.limits)


if __name__ == "__main__":
    main()
