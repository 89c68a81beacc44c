"""Fitting the cost model's constants on this machine, and the ``fastconv tune`` command.

:func:`calibrate` times every backend on a small grid of problems that exercises each of their
cost terms (:func:`calibration_grid`) and fits the constants to the times
(:func:`fit_constants`); ``fastconv tune --calibrate`` stores them for later processes on this
machine (:mod:`fastconv.auto.constants`), and prints this machine's probed speeds in the form of
:data:`~fastconv.auto.constants.REFERENCE_MACHINE` (:func:`reference_machine`), to ship with
constants fitted here. ``fastconv tune --probe`` measures this machine's speeds again.
"""

from __future__ import annotations


import numpy as np

from fastconv import backends, config
from fastconv.auto import cost, tuning_cache
from fastconv.auto.choice import clear_cache, decline_reason, kernel_rank, weight_decline_reason
from fastconv.auto.constants import (DEFAULT_THREADS, REFERENCE_MACHINE, RESOURCES, constants_for, constants_source,
                                     constants_threads, fitted_constants, format_quantity, machine_key, probe_path,
                                     probe_result, rerun_probe, resource_factors, save_constants, shipped_constants)
from fastconv.auto.timing import format_seconds, time_backends_quietly
from fastconv.backends.work import is_double
from fastconv.geometry import backend_input, make_spec

__all__ = ["calibration_grid", "calibrate", "fit_constants", "main", "add_arguments", "argument_problem",
           "reference_machine", "run_command", "show"]


