"""Image filtering: fastconv's ``backend="auto"`` against OpenCV, each library in its own process.

Cases (float32, data from a fixed seed, :func:`fastconv.tools.cases.make_inputs`), padding "same"
with zeros (OpenCV: ``BORDER_CONSTANT``, the anchor where "same" puts the kernel):

* one ``side``×``side`` image (``--sizes``, default 2048 and 4096) with a random k×k kernel,
  k = 3, 5, 7, 11, 15, 31, 63, 101: ``cv2.filter2D``;
* the same image with a k×k Gaussian, k = 5, 15, 31, 63: ``cv2.sepFilter2D`` handed the two 1-D
  factors, while fastconv gets the 2-D kernel and finds the factors itself;
* a 3-channel 2048×2048 image, every channel filtered with one kernel (random 5×5 and 31×31,
  Gaussian 31×31): OpenCV filters the H×W×3 array in one call; fastconv gets the channels as a
  batch of three single-channel images, ``(3, 1, H, W)``. ``fastconv HxWx3`` times what a user
  holding an H×W×3 array does: ``np.moveaxis`` to ``(3, 1, H, W)``, the call, and back to an
  H×W×3 array (the two layout copies included).

Each library runs in a fresh process (:func:`fastconv.tools.isolated.time_isolated`), all its
cases of one image size there: no library's idle thread pool spins while another is timed.
Threads: ``--threads`` (default 2) for fastconv and ``cv2.setNumThreads``. Times are medians by
fastconv's timing rule (:func:`fastconv.tools.bench.time_call`: a warm-up call, a settle pause and
30 ms of untimed calls, then up to ``--repeat`` calls within 2 s). The ratio is fastconv / OpenCV
(below 1: fastconv is faster), checked against a target of 0.8 per case; the geometric mean of
each image size is checked against 0.7.

Run it from the repository root with fastconv importable, on a quiet machine::

    python benchmarks/compare/compare_images.py

``--quick`` shrinks the images to 128×128 and the kernels to at most 31×31, to check that the
script works.
"""

from __future__ import annotations

import argparse
import math

import numpy as np

import fastconv
from fastconv.tools import bench
from fastconv.tools.cases import Case, Skip, image_filter, make_inputs
from fastconv.tools.isolated import time_isolated

RANDOM_SIDES = (3, 5, 7, 11, 15, 31, 63, 101)
GAUSSIAN_SIDES = (5, 15, 31, 63)
COLOUR = ((5, "random"), (31, "random"), (31, "gaussian"))
CASE_TARGET, GEOMEAN_TARGET = 0.8, 0.7
LIBRARIES = ("fastconv", "fastconv HxWx3", "opencv")


def cases(side: int, quick: bool = False) -> list[Case]:
    """The cases of one image size: single-channel random and Gaussian kernels, and (at 2048, or
    in a quick run) the 3-channel ones."""
    limit = 31 if quick else max(RANDOM_SIDES)
    found = [image_filter(side, k, "random") for k in RANDOM_SIDES if k <= limit]
    found += [image_filter(side, k, "gaussian") for k in GAUSSIAN_SIDES if k <= limit]
    if side == 2048 or quick:
        found += [image_filter(side, k, kind, planes=3) for k, kind in COLOUR if k <= limit]
    return found


def build(name: str, library: str, side: int, quick: bool):
    """A zero-argument callable doing case ``name`` with ``library`` (raises Skip when it cannot)."""
    case = {case.name: case for case in cases(side, quick)}[name]
    x, w = make_inputs(case)
    if library == "opencv":
        return bench.prepare_call(case, "opencv", x, w)
    if library == "fastconv HxWx3":
        if case.input_shape[0] == 1:
            raise Skip("single-channel image: the same as fastconv")
        image = np.ascontiguousarray(np.moveaxis(x[:, 0], 0, -1))  # what the user holds: H x W x 3

        def call():
            planes = np.moveaxis(image, -1, 0)[:, None]  # (3, 1, H, W), a view; conv2d copies it
            return np.ascontiguousarray(np.moveaxis(fastconv.conv2d(planes, w, padding="same")[:, 0], 0, -1))

        return call
    return lambda: fastconv.conv2d(x, w, **case.conv_kwargs())


def auto_choice(case: Case) -> str:
    from fastconv.ops.conv2d import choose_backend

    return choose_backend(case.spec(), make_inputs(case)[1])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--sizes", type=int, nargs="+", default=[2048, 4096])
    parser.add_argument("--quick", action="store_true", help="small images: check that the script works")
    args = parser.parse_args(argv)
    sides = [128] if args.quick else args.sizes
    print(f"threads={args.threads}, median of <= {args.repeat} calls; ratio = fastconv / OpenCV (< 1: fastconv "
          f"faster); target <= {CASE_TARGET} per case, geometric mean <= {GEOMEAN_TARGET}")
    print(f"{'case':<34} {'auto picks':<10} {'fastconv ms':>11} {'OpenCV ms':>10} {'ratio':>6}  "
          f"{'HxWx3 ms':>8} {'ratio':>6}")
    for side in sides:
        found = cases(side, args.quick)
        names = [case.name for case in found]
        times = {library: time_isolated(build, names, library, side, args.quick, repeat=args.repeat, budget_s=2.0,
                                        threads=args.threads, peer=library == "opencv")
                 for library in LIBRARIES}
        ratios = []
        for case in found:
            ours, held, theirs = (times[library][case.name] for library in ("fastconv", "fastconv HxWx3", "opencv"))
            if ours["status"] != "ok":  # say so and go on: one broken case must not hide the others
                print(f"{case.name:<34} fastconv {ours['status']}: {ours['reason']}", flush=True)
                continue
            cells = [f"{case.name:<34} {auto_choice(case):<10} {ours['median_s'] * 1e3:11.2f}"]
            if theirs["status"] == "ok":
                ratio = ours["median_s"] / theirs["median_s"]
                ratios.append(ratio)
                cells.append(f"{theirs['median_s'] * 1e3:10.2f} {ratio:6.2f}{'' if ratio <= CASE_TARGET else '*'}")
            else:
                cells.append(f"{'n/a':>10} {'':>6}  ({theirs['reason']})")
            if held["status"] == "ok" and theirs["status"] == "ok":
                cells.append(f"{held['median_s'] * 1e3:8.2f} {held['median_s'] / theirs['median_s']:6.2f}")
            print(" ".join(cells), flush=True)
        if ratios:
            geomean = math.exp(sum(map(math.log, ratios)) / len(ratios))
            missed = sum(ratio > CASE_TARGET for ratio in ratios)
            print(f"{side}x{side}: geometric mean {geomean:.2f} ({'met' if geomean <= GEOMEAN_TARGET else 'MISSED'}); "
                  f"{len(ratios) - missed} of {len(ratios)} cases within {CASE_TARGET} (* marks the others)",
                  flush=True)


if __name__ == "__main__":
    main()
