"""The ``fastconv`` command line (also ``python -m fastconv``).

``fastconv bench``     times every available backend (and torch/scipy, each in its own process) on
                       a built-in suite and prints one table per case.
``fastconv explain``   says which backends can run one convolution, why the others cannot, and
                       which one ``backend="auto"`` picks; ``--measure`` times them.
``fastconv report``    runs a sweep and writes PNG plots and a Markdown page on the trade-offs.
``fastconv backends``  lists the registered backends and why any is unavailable.
``fastconv tune``      fits the cost model behind ``backend="auto"`` on this machine
                       (``--calibrate``), or shows or clears the autotuning cache.

Bad arguments print a usage line and a one-line error and exit with status 2, as argparse does.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys

from fastconv import backends
from fastconv.tools import bench
from fastconv.tools.cases import SUITES, Case, suite_cases

_SHAPE_HELP = "a shape written like 1x64x56x56"


class CommandLineError(Exception):
    """An argument the parser accepted but the command cannot use: reported as a usage error."""


# --------------------------------------------------------------------------------------------
# argument types: each raises ArgumentTypeError, which argparse reports as a one-line error


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _ints(text: str, what: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.replace(" ", "").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None


def _shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {_SHAPE_HELP}, got {text!r}") from None
    if min(shape) < 1:
        raise argparse.ArgumentTypeError(f"expected positive sizes in {_SHAPE_HELP}, got {text!r}")
    return shape


def _int_or_pair(text: str):
    values = _ints(text, "an int or a pair like 2,1")
    if len(values) not in (1, 2):
        raise argparse.ArgumentTypeError(f"expected an int or a pair like 2,1, got {text!r}")
    return values[0] if len(values) == 1 else values


def _padding(text: str):
    if text in ("same", "valid", "full"):
        return text
    what = "same, valid, full, an int, a pair PH,PW or TOP,BOTTOM,LEFT,RIGHT"
    values = _ints(text, what)
    if len(values) == 4:
        return (values[:2], values[2:])
    if len(values) not in (1, 2):
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
    return values[0] if len(values) == 1 else values


# --------------------------------------------------------------------------------------------
# tables


def _format_seconds(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds * 1e6:.1f} µs"


def _markdown_table(header: list[str], rows: list[list[str]], right_aligned: set[int]) -> str:
    widths = [max(len(str(row[i])) for row in [header] + rows) for i in range(len(header))]

    def line(cells):
        return "| " + " | ".join(str(cell).rjust(width) if i in right_aligned else str(cell).ljust(width)
                                 for i, (cell, width) in enumerate(zip(cells, widths))) + " |"

    rule = "|" + "|".join("-" * (width + 1) + (":" if i in right_aligned else "-") for i, width in enumerate(widths)) + "|"
    return "\n".join([line(header), rule] + [line(row) for row in rows])


def _ratio(numerator: float | None, denominator: float | None) -> str:
    return f"{numerator / denominator:.2f}×" if numerator and denominator else "—"


def format_case(entry: dict, backend_names, peers) -> str:
    """A Markdown table for one case of :func:`fastconv.tools.bench.measure`, then its winner and auto's pick."""
    case = Case.from_dict(entry["case"])
    backend_names = entry.get("backends", backend_names)  # ops other than conv2d have their own backends
    references = [name for name in backend_names if name in backends.backend_names(case.op) and backends.is_reference(name)]
    baselines = [name for name in (*references, *peers) if name in entry["results"]]
    rows = []
    for name in [*backend_names, *peers]:
        result = entry["results"][name]
        label = f"{name} (peer)" if name in peers else name
        seconds = bench.median_seconds(entry, name)
        if seconds is None:
            rows.append([label, "—", "—", *("—" for _ in baselines), f"{result['status']}: {result['reason']}"])
            continue
        rows.append([label, _format_seconds(seconds), f"{entry['flops'] / seconds / 1e9:.2f}",
                     *(_ratio(bench.median_seconds(entry, other), seconds) for other in baselines),
                     "" if result["runs"] > 1 else "1 timed call"])
    header = ["backend", "median", "GFLOP/s", *(f"vs {other}" for other in baselines), "note"]
    table = _markdown_table(header, rows, right_aligned={1, 2, *range(3, 3 + len(baselines))})

    winner = bench.fastest(entry, backend_names)
    lines = [f"## {case.name}", f"{case.describe()}; {entry['flops'] / 1e9:.3g} GFLOP", "", table, ""]
    if winner is None:
        lines.append("winner: none of the backends ran this case")
    else:
        best = bench.median_seconds(entry, winner)
        against = [f"{peer} {_ratio(bench.median_seconds(entry, peer), best)}" for peer in peers
                   if bench.median_seconds(entry, peer)]
        lines.append(f"winner: {winner}" + (f"; its speed relative to {', '.join(against)} (> 1: faster)" if against else ""))
    auto = entry.get("auto")
    if auto is not None:
        auto_seconds = bench.median_seconds(entry, auto)
        if auto == winner:
            verdict = "the winner"
        elif auto_seconds and winner:
            verdict = f"{auto_seconds / bench.median_seconds(entry, winner):.2f}× the winner's time"
        else:
            verdict = "not timed here"
        lines.append(f"auto picks: {auto} ({verdict})")
    return "\n".join(lines)