def calibration_grid():
    """(input shape, weight shape, conv2d keywords, dtype, rank-1 weights?) covering every work term."""
    grid = []
    for dtype in ("float32", "float64"):
        grid += [
            ((1, 1, 8, 8), (1, 1, 3, 3), {}, dtype, True),
            ((1, 4, 16, 16), (4, 4, 3, 3), {"padding": 1}, dtype, False),
            ((1, 32, 28, 28), (32, 32, 3, 3), {"padding": 1}, dtype, False),
            ((1, 64, 14, 14), (64, 64, 3, 3), {"padding": 1}, dtype, False),
            ((1, 64, 28, 28), (128, 64, 1, 1), {}, dtype, False),
            ((1, 32, 32, 32), (32, 32, 5, 5), {"padding": 2}, dtype, False),
            ((1, 1, 256, 256), (1, 1, 5, 5), {"padding": "same"}, dtype, True),
            ((1, 1, 256, 256), (1, 1, 15, 15), {"padding": "same"}, dtype, True),
            ((1, 32, 56, 56), (32, 1, 3, 3), {"padding": 1, "groups": 32}, dtype, False),
        ]
    grid += [
        ((1, 3, 112, 112), (16, 3, 7, 7), {"padding": 3, "stride": 2}, "float32", False),
        ((2, 16, 24, 24), (16, 16, 3, 3), {"padding": 2, "dilation": 2}, "float32", False),
        ((1, 64, 32, 32), (64, 64, 3, 3), {"padding": 1, "stride": 2}, "float32", False),
        ((1, 64, 28, 28), (64, 1, 5, 5), {"padding": 2, "groups": 64, "stride": 2}, "float32", False),
        ((1, 1, 512, 512), (1, 1, 3, 3), {"padding": "same"}, "float32", False),
        ((1, 1, 512, 512), (1, 1, 31, 31), {"padding": "same"}, "float32", True),
        ((1, 1, 512, 512), (1, 1, 31, 31), {"padding": "same"}, "float32", False),
        ((1, 1, 256, 256), (1, 1, 63, 63), {"padding": "same"}, "float32", False),
        ((1, 8, 64, 64), (8, 8, 11, 11), {"padding": 5}, "float32", False),
        ((4, 16, 32, 32), (32, 16, 3, 3), {"padding": 1}, "float32", False),
        ((1, 64, 56, 56), (64, 64, 3, 3), {"padding": 1}, "float32", False),
        ((1, 128, 28, 28), (128, 128, 3, 3), {"padding": 1}, "float32", False),
        ((1, 256, 14, 14), (256, 256, 1, 1), {}, "float32", False),
        ((1, 32, 32, 32), (64, 8, 3, 3), {"padding": 1, "groups": 4}, "float32", False),
        ((1, 1, 1024, 1024), (1, 1, 9, 9), {"padding": "same"}, "float32", False),
        ((1, 1, 1024, 1024), (1, 1, 9, 9), {"padding": "same"}, "float32", True),
        ((1, 1, 1024, 1024), (1, 1, 5, 5), {"padding": "same", "stride": 2}, "float32", False),
        ((1, 1, 512, 512), (1, 1, 7, 7), {"padding": "same", "dilation": 2}, "float32", False),
        ((1, 3, 256, 256), (8, 3, 5, 5), {"padding": 2}, "float32", False),
        ((1, 1, 256, 256), (1, 1, 63, 63), {"padding": "same"}, "float32", True),
        ((1, 1, 512, 512), (1, 1, 15, 15), {"padding": "same"}, "float32", True),
        ((1, 1, 1024, 1024), (1, 1, 31, 31), {"padding": "same"}, "float32", True),
        ((1, 1, 1024, 1024), (1, 1, 3, 3), {"padding": "same"}, "float32", True),
        ((1, 3, 96, 96), (64, 3, 9, 9), {"padding": 4}, "float32", False),
        ((1, 64, 33, 33), (64, 64, 3, 3), {"padding": 4, "dilation": 4}, "float32", False),
        # small images under large rank-1 kernels, and many small ones: separable's SVD terms
        ((1, 1, 32, 32), (1, 1, 31, 31), {"padding": "same"}, "float32", True),
        ((1, 1, 64, 64), (1, 1, 63, 63), {"padding": "same"}, "float32", True),
        ((1, 1, 64, 64), (1, 1, 101, 101), {"padding": "same"}, "float32", True),
        ((1, 16, 32, 32), (16, 1, 15, 15), {"padding": 7, "groups": 16}, "float32", True),
        ((1, 1, 1024, 1024), (1, 1, 5, 5), {"padding": "same"}, "float32", True),
        ((1, 1, 512, 512), (1, 1, 11, 11), {"padding": "same", "stride": 2}, "float32", False),
        # image filters and small-input layers near the boundaries where two backends trade places
        # (direct vs fft vs separable; fft vs im2col on few input channels)
        ((1, 1, 512, 512), (1, 1, 9, 9), {"padding": "same"}, "float32", False),
        ((1, 1, 512, 512), (1, 1, 63, 63), {"padding": "same"}, "float32", True),
        ((1, 1, 1536, 1536), (1, 1, 5, 5), {"padding": "same"}, "float32", False),
        ((1, 1, 1536, 1536), (1, 1, 5, 5), {"padding": "same"}, "float32", True),
        ((1, 1, 1536, 1536), (1, 1, 9, 9), {"padding": "same"}, "float32", False),
        ((1, 1, 1536, 1536), (1, 1, 15, 15), {"padding": "same"}, "float32", False),
        ((1, 1, 3072, 3072), (1, 1, 5, 5), {"padding": "same"}, "float32", True),  # beyond the caches
        ((1, 3, 128, 128), (32, 3, 11, 11), {"padding": 5, "stride": 2}, "float32", False),
        ((1, 3, 384, 384), (8, 3, 7, 7), {"padding": 3}, "float32", False),
        ((1, 128, 14, 14), (128, 16, 3, 3), {"padding": 1, "groups": 8}, "float32", False),
        # the layers of whole networks: deep channels on small maps, where GEMM and direct kernels
        # are bound by their arithmetic, and MobileNet's 1x1 expansions and depthwise layers
        ((1, 256, 14, 14), (256, 256, 3, 3), {"padding": 1}, "float32", False),
        ((1, 512, 7, 7), (512, 512, 3, 3), {"padding": 1}, "float32", False),
        ((1, 128, 28, 28), (256, 128, 3, 3), {"padding": 1, "stride": 2}, "float32", False),
        ((1, 96, 56, 56), (24, 96, 1, 1), {}, "float32", False),
        ((1, 24, 56, 56), (144, 24, 1, 1), {}, "float32", False),
        ((1, 576, 14, 14), (96, 576, 1, 1), {}, "float32", False),
        ((1, 960, 7, 7), (160, 960, 1, 1), {}, "float32", False),
        ((1, 144, 56, 56), (144, 1, 3, 3), {"padding": 1, "groups": 144}, "float32", False),
        ((1, 960, 7, 7), (960, 1, 3, 3), {"padding": 1, "groups": 960}, "float32", False),
    ]
    return grid


