"""The ``separable`` backend against OpenCV's ``cv2.sepFilter2D`` on Gaussian image filters.

Cases: one float32 ``side``×``side`` image (``--sides``, default 2048 and 4096) and a ``k``×``k``
Gaussian (``--kernels``, default 5, 15, 31 and 63; sigma ``k / 6``), data from a fixed seed.
fastconv runs ``fastconv.conv2d(x, outer(g, g), padding="same", backend="separable")``: it finds the
factors itself (once per weight: they are cached, as in a filtering loop). OpenCV is handed the
1-D factor ``g`` and runs ``cv2.sepFilter2D(image, -1, g, g, borderType=cv2.BORDER_CONSTANT)``,
the same output. Each (case, library) pair runs in a fresh process
(:func:`fastconv.tools.isolated.time_isolated`) with ``--threads`` threads (``cv2.setNumThreads``
for OpenCV); times are medians by :func:`fastconv.tools.bench.time_call`. Ratio = fastconv /
OpenCV: below 1, fastconv is faster.

Run it from the repository root with fastconv importable, on a quiet machine::

    python benchmarks/compare/compare_separable_opencv.py [--threads 2] [--repeat 9]

``--quick`` filters a 256×256 image with 5×5 and 15×15 Gaussians, to check that the script works.
``--libraries fastconv`` times fastconv alone (e.g. an earlier version, importable first on
``PYTHONPATH``).
"""

from __future__ import annotations

import argparse

import numpy as np

LIBRARIES = ("fastconv", "opencv")


def gaussian(size: int) -> np.ndarray:
    """A normalised 1-D Gaussian of ``size`` taps, sigma ``size / 6``."""
    t = np.arange(size) - (size - 1) / 2
    g = np.exp(-0.5 * (t / max(size / 6, 0.5)) ** 2)
    return g / g.sum()


def build(case: str, library: str):
    """A zero-argument callable filtering the image of ``case`` (``"side:kernel"``) with ``library``."""
    side, size = (int(part) for part in case.split(":"))
    image = np.random.default_rng(0).standard_normal((side, side)).astype(np.float32)
    g = gaussian(size).astype(np.float32)
    if library == "opencv":
        import importlib.util

        from fastconv import config
        from fastconv.tools.cases import Skip

        if importlib.util.find_spec("cv2") is None:
            raise Skip("OpenCV (cv2) is not installed")
        import cv2

        cv2.setNumThreads(config.threads)
        return lambda: cv2.sepFilter2D(image, -1, g, g, borderType=cv2.BORDER_CONSTANT)
    import fastconv

    x, weight = image[None, None], np.outer(g, g)[None, None]
    return lambda: fastconv.conv2d(x, weight, padding="same", backend="separable")


def agree(case: str) -> float:
    """Largest difference between fastconv's and OpenCV's result, relative to the largest value."""
    ours, theirs = build(case, "fastconv")(), build(case, "opencv")()
    return float(np.abs(ours[0, 0] - theirs).max() / np.abs(theirs).max())


def main(argv=None) -> None:
    from fastconv.tools.isolated import run_isolated, time_isolated

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=9)
    parser.add_argument("--sides", type=int, nargs="*", default=[2048, 4096])
    parser.add_argument("--kernels", type=int, nargs="*", default=[5, 15, 31, 63])
    parser.add_argument("--libraries", nargs="*", default=list(LIBRARIES), choices=LIBRARIES)
    parser.add_argument("--quick", action="store_true", help="a 256x256 image: check that the script works")
    args = parser.parse_args(argv)
    if args.quick:
        args.sides, args.kernels = [256], [5, 15]
    cases = [f"{side}:{size}" for side in args.sides for size in args.kernels]
    times = {library: time_isolated(build, cases, library, repeat=args.repeat, budget_s=2.0, threads=args.threads,
                                    peer=library != "fastconv") for library in args.libraries}
    print(f"threads={args.threads}, median of <= {args.repeat} calls; ratio = fastconv / OpenCV")
    print(f"{'image':>10} {'kernel':>7} " + " ".join(f"{library + ' ms':>12}" for library in args.libraries)
          + ("   ratio" if len(args.libraries) == 2 else ""))
    for case in cases:
        side, size = case.split(":")
        results = [times[library][case] for library in args.libraries]
        cells = [f"{r['median_s'] * 1e3:12.2f}" if r["status"] == "ok" else f"{r['status']:>12}" for r in results]
        ratio = ""
        if len(results) == 2 and all(r["status"] == "ok" for r in results):
            ratio = f"{results[0]['median_s'] / results[1]['median_s']:8.3f}"
        print(f"{side + '²':>10} {size + '²':>7} " + " ".join(cells) + ratio, flush=True)
    if len(args.libraries) == 2 and all(times["opencv"][case]["status"] == "ok" for case in cases[:2]):
        worst = max(run_isolated(agree, case, threads=args.threads) for case in cases[:2])
        print(f"largest relative difference between the two results (first two cases): {worst:.1e}")


if __name__ == "__main__":
    main()