def _header(results: dict) -> str:
    machine = results["machine"]
    versions = ", ".join(f"{package} {machine[package]}" for package in ("numpy", "scipy", "numba", "torch")
                         if machine.get(package))
    return (f"fastconv {machine['fastconv']} on {machine['cpu']} ({machine['cores']} cores, {machine['threads']} "
            f"threads); {versions}\nmedian of up to {results['repeat']} timed calls (short ones: 30 ms of calls) after "
            f"warm-up; "
            f"peers each timed in their own process; 'vs X' = X's time / this row's time (> 1: faster than X)")


# --------------------------------------------------------------------------------------------
# commands


def _selected_backends(requested) -> tuple[list[str], list[str]]:
    """(backends to time, notes on the ones left out); unknown or unavailable names are errors."""
    import fastconv

    rows = fastconv.list_backends()
    if requested:
        registered = {row.name: row for row in rows}
        for name in requested:
            if name not in registered:
                raise CommandLineError(f"unknown backend {name!r}; registered: {', '.join(registered)}")
            if not registered[name].available:
                raise CommandLineError(f"backend {name!r} is not available here: {registered[name].reason}")
        return list(dict.fromkeys(requested)), []
    return ([row.name for row in rows if row.available],
            [f"{row.name} not timed: unavailable here ({row.reason})" for row in rows if not row.available])


def _selected_peers(wanted: bool) -> tuple[list[str], list[str]]:
    if not wanted:
        return [], []
    peers = bench.installed_peers()
    return peers, [f"{peer} not timed: not installed" for peer in bench.PEERS if peer not in peers]


def _check_writable(path: str) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory) or not os.access(directory, os.W_OK):
        raise CommandLineError(f"cannot write --json file {path!r}: no writable directory {directory!r}")


def _write_json(results: dict, path: str) -> None:
    try:
        with open(path, "w") as file:
            json.dump(results, file, indent=1)
    except OSError as error:
        raise CommandLineError(f"cannot write --json file {path!r}: {error.strerror}") from None


def _bench(args) -> int:
    backend_names, notes = _selected_backends(args.backends)
    peers, peer_notes = _selected_peers(args.peers)
    cases = suite_cases(args.suite, quick=args.quick, dtype=args.dtype)
    repeat = args.repeat or (1 if args.quick else 5)
    if args.json:
        _check_writable(args.json)  # fail now, not after minutes of measuring
    for note in notes + peer_notes:
        print(note)
    results = bench.measure(cases, backend_names, peers, repeat=repeat, budget_s=0.2 if args.quick else 1.0)
    print(_header(results))
    for entry in results["cases"]:
        print()
        print(format_case(entry, backend_names, peers))
    summary = bench.auto_summary(results)
    if summary:
        print(f"\n{summary}")
    if args.json:
        _write_json(results, args.json)
        print(f"results written to {args.json}")
    return 0