def _calibration_operands(x_shape, w_shape, dtype, rank_one, rng):
    x = rng.standard_normal(x_shape).astype(dtype)
    if rank_one:
        column = rng.standard_normal(w_shape[:2] + (w_shape[2], 1))
        row = rng.standard_normal(w_shape[:2] + (1, w_shape[3]))
        weight = (column * row).astype(dtype)
    else:
        weight = rng.standard_normal(w_shape).astype(dtype)
    return x, weight


def calibrate(names=None, *, grid=None, max_seconds_per_call: float = 0.5, budget_per_problem: float = 1.5,
              progress=print) -> tuple[dict[str, dict[str, float]], dict[str, list]]:
    """Time each backend on a small grid and fit its cost constants (see :mod:`fastconv.auto.cost`).

    ``grid`` defaults to :func:`calibration_grid`. Calls the shipped constants estimate above
    ``max_seconds_per_call`` are skipped (``naive`` on large problems). Returns the fitted
    constants (:func:`fastconv.auto.constants.save_constants` stores them) and the samples they were
    fitted to, ``{backend: [(spec, rank, seconds), ...]}``.
    """
    rng = np.random.default_rng(0)
    shipped = shipped_constants()
    names = names or [name for name in backends.backend_names() if name in shipped]
    samples = {name: [] for name in names}
    for x_shape, w_shape, keywords, dtype, rank_one in grid or calibration_grid():
        full = make_spec(x_shape, w_shape, dtype=dtype, **keywords)
        x, weight = _calibration_operands(x_shape, w_shape, dtype, rank_one, rng)
        x, spec = backend_input(x, full)
        rank = kernel_rank(weight)
        runnable = []
        for name in names:
            if decline_reason(name, spec) is not None or weight_decline_reason(name, weight, spec) is not None:
                continue
            if cost.estimate_seconds(name, spec, rank=rank, constants=shipped) > max_seconds_per_call:
                continue
            runnable.append(name)
        for name, seconds in time_backends_quietly(runnable, (x, weight, None), spec, budget=budget_per_problem,
                                                   passes=2).items():
            samples[name].append((spec, rank, seconds))
            progress(f"  {name:<10} {str(x_shape):<18} {str(w_shape):<16} {dtype:<8} {format_seconds(seconds):>10}")
    fitted = {}
    for name, rows in samples.items():
        if len(rows) >= 2:
            fitted[name] = fit_constants(name, rows, shipped.get(name), module=backends.get(name))
            errors = sorted(abs(cost.estimate_seconds(name, spec, rank=rank, constants=fitted, module=backends.get(name),
                                                      threads=DEFAULT_THREADS) / seconds - 1)
                            for spec, rank, seconds in rows)
            progress(f"{name}: fitted on {len(rows)} problems; estimate off by {100 * errors[len(errors) // 2]:.0f}% "
                     f"(median), {100 * errors[-1]:.0f}% (worst)")
    return fitted, samples


