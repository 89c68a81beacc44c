"""Out-of-core scale test for fastconv.dask: a 4 GiB image convolved from disk to disk.

A float32 image of SIZE×SIZE (default 32768², 4 GiB) is written to a ``.npy`` file, convolved with
a 7×7 kernel (``padding="same"``) by :func:`fastconv.dask.conv2d` and stored into another
``.npy`` file with :func:`dask.array.store`, never held in memory whole. Reported, each step in
a process of its own (:func:`fastconv.tools.isolated.run_isolated`) so that peak resident memory
is the step's own, times by fastconv's timing rule (:func:`fastconv.tools.bench.time_call`):

* ``in-memory tile``: :func:`fastconv.conv2d` on a TILE×TILE (default 8192²) array in memory, the
  throughput the out-of-core run is compared with (scaled up by the pixel ratio); the median of
  ``--repeat`` calls after a warm-up call;
* ``dask overhead``: :func:`fastconv.dask.conv2d` on the same in-memory tile cut into 4 chunks
  (2×2 squares, and 4 strips of full rows), collected by ``.compute()`` and by ``da.store`` into
  a preallocated array, against the in-memory call; each the median of ``--repeat`` interleaved
  rounds (every way sees the same machine state);
* ``out-of-core``: the SIZE² run, wall time of one run, MPixel/s and peak RSS (``ru_maxrss`` of
  its process).

The image is cut into strips of ROWS full rows (default 512: 64 MiB blocks). In a row-major file
a strip is one contiguous byte range, so reads and writes are sequential, the halo is only rows,
and the scheduler needs only a few neighbouring strips at a time; square chunks of a wide file
touch every row of their span (and, through the kernel's fault-around, more of each row than
they need) and keep more blocks waiting for their neighbours.

Reading and writing go through short-lived memory maps, one per block
(:class:`fastconv.dask.NpyBlocks`): pages of a memory map count in the resident set of the
process while mapped, so mapping the two whole 4 GiB files once shows up to 8 GiB "resident"
(reclaimable page cache, but resident), and ``da.from_array`` copies a whole ``np.memmap`` into
memory before any task runs (dask 2026.8.0). ``--io mmap`` runs that plain
``np.load(mmap_mode="r")`` / ``open_memmap`` variant for comparison.

Usage, from the repository root with fastconv importable (time on a quiet machine)::

    python benchmarks/compare/dask_scale.py prepare --workdir /tmp/fcscale        # writes the input file
    python benchmarks/compare/dask_scale.py run --workdir /tmp/fcscale --backend auto
    python benchmarks/compare/dask_scale.py clean --workdir /tmp/fcscale

A small ``--size`` (with a smaller ``--tile`` and ``--rows``) checks that the script works in
seconds, e.g. ``--size 512 --tile 256 --rows 64``.
"""

from __future__ import annotations

import argparse
import functools
import os
import resource
import statistics
from pathlib import Path

import numpy as np

from fastconv.auto.timing import timed
from fastconv.dask import NpyBlocks
from fastconv.tools.bench import time_call
from fastconv.tools.isolated import run_isolated

KERNEL = np.random.default_rng(7).standard_normal((7, 7)).astype(np.float32)


def _peak_rss_bytes():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def _settings(args) -> dict:
    """The command line as JSON-ready settings, for a step run in a process of its own."""
    return {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()}


def _child(step, args):
    """Run one step in a fresh process and return its report."""
    return run_isolated(run_step, step, _settings(args), peer=False)


def run_step(step: str, settings: dict):
    """One step, in the process :func:`_child` starts."""
    args = argparse.Namespace(**{**settings, "workdir": Path(settings["workdir"])})
    return {"in_memory": step_in_memory, "dask_tile": step_dask_tile, "out_of_core": step_out_of_core}[step](args)


def _tile(size):
    rng = np.random.default_rng(0)
    return rng.standard_normal((size, size), dtype=np.float32)


def _warm_up(backend):
    import fastconv

    fastconv.conv2d(np.ones((1, 1, 32, 32), np.float32), KERNEL[None, None], padding="same", backend=backend)


def step_in_memory(args):
    import fastconv

    _warm_up(args.backend)
    x = _tile(args.tile)[None, None]
    call = functools.partial(fastconv.conv2d, x, KERNEL[None, None], padding="same", backend=args.backend)
    call()  # warm-up: first touch of the output, plans for this size
    seconds, _ = time_call(call, repeat=args.repeat, budget_s=float("inf"))
    return dict(seconds=seconds, mpixel_per_s=args.tile**2 / seconds / 1e6, peak_rss=_peak_rss_bytes())