def _explain(args) -> int:
    import fastconv
    from fastconv.ops.conv2d import choose_backend

    if args.backends and not args.measure:
        raise CommandLineError("--backends only applies with --measure")
    backend_names = _selected_backends(args.backends)[0] if args.measure else []
    input_shape = args.input if len(args.input) == 4 else (1, *args.input)
    if len(input_shape) != 4:
        raise CommandLineError(f"--input must be NxCxHxW or CxHxW, got {'x'.join(map(str, args.input))}")
    if len(args.weight) != 4:
        raise CommandLineError(f"--weight must be KxCxKHxKW (C = input channels / groups), "
                               f"got {'x'.join(map(str, args.weight))}")
    case = Case("explain", input_shape, args.weight, stride=args.stride, padding=args.padding,
                      dilation=args.dilation, groups=args.groups, padding_mode=args.padding_mode, dtype=args.dtype)
    try:
        spec = case.spec()
    except (ValueError, TypeError) as error:
        raise CommandLineError(str(error)) from None

    print(f"{case.describe()}\noutput {'x'.join(map(str, spec.out_shape))}, {spec.flops / 1e9:.3g} GFLOP "
          f"(direct), padding {spec.padding}\n")
    if hasattr(fastconv, "explain"):  # the cost model's own table, where it exists
        print(fastconv.explain(input_shape, args.weight, **case.conv_kwargs()))
    else:
        rows = []
        for row in fastconv.list_backends():
            reason = row.reason and f"unavailable: {row.reason}"
            if row.available:
                reason = fastconv.backends.get(row.name).supports(case.backend_spec())
            rows.append([row.name, "yes" if reason is None else "no", reason or ""])
        print(_markdown_table(["backend", "can run", "why not"], rows, right_aligned=set()))
        print(f"\nauto picks: {choose_backend(case.backend_spec())}")
    if args.measure:
        peers, _ = _selected_peers(args.peers)
        results = bench.measure([case], backend_names, peers, repeat=args.repeat or 5)
        print()
        print(format_case(results["cases"][0], backend_names, peers))
    return 0


def _report(args) -> int:
    from fastconv.tools import report

    if importlib.util.find_spec("matplotlib") is None:
        print("fastconv report: error: needs matplotlib; install it with: pip install matplotlib "
              "(or the bench extra: pip install 'fastconv[bench]')", file=sys.stderr)
        return 1
    if args.json:
        try:
            with open(args.json) as file:
                results = json.load(file)
        except (OSError, ValueError) as error:
            raise CommandLineError(f"cannot read --json file {args.json!r}: {error}") from None
        if not isinstance(results, dict) or "cases" not in results:
            raise CommandLineError(f"--json file {args.json!r} is not a results file written by fastconv report")
    else:
        backend_names, notes = _selected_backends(args.backends)
        peers, peer_notes = _selected_peers(args.peers)
        for note in notes + peer_notes:
            print(note)
        results = report.run_sweep(backend_names, peers, quick=args.quick, repeat=args.repeat)
    try:
        page = report.write_report(results, args.output)
    except OSError as error:
        raise CommandLineError(f"cannot write the report to {args.output!r}: {error}") from None
    print(f"report written to {page}")
    return 0


def _list(args) -> int:
    import fastconv

    for row in fastconv.list_backends():
        print(f"{row.name:<12} {'available' if row.available else 'unavailable: ' + row.reason}")
    return 0


# --------------------------------------------------------------------------------------------
# the parser