def fit_constants(name: str, samples, defaults: dict[str, float] | None = None, *, module=None) -> dict[str, float]:
    """Fit backend ``name``'s constants to measured ``(spec, rank, seconds)`` samples.

    The error that matters to auto is the *ratio* of estimate to truth, whether the problem takes
    a microsecond or a second, so the fit minimises ``log(estimate / measured)`` over all samples
    with a robust (soft-L1) loss: one time inflated by a noisy neighbour on the machine does not
    drag the constants with it. Non-negative least squares on relative errors gives the starting
    point. ``float64_factor`` (how much more a float64 problem's work costs) is fitted when there
    are float64 samples. Terms that no sample exercises keep their value from ``defaults``.
    ``module`` is the backend module, as for :func:`fastconv.auto.cost.work_terms`.
    """
    from scipy.optimize import least_squares, nnls

    rows = [(cost.work_terms(name, spec, rank=rank, module=module), is_double(spec.dtype), seconds)
            for spec, rank, seconds in samples]
    names = sorted({term for terms, _, _ in rows for term in terms})
    counts = np.array([[terms.get(term, 0.0) for term in names] for terms, _, _ in rows])
    double = np.array([is_double for _, is_double, _ in rows])
    measured = np.array([seconds for _, _, seconds in rows])
    exercised = counts.max(axis=0) > 0
    counts, names = counts[:, exercised], [term for term, used in zip(names, exercised) if used]
    unscaled = np.array([term in cost.UNSCALED_TERMS for term in names])
    relative = counts / measured[:, None]
    scale = relative.max(axis=0)  # columns of very different magnitudes: normalise for the solvers
    relative = relative / scale
    fit_factor = bool(double.any()) and bool((~double).any())
    factor0 = (defaults or {}).get("float64_factor", 2.0)
    start, _ = nnls(relative * np.where(double[:, None] & ~unscaled, factor0, 1.0), np.ones(len(rows)))

    def residuals(parameters):
        factor = np.exp(parameters[-1]) if fit_factor else factor0
        weights = np.where(double[:, None] & ~unscaled, factor, 1.0)
        return np.log((relative * weights) @ np.exp(parameters[:len(names)]))

    floor = np.log(1e-9)  # in scaled units: a term the data do not need ends near zero, not at 0
    initial = np.log(np.maximum(start, 1e-3))
    lower, upper = np.full(len(names), floor), np.full(len(names), np.inf)
    if fit_factor:
        initial, lower, upper = (np.append(initial, np.log(factor0)), np.append(lower, np.log(0.5)),
                                 np.append(upper, np.log(8.0)))
    solution = least_squares(residuals, initial, bounds=(lower, upper), loss="soft_l1", f_scale=0.1).x
    fitted = dict(defaults or {})
    for term, value, column_scale in zip(names, np.exp(solution[:len(names)]), scale):
        fitted[term] = float(value / column_scale)
    if fit_factor:
        fitted["float64_factor"] = float(np.exp(solution[-1]))
    return fitted


def reference_machine(runs: int = 3) -> dict:
    """This machine's probed speeds (the median of ``runs`` probes) as a
    :data:`~fastconv.auto.constants.REFERENCE_MACHINE`: what to ship with constants fitted here."""
    import statistics

    from fastconv.auto import probe

    measured = [probe.measure() for _ in range(runs)]
    machine = machine_key()
    versions = ", ".join(f"{package} {version}" for package, version in machine["versions"].items()
                         if version and package != "fastconv")
    return {"name": f"{machine['cores']}-core {machine['cpu']}; {versions}",
            "threads": probe.probe_threads(),
            "quantities": {resource: float(f"{statistics.median(run[resource] for run in measured):.3g}")
                           for resource in RESOURCES if all(resource in run for run in measured)}}


def main(argv=None) -> int:
    """``fastconv tune``: calibrate the cost model, show or clear the autotuning cache."""
    import argparse

    parser = argparse.ArgumentParser(prog="fastconv tune", description=main.__doc__)
    add_arguments(parser)
    args = parser.parse_args(argv)
    problem = argument_problem(args)
    if problem is not None:
        parser.error(problem)
    return run_command(args)


def add_arguments(parser) -> None:
    """Add ``fastconv tune``'s options to an argparse parser (the CLI's subcommand uses this)."""
    parser.add_argument("--calibrate", action="store_true",
                        help="time each backend on a small grid, fit the cost model's constants for this machine "
                             "and store them in the cache directory")
    parser.add_argument("--backends", nargs="+", metavar="NAME", help="with --calibrate: backends to calibrate "
                                                                     "(default: all that ship constants)")
    parser.add_argument("--probe", action="store_true",
                        help="measure this machine's speeds again (the cost probe, about a second), keep them in the "
                             "cache directory, and show the constants they give")
    parser.add_argument("--show", action="store_true",
                        help="print the cost constants in use, the probed speeds, and the cache entries")
    parser.add_argument("--clear", action="store_true", help="delete the autotuning cache file")
    parser.set_defaults(run=run_command)


def argument_problem(args) -> str | None:
    """What is wrong with parsed ``fastconv tune`` arguments, in one line, or None."""
    if args.backends and not args.calibrate:
        return "--backends only applies with --calibrate"
    registered = backends.backend_names()
    for name in args.backends or ():
        if name not in registered:
            return f"unknown backend {name!r}; conv2d backends (the ones auto chooses among): {', '.join(registered)}"
        reason = backends.unavailable_reason(name)
        if reason is not None:
            return f"backend {name!r} is not available here: {reason}"
    return None


