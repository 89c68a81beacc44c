"""How good is ``backend="auto"``? Time every eligible backend on a grid of problems and compare.

For each problem the script times every backend that can run it in its steady state, by the
tuner's timing rule (:func:`fastconv.auto.timing.time_backends_quietly`: a pause for the previous
backend's thread pools to go idle, warm-up calls that absorb JIT compilation, then the best of at
least 7 calls, in two passes, redone when other processes used the CPU), then asks which backend
auto picks:

* untuned — the cost model alone (:mod:`fastconv.auto.cost`), and
* tuned — :func:`fastconv.auto.choice.measure`, the autotuner's own quick measurement,

and reports how often each pick is within 10% of the fastest backend, and the worst slowdown.
Targets: untuned within 10% on >= 85% of problems and never worse than 2x; tuned within 10% on
>= 97%.

The grid (>= 40 problems): the canonical conv2d layers and the image-filter grid (image side x
kernel side x random/Gaussian kernel, padding "same") of the shapes fastconv ships
(:func:`fastconv.tools.cases.shapes`), strided and dilated variants, and a few float64 problems.
Backends whose estimated time is above ``--skip-above`` seconds *and* more than 30x the best
estimate are not timed (naive on big problems, direct convolution with 101x101 kernels); the table
says so.

Usage, from the repository root with fastconv importable (results accumulate in the JSON file,
so the run can be split into short pieces)::

    python benchmarks/compare/check_auto.py --json auto.json --max-seconds 240   # repeat until done
    python benchmarks/compare/check_auto.py --json auto.json --report            # the summary table

``--unseen`` keeps to the problems whose geometry is not in the grid the shipped constants were
fitted on (:func:`fastconv.auto.calibrate.calibration_grid`): the fair test of the cost model.
``--only tiny_8x8_k3`` measures one problem (seconds): a quick check that the script works.
``--overhead`` times auto's per-call overhead on a tiny problem against torch's whole call, each
library in its own process (:func:`fastconv.tools.isolated.run_isolated`), by fastconv's timing
rule (:func:`fastconv.tools.bench.time_call`).

Every result records the machine's CPU model and where the cost constants came from
(:func:`fastconv.auto.constants.constants_source`); the report prints them. Run it on a quiet
machine, with the constants you want to judge: ``--clear-cache`` starts from an empty cache
directory of its own (a fresh temporary one; yours is left alone), so the constants are the
shipped ones scaled by this machine's cost probe alone, as a new user gets them;
``fastconv tune --calibrate`` first to judge this machine's fit; ``FASTCONV_COST_PROBE=0`` with
``--clear-cache`` to judge the shipped constants as they are.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

from fastconv.tools import bench
from fastconv.tools.cases import shapes
from fastconv.tools.isolated import run_isolated


def problems():
    """(name, input shape, weight shape, conv2d keywords, dtype, kernel kind) of the grid."""
    grid = []
    for layer in shapes()["conv2d"]:
        grid.append((layer["name"], (layer["N"], layer["C"], layer["H"], layer["W"]),
                     (layer["K"], layer["C"] // layer["groups"], layer["R"], layer["S"]),
                     {"stride": layer["stride"], "padding": layer["pad"], "dilation": layer["dilation"],
                      "groups": layer["groups"]}, "float32", "random"))
    filters = shapes()["image_filters"]
    for side in filters["image_sides"]:
        for k in filters["kernel_sides"]:
            if side * side * k * k > 2048 * 2048 * 63 * 63 or (side >= 4096 and k not in (5, 31)) \
                    or (side == 256 and k > 63):
                continue  # keep the grid's run time in minutes; 4096 sampled at two kernel sizes
            for kind in filters["kernels"]:
                grid.append((f"image{side}_k{k}_{kind}", (1, 1, side, side), (1, 1, k, k),
                             {"padding": "same"}, "float32", kind))
    grid += [
        ("resnet_3x3_s2", (1, 64, 56, 56), (128, 64, 3, 3), {"stride": 2, "padding": 1}, "float32", "random"),
        ("resnet_3x3_batch8", (8, 64, 28, 28), (64, 64, 3, 3), {"padding": 1}, "float32", "random"),
        ("aspp_3x3_d6", (1, 128, 33, 33), (128, 128, 3, 3), {"padding": 6, "dilation": 6}, "float32", "random"),
        ("dw_3x3_d2", (1, 64, 56, 56), (64, 1, 3, 3), {"padding": 2, "dilation": 2, "groups": 64}, "float32", "random"),
        ("grouped_3x3_g8", (1, 64, 28, 28), (64, 8, 3, 3), {"padding": 1, "groups": 8}, "float32", "random"),
        ("image1024_k5_d2", (1, 1, 1024, 1024), (1, 1, 5, 5), {"padding": "same", "dilation": 2}, "float32", "random"),
        ("image1024_k9_s2", (1, 1, 1024, 1024), (1, 1, 9, 9), {"padding": "same", "stride": 2}, "float32", "random"),
        ("image1024_k15_s2_gauss", (1, 1, 1024, 1024), (1, 1, 15, 15), {"padding": "same", "stride": 2},
         "float32", "gaussian"),
        ("rgb512_k7_3to8", (1, 3, 512, 512), (8, 3, 7, 7), {"padding": 3}, "float32", "random"),
        ("tiny_8x8_k3", (1, 1, 8, 8), (1, 1, 3, 3), {}, "float32", "random"),
        ("resnet_3x3_f64", (1, 64, 28, 28), (64, 64, 3, 3), {"padding": 1}, "float64", "random"),
        ("image1024_k15_f64", (1, 1, 1024, 1024), (1, 1, 15, 15), {"padding": "same"}, "float64", "random"),
        ("image1024_k31_gauss_f64", (1, 1, 1024, 1024), (1, 1, 31, 31), {"padding": "same"}, "float64", "gaussian"),
    ]
    return grid


def _geometry(x_shape, w_shape, keywords, dtype):
    from fastconv.geometry import make_spec

    spec = make_spec(x_shape, w_shape, dtype=dtype, **keywords)
    return tuple(x_shape), tuple(w_shape), spec.stride, spec.padding, spec.dilation, spec.groups, str(spec.dtype)


def calibrated_names(grid=None) -> set[str]:
    """The problems of ``grid`` (default :func:`problems`) whose geometry the cost constants were
    fitted on (:func:`fastconv.auto.calibrate.calibration_grid`): not a fair test of the model."""
    from fastconv.auto.calibrate import calibration_grid

    fitted = {_geometry(x_shape, w_shape, keywords, dtype) for x_shape, w_shape, keywords, dtype, _ in calibration_grid()}
    return {name for name, x_shape, w_shape, keywords, dtype, _ in (grid or problems())
            if _geometry(x_shape, w_shape, keywords, dtype) in fitted}


def _weight(shape, kind, dtype, rng):
    if kind == "gaussian":
        axis = np.linspace(-2.5, 2.5, shape[-1])
        profile = np.exp(-axis ** 2 / 2)
        kernel = np.outer(profile, profile)
        return np.broadcast_to(kernel / kernel.sum(), shape).astype(dtype)
    return rng.standard_normal(shape).astype(dtype)


def measure_problem(entry, skip_above: float):
    from fastconv import backends
    from fastconv.auto import choice, cost, timing
    from fastconv.auto.constants import constants_source
    from fastconv.geometry import make_spec, pad_input

    name, x_shape, w_shape, keywords, dtype, kind = entry
    rng = np.random.default_rng(0)
    x = rng.standard_normal(x_shape).astype(dtype)
    weight = _weight(w_shape, kind, dtype, rng)
    full = make_spec(x_shape, w_shape, dtype=dtype, **keywords)
    spec = full.zero_padded() if full.padding_mode != "zeros" else full
    x_run = pad_input(x, full) if full.padding_mode != "zeros" else x
    rank = choice.kernel_rank(weight)
    candidates = [b for b in backends.backend_names()
                  if backends.placement(b) == "host" and choice.decline_reason(b, spec) is None]
    estimates = {b: cost.estimate_seconds(b, spec, rank=rank, module=backends.get(b)) for b in candidates}
    best_estimate = min(estimates.values())
    notes, timed = {}, []
    for backend in candidates:
        if estimates[backend] > skip_above and estimates[backend] > 30 * best_estimate:
            notes[backend] = f"not timed: estimated {estimates[backend]:.3g} s"
        elif choice.weight_decline_reason(backend, weight, spec) is not None:
            notes[backend] = f"declines: {choice.weight_decline_reason(backend, weight, spec)}"
        else:
            timed.append(backend)
    times = timing.time_backends_quietly(timed, (x_run, weight, None), spec, repeats=7, budget=2.0, passes=2)
    machine = bench.machine_info()
    choice.clear_cache()
    untuned = choice.choose(spec, weight, tune=False)
    tune_started = time.perf_counter()
    tuned_results = choice.measure(spec, (x_run, weight, None))
    tune_seconds = time.perf_counter() - tune_started
    tuned = choice.fastest(tuned_results)
    return {"name": name, "input": x_shape, "weight": w_shape, "keywords": keywords, "dtype": dtype,
            "kernel": kind, "rank": rank, "estimates": estimates, "times": times, "notes": notes,
            "auto": untuned, "tuned": tuned, "tuner_measured": tuned_results, "tuner_seconds": tune_seconds,
            "cpu": f"{machine['cpu']} ({machine['cores']} cores, {machine['threads']} threads)",
            "constants": constants_source()}


def _ratio(result, pick):
    best = min(result["times"].values())
    chosen = result["times"].get(pick)
    return None if chosen is None else chosen / best


def report(results) -> str:
    lines = ["| problem | fastest | time | auto (cost model) | ratio | tuned auto | ratio |",
             "|---|---|---:|---|---:|---|---:|"]
    untuned_ratios, tuned_ratios = [], []
    for result in results:
        best = min(result["times"], key=result["times"].get)
        ratio, tuned_ratio = _ratio(result, result["auto"]), _ratio(result, result["tuned"])
        untuned_ratios.append(ratio if ratio is not None else float("inf"))
        tuned_ratios.append(tuned_ratio if tuned_ratio is not None else float("inf"))
        lines.append(f"| {result['name']} ({result['dtype']}) | {best} | {result['times'][best] * 1e3:.3g} ms "
                     f"| {result['auto']} | {ratio:.2f} | {result['tuned']} | {tuned_ratio:.2f} |")
    count = len(results)
    if not count:
        return "no results yet"
    within = sum(r <= 1.10 for r in untuned_ratios)
    tuned_within = sum(r <= 1.10 for r in tuned_ratios)
    lines += ["",
              f"{count} problems. Cost model: within 10% of the fastest on {within}/{count} "
              f"({100 * within / count:.0f}%), worst {max(untuned_ratios):.2f}x, geometric mean "
              f"{np.exp(np.mean(np.log(untuned_ratios))):.3f}x.",
              f"Tuned: within 10% on {tuned_within}/{count} ({100 * tuned_within / count:.0f}%), worst "
              f"{max(tuned_ratios):.2f}x."]
    for what, label in (("cpu", "Measured on"), ("constants", "Cost constants")):  # (older results lack them)
        seen = sorted({result[what] for result in results if what in result})
        lines.append(f"{label}: {'; '.join(seen) or 'not recorded'}.")
    return "\n".join(lines)


def _tiny_problem():
    x = np.random.default_rng(0).standard_normal((1, 1, 8, 8)).astype(np.float32)
    w = np.random.default_rng(1).standard_normal((1, 1, 3, 3)).astype(np.float32)
    return x, w


def _per_call(call) -> float:
    call()
    return bench.time_call(call, repeat=7, budget_s=1.0)[0]


def fastconv_overhead():
    """(the backend auto picks, seconds per auto call, seconds per call of that backend), in a process of its own."""
    import fastconv
    from fastconv.auto import choice
    from fastconv.geometry import make_spec

    x, w = _tiny_problem()
    picked = choice.choose(make_spec(x.shape, w.shape, dtype=x.dtype), w)
    return (picked, _per_call(lambda: fastconv.conv2d(x, w)),
            _per_call(lambda: fastconv.conv2d(x, w, backend=picked)))


def torch_call_seconds():
    """Seconds per ``torch.nn.functional.conv2d`` call on the tiny problem, in a process of its own."""
    import torch

    from fastconv import config

    torch.set_num_threads(config.threads)
    tx, tw = (torch.from_numpy(a) for a in _tiny_problem())
    return _per_call(lambda: torch.nn.functional.conv2d(tx, tw))


def overhead() -> str:
    """Auto's per-call overhead on a tiny problem vs torch's whole call, each in its own process."""
    picked, auto, explicit = run_isolated(fastconv_overhead, peer=False)
    torch_time = run_isolated(torch_call_seconds)
    return (f"1x1x8x8 input, 3x3 kernel, float32: conv2d(backend='auto') {auto * 1e6:.2f} us, "
            f"conv2d(backend={picked!r}) {explicit * 1e6:.2f} us, torch.nn.functional.conv2d "
            f"{torch_time * 1e6:.2f} us.\nAuto's overhead {(auto - explicit) * 1e6:.2f} us = "
            f"{(auto - explicit) / torch_time:.2f}x torch's whole call (target <= 3x); fastconv's whole "
            f"auto call = {auto / torch_time:.2f}x torch's.")


def machine_line() -> str:
    """The CPU model, and where the cost constants come from (running the cost probe if it has to)."""
    from fastconv.auto.constants import constants_source

    machine = bench.machine_info()
    source = constants_source()
    return (f"measured on {machine['cpu']} ({machine['cores']} cores, {machine['threads']} threads); cost constants "
            f"{'from the probe' if source.startswith('probed') else 'not from the probe'}: {source}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default="check_auto.json", help="results file (accumulates; default %(default)s)")
    parser.add_argument("--max-seconds", type=float, default=240, help="stop after this long (resume later)")
    parser.add_argument("--skip-above", type=float, default=1.0, help="don't time backends estimated slower (s)")
    parser.add_argument("--report", action="store_true", help="print the summary table of the results file")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="problems to (re)measure")
    parser.add_argument("--unseen", action="store_true",
                        help="only the problems whose geometry is not in the calibration grid (the fair test of "
                             "constants fitted on that grid)")
    parser.add_argument("--overhead", action="store_true",
                        help="measure auto's per-call overhead on a tiny problem against torch, and stop")
    parser.add_argument("--clear-cache", action="store_true",
                        help="start from an empty cache directory (a new temporary one; yours is left alone): the "
                             "constants come from this machine's cost probe alone, as a new user's do")
    args = parser.parse_args(argv)
    if args.clear_cache:
        from fastconv import config

        empty = tempfile.mkdtemp(prefix="fastconv-check-auto-")
        config.cache_dir = empty
        os.environ["FASTCONV_CACHE_DIR"] = empty  # and in the worker processes
        print(f"cache directory: {empty} (empty)")
    if not args.report:
        print(machine_line(), flush=True)
    if args.overhead:
        print(overhead())
        return 0

    results = {}
    if os.path.exists(args.json):
        with open(args.json) as stream:
            results = {result["name"]: result for result in json.load(stream)}
    grid = problems()
    if args.unseen:
        calibrated = calibrated_names(grid)
        grid = [entry for entry in grid if entry[0] not in calibrated]
    if args.report:
        done = [results[entry[0]] for entry in grid if entry[0] in results]
        print(report(done))
        missing = [entry[0] for entry in grid if entry[0] not in results]
        if missing:
            print(f"\nnot measured yet: {', '.join(missing)}")
        return 0
    started = time.perf_counter()
    for entry in grid:
        if (args.only and entry[0] not in args.only) or (not args.only and entry[0] in results):
            continue
        if time.perf_counter() - started > args.max_seconds:
            print("time is up; run again to continue", file=sys.stderr)
            break
        result = measure_problem(entry, args.skip_above)
        results[entry[0]] = result
        best = min(result["times"], key=result["times"].get)
        print(f"{entry[0]:<28} fastest {best:<10} {result['times'][best] * 1e3:9.3f} ms  auto {result['auto']:<10} "
              f"x{_ratio(result, result['auto']) or float('inf'):.2f}  tuned {result['tuned']:<10} "
              f"x{_ratio(result, result['tuned']) or float('inf'):.2f}", flush=True)
        with open(args.json + ".tmp", "w") as stream:
            json.dump(list(results.values()), stream, indent=1)
        os.replace(args.json + ".tmp", args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