def _add_measurement_options(parser, repeat_default_help: str) -> None:
    parser.add_argument("--peers", action=argparse.BooleanOptionalAction, default=True,
                        help="also time torch and scipy where installed, each in its own process (default: on)")
    parser.add_argument("--repeat", type=_positive_int, metavar="N",
                        help=f"timed calls per measurement, after one warm-up call ({repeat_default_help})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastconv", description="2-D convolution backends and benchmarks")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    bench_parser = commands.add_parser(
        "bench", help="time every backend on a built-in suite",
        description="Time every available backend, and torch/scipy as peers, on a built-in suite of problems.")
    bench_parser.add_argument("--suite", choices=SUITES, default="default",
                              help="which problems: a quick mix (default), CNN layers, image filters, "
                                   "depthwise/grouped, transposed, or all")
    bench_parser.add_argument("--backends", nargs="+", metavar="NAME", help="backends to time (default: all available)")
    bench_parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    bench_parser.add_argument("--json", metavar="FILE", help="also write every measurement to FILE as JSON")
    bench_parser.add_argument("--quick", action="store_true", help="tiny problems, one timed call: a smoke test")
    _add_measurement_options(bench_parser, "default 5; 1 with --quick")
    bench_parser.set_defaults(run=_bench, fail=bench_parser.error)

    explain = commands.add_parser(
        "explain", help="which backends can run one convolution, and auto's choice",
        description="Say which backends can run one conv2d call, why the others decline, and which one "
                    "backend='auto' picks. Example: fastconv explain --input 1x64x56x56 --weight 64x64x3x3 "
                    "--padding same")
    explain.add_argument("--input", type=_shape, required=True, metavar="SHAPE", help="NxCxHxW or CxHxW")
    explain.add_argument("--weight", type=_shape, required=True, metavar="SHAPE", help="KxCxKHxKW, C = input channels / groups")
    explain.add_argument("--stride", type=_int_or_pair, default=1, metavar="S", help="S or SH,SW (default 1)")
    explain.add_argument("--padding", type=_padding, default=0, metavar="P",
                         help="same, valid, full, P, PH,PW or TOP,BOTTOM,LEFT,RIGHT (default 0)")
    explain.add_argument("--dilation", type=_int_or_pair, default=1, metavar="D", help="D or DH,DW (default 1)")
    explain.add_argument("--groups", type=_positive_int, default=1)
    explain.add_argument("--padding-mode", choices=("zeros", "reflect", "replicate", "circular"), default="zeros")
    explain.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    explain.add_argument("--measure", action="store_true", help="also time every backend that can run it")
    explain.add_argument("--backends", nargs="+", metavar="NAME", help="with --measure: backends to time (default: all available)")
    _add_measurement_options(explain, "default 5")
    explain.set_defaults(run=_explain, fail=explain.error)

    report_parser = commands.add_parser(
        "report", help="sweep the backends and write plots and a Markdown page",
        description="Run a sweep (or read one with --json) and write PNG plots and report.md to a directory.")
    report_parser.add_argument("-o", "--output", default="fastconv-report", metavar="DIR",
                               help="directory for report.md, the PNGs and results.json (default fastconv-report)")
    report_parser.add_argument("--json", metavar="FILE", help="plot the results.json of an earlier report instead of measuring")
    report_parser.add_argument("--backends", nargs="+", metavar="NAME", help="backends to time (default: all available)")
    report_parser.add_argument("--quick", action="store_true", help="a tiny sweep, one timed call: a smoke test")
    _add_measurement_options(report_parser, "default 3; 1 with --quick")
    report_parser.set_defaults(run=_report, fail=report_parser.error)

    listing = commands.add_parser("backends", help="list registered backends and their availability")
    listing.set_defaults(run=_list, fail=listing.error)
    from fastconv.auto import calibrate  # `fastconv tune`: its options and logic live with the autotuner

    tune = commands.add_parser("tune", help="calibrate auto's cost model; show or clear the tuning cache",
                               description="Fit the cost model behind backend='auto' on this machine, or show "
                                           "or clear what autotuning has remembered.")
    calibrate.add_arguments(tune)
    tune.set_defaults(fail=tune.error)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except CommandLineError as error:
        args.fail(str(error))  # prints the command's usage and "fastconv <command>: error: ...", exits 2
    except KeyboardInterrupt:
        print(f"fastconv {args.command}: interrupted", file=sys.stderr)
        return 130