OVERHEAD_LAYOUTS = {"2x2 squares": lambda tile: tile // 2, "4 strips": lambda tile: (tile // 4, tile)}


def step_dask_tile(args):
    """The in-memory tile in 4 chunks (2x2 squares and 4 strips of full rows), collected by
    ``.compute()`` (which joins the blocks into a new array) and by ``da.store`` into a
    preallocated array (what an out-of-core run does), each against the in-memory call timed in
    the same rounds (the in-memory time drifts by ~10% between processes on this machine)."""
    import dask.array as da

    import fastconv.dask

    _warm_up(args.backend)
    tile = _tile(args.tile)
    target = np.empty_like(tile)
    calls = {"in-memory": lambda: fastconv.conv2d(tile[None, None], KERNEL[None, None], padding="same",
                                                  backend=args.backend)}
    for layout, chunks in OVERHEAD_LAYOUTS.items():
        y = fastconv.dask.conv2d(da.from_array(tile, chunks=chunks(args.tile)), KERNEL, padding="same",
                                 backend=args.backend)
        calls[f"{layout}, compute"] = y.compute
        calls[f"{layout}, store"] = functools.partial(da.store, y, target, lock=False)
    for call in calls.values():
        call()  # warm-up
    times = {way: [] for way in calls}
    for _ in range(args.repeat):  # interleaved rounds: every way sees the same machine state
        for way, call in calls.items():
            times[way].append(time_call(call, repeat=1, budget_s=0.0)[0])
    return {way: statistics.median(seconds) for way, seconds in times.items()}


def step_out_of_core(args):
    import dask.array as da

    import fastconv.dask

    _warm_up(args.backend)
    source_path, target_path = args.workdir / "image.npy", args.workdir / "result.npy"
    if args.io == "blocks":
        source = NpyBlocks(source_path)
        target = NpyBlocks.create(target_path, source.shape, np.float32)
    else:
        source = np.load(source_path, mmap_mode="r")
        target = np.lib.format.open_memmap(target_path, mode="w+", dtype=np.float32, shape=source.shape)

    def job():  # one run: it streams the whole file
        x = da.from_array(source, chunks=(args.rows, -1), asarray=False, lock=False)
        da.store(fastconv.dask.conv2d(x, KERNEL, padding="same", backend=args.backend), target, lock=False)

    seconds = timed(job)
    if args.io == "mmap":
        target.flush()
    spot = _spot_check(source_path, target_path, args.size)
    return dict(seconds=seconds, mpixel_per_s=args.size**2 / seconds / 1e6, peak_rss=_peak_rss_bytes(),
                blocks=-(-args.size // args.rows), spot_check_error=spot)


def _spot_check(source_path, target_path, size):
    """Compare a few 64×64 windows of the stored result with in-memory fastconv."""
    import fastconv

    source, target = NpyBlocks(source_path), NpyBlocks(target_path)
    worst = 0.0
    for top, left in ((0, 0), (size // 2 - 32, size // 3), (size - 64, size - 64)):
        rows = slice(max(top - 3, 0), min(top + 67, size))
        cols = slice(max(left - 3, 0), min(left + 67, size))
        window = source[rows, cols]
        padding = ((3 - (top - rows.start), 3 - (rows.stop - top - 64)),
                   (3 - (left - cols.start), 3 - (cols.stop - left - 64)))
        expected = fastconv.conv2d(window[None, None], KERNEL[None, None], padding=padding)[0, 0]
        got = target[top:top + 64, left:left + 64]
        worst = max(worst, float(np.abs(got - expected).max() / np.abs(expected).max()))
    return worst


def prepare(args):
    """Write the SIZE² float32 input in row strips (deterministic values, no big allocation)."""
    args.workdir.mkdir(parents=True, exist_ok=True)
    image = NpyBlocks.create(args.workdir / "image.npy", (args.size, args.size), np.float32)
    rng = np.random.default_rng(1)
    strip = 1024
    for top in range(0, args.size, strip):
        rows = min(strip, args.size - top)
        image[top:top + rows] = rng.standard_normal((rows, args.size), dtype=np.float32)


def run(args):
    import dask

    import fastconv

    if not (args.workdir / "image.npy").exists():
        raise SystemExit(f"no input in {args.workdir}: run `prepare` first")
    print(f"fastconv {fastconv.__version__}, dask {dask.__version__}, numpy {np.__version__}, "
          f"backend {args.backend}, io {args.io}, {os.cpu_count()} cores")
    tile = _child("in_memory", args)
    print(f"in-memory {args.tile}x{args.tile}: {tile['seconds']:.3f} s, {tile['mpixel_per_s']:.1f} MPixel/s, "
          f"peak RSS {tile['peak_rss'] / 2**20:.0f} MiB")
    if not args.skip_overhead:
        overhead = _child("dask_tile", args)
        in_memory = overhead.pop("in-memory")
        print(f"  in the overhead step's process, in-memory {in_memory:.3f} s; dask on 4 chunks:")
        for way, seconds in overhead.items():
            print(f"  {way}: {seconds:.3f} s, {args.tile**2 / seconds / 1e6:.1f} MPixel/s, "
                  f"overhead {seconds / in_memory:.2f}x")
    big = _child("out_of_core", args)
    scaled = tile["seconds"] * (args.size / args.tile) ** 2
    print(f"out-of-core {args.size}x{args.size} ({args.size**2 * 4 / 2**30:.1f} GiB float32, strips of {args.rows} rows, "
          f"{big['blocks']} blocks): {big['seconds']:.1f} s, {big['mpixel_per_s']:.1f} MPixel/s, "
          f"peak RSS {big['peak_rss'] / 2**30:.2f} GiB; in-memory tile scaled up: {scaled:.1f} s "
          f"(ratio {big['seconds'] / scaled:.2f}x); spot-check relative error {big['spot_check_error']:.1e}")


def clean(args):
    for name in ("image.npy", "result.npy"):
        (args.workdir / name).unlink(missing_ok=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["prepare", "run", "clean"])
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--size", type=int, default=32768)
    parser.add_argument("--tile", type=int, default=8192)
    parser.add_argument("--rows", type=int, default=512, help="rows per strip (chunk) of the image")
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--io", choices=["blocks", "mmap"], default="blocks")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--skip-overhead", action="store_true", help="skip the 4-chunk dask tile timing")
    args = parser.parse_args(argv)
    {"prepare": prepare, "run": run, "clean": clean}[args.command](args)


if __name__ == "__main__":
    main()