def _constant_lines(name: str, table: dict, origin: str, width: int = 100) -> list[str]:
    """One backend's constants, its name and their origin first, wrapped to ``width`` columns."""
    import textwrap

    prefix = f"  {name:<10} {origin:<8} "
    terms = "  ".join(f"{term}={value:.3g}" for term, value in sorted(table.items()))
    return textwrap.wrap(terms, width=width, initial_indent=prefix, subsequent_indent=" " * len(prefix),
                         break_long_words=False)


def show() -> None:
    """Print the cost constants in use, per backend and where they come from, the probed speeds
    they were scaled by, and the tuning cache."""
    fitted = fitted_constants()
    shipped = shipped_constants()
    probed = probe_result()
    print("cost constants of backend='auto': seconds per unit of each cost term")
    print(f"  in use: {constants_source()}")
    if probed is not None:
        reference = REFERENCE_MACHINE
        factors = resource_factors(probed["quantities"])
        print(f"cost probe of {probed['date']} ({probed['threads']} threads, took {probed['seconds']:.2f} s), against "
              f"the machine the shipped constants were fitted on ({reference['name']}, "
              f"{reference['threads']} threads):")
        print(f"  {'resource':<15} {'here':>18} {'reference':>18}  constants  what")
        for resource, (what, _) in RESOURCES.items():
            here, there = probed["quantities"].get(resource), reference["quantities"].get(resource)
            print(f"  {resource:<15} {format_quantity(resource, here) if here else '-':>18} "
                  f"{format_quantity(resource, there) if there else '-':>18}  x{factors[resource]:<8.3g} {what}")
    for name in backends.backend_names():
        reason = backends.unavailable_reason(name)
        if name in fitted:
            print("\n".join(_constant_lines(name, fitted[name], "fitted")))
        elif name in shipped:
            origin = "probed" if probed is not None else "shipped"
            print("\n".join(_constant_lines(name, constants_for(name, backends.get(name)), origin)))
        elif reason is not None:
            print(f"  {name:<10} unavailable here")
        elif backends.placement(name) == "device":
            print(f"  {name:<10} none: chosen for arrays in GPU memory, not by estimate")
        else:
            print(f"  {name:<10} none: ranked by its direct-convolution work at a generic rate")
    threads = sorted({constants_threads(name) for name in (*fitted, *shipped)} or {constants_threads()})
    print(f"  (measured at {', '.join(map(str, threads))} threads; the work terms scale with the threads in use)")
    entries = tuning_cache.read_cache()
    print(f"autotuning cache {tuning_cache.cache_path()}: {len(entries)} entries")
    for key, entry in sorted(entries.items()):
        print(f"  {key}: {entry['backend']}")


def run_command(args) -> int:
    status = 0
    if args.clear:
        if clear_cache(disk=True):
            print(f"removed {tuning_cache.cache_path()}")
        else:
            status = 1
    if args.probe:
        print(f"measuring this machine's speeds for the cost model ({config.threads} threads)...")
        measured = rerun_probe()
        clear_cache()
        print(f"took {measured['seconds']:.2f} s; kept in {probe_path()}")
        if not config.cost_probe:
            print("the cost probe is off (FASTCONV_COST_PROBE=0): auto keeps the shipped constants")
    if args.calibrate:
        print(f"calibrating the cost model on this machine ({config.threads} threads)...")
        fitted, _ = calibrate(args.backends)
        path = save_constants({**fitted_constants(), **fitted}, config.threads)
        clear_cache()
        for name, table in fitted.items():
            print("\n".join(_constant_lines(name, table, "fitted")))
        if path is None:
            status = 1  # save_constants warned why
        else:
            print(f"wrote {path}")
        print("to ship these constants, paste each table into its backend's COST_CONSTANTS and this machine's "
              "speeds into fastconv/auto/constants.py:")
        print(f"REFERENCE_MACHINE = {reference_machine()!r}")
    if args.show or args.probe or not (args.calibrate or args.clear):
        show()
    return status
