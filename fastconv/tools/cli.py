"""The ``fastconv`` command line (also ``python -m fastconv``).

``fastconv bench``     times every available backend (and torch/scipy/OpenCV, each in its own process) on
                       a built-in suite and prints one table per case.
``fastconv explain``   says which backends can run one convolution, why the others cannot, and
                       which one ``backend="auto"`` picks; ``--measure`` fills in their times.
``fastconv report``    runs a sweep and writes PNG plots and a Markdown page on the trade-offs.
``fastconv backends``  lists the registered backends, their operations, and why any is unavailable.
``fastconv tune``      fits the cost model behind ``backend="auto"`` on this machine
                       (``--calibrate``), or shows or clears the autotuning cache.

A bad argument prints one line, ``fastconv <command>: error: ...``, and exits with status 2.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import textwrap

from fastconv import backends
from fastconv.tools import bench, networks
from fastconv.tools.cases import KERNELS, PASSES, SUITES, Case, make_inputs, pass_cases, suite_cases

_SHAPE_HELP = "a shape written like 1x64x56x56"


class CommandLineError(Exception):
    """An argument the parser accepted but the command cannot use: reported as a usage error."""


class _Parser(argparse.ArgumentParser):
    """argparse, with every error on one line (``fastconv bench: error: ...``), exit status 2.

    argparse prints the usage block before the error; in a terminal that buries the one line that
    matters, so the error says where the usage is instead. Subcommand parsers inherit the class.
    """

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


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
    scale, unit, digits = (1, "s", 2) if seconds >= 1 else (1e3, "ms", 2) if seconds >= 1e-3 else (1e6, "µs", 1)
    return f"{seconds * scale:.{digits}f} {unit}"


def _markdown_table(header: list[str], rows: list[list[str]], right_aligned: set[int]) -> str:
    widths = [max(len(str(row[i])) for row in [header] + rows) for i in range(len(header))]

    def line(cells):
        return "| " + " | ".join(str(cell).rjust(width) if i in right_aligned else str(cell).ljust(width)
                                 for i, (cell, width) in enumerate(zip(cells, widths))) + " |"

    rule = "|" + "|".join("-" * (width + 1) + (":" if i in right_aligned else "-") for i, width in enumerate(widths)) + "|"
    return "\n".join([line(header), rule] + [line(row) for row in rows])


def _ratio(numerator: float | None, denominator: float | None) -> str:
    return f"{numerator / denominator:.2f}×" if numerator and denominator else "—"


def _short_note(label: str, result: dict, footnotes: list[str]) -> str:
    """A few words for the note column (``declines [1]``); the whole reason becomes footnote [1]."""
    word, reason = result["status"], result["reason"]
    head, _, rest = reason.partition(": ")
    if head in ("declines", "unavailable") and rest:
        word, reason = head, rest
    footnote = f"{label} {word}: {reason}"
    if footnote not in footnotes:
        footnotes.append(footnote)
    return f"{word} [{footnotes.index(footnote) + 1}]"


def format_case(entry: dict, backend_names, peers) -> str:
    """A Markdown table for one case of :func:`fastconv.tools.bench.measure`, then its winner and auto's pick.

    Notes stay short (``declines [1]``): why a backend was not timed is a numbered footnote under
    the table, so that rows do not wrap in a terminal.
    """
    case = Case.from_dict(entry["case"])
    backend_names = entry.get("backends", backend_names)  # the requested backends that implement this op
    references = [name for name in backend_names if name != bench.AUTO and backends.is_reference(name)]
    baselines = [name for name in (*references, *peers) if name in entry["results"]]
    rows, footnotes = [], []
    for name in [*backend_names, *peers]:
        result = entry["results"][name]
        label = f"{name} (peer)" if name in peers else name
        seconds = bench.median_seconds(entry, name)
        if seconds is None:
            rows.append([label, "—", "—", *("—" for _ in baselines), _short_note(name, result, footnotes)])
            continue
        rows.append([label, _format_seconds(seconds), f"{entry['flops'] / seconds / 1e9:.2f}",
                     *(_ratio(bench.median_seconds(entry, other), seconds) for other in baselines),
                     "" if result["runs"] > 1 else "1 timed call"])
    header = ["backend", "median", "GFLOP/s", *(f"vs {other}" for other in baselines), "note"]
    table = _markdown_table(header, rows, right_aligned={1, 2, *range(3, 3 + len(baselines))})

    winner = bench.fastest(entry, backend_names)
    lines = [f"## {case.name}", f"{case.describe()}; {entry['flops'] / 1e9:.3g} GFLOP", "", table, ""]
    if footnotes:
        lines += [f"[{number}] {text}" for number, text in enumerate(footnotes, 1)] + [""]
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
    versions = ", ".join(f"{package} {machine[package]}" for package in ("numpy", "scipy", "numba", "torch", "opencv")
                         if machine.get(package))
    return (f"fastconv {machine['fastconv']} on {machine['cpu']} ({machine['cores']} cores, {machine['threads']} "
            f"threads)\n{versions}\nmedian of up to {results['repeat']} timed calls (short ones: 30 ms of calls) after "
            f"warm-up; peers each timed in their own process\n'vs X' = X's time / this row's time (> 1: faster than X)")


# --------------------------------------------------------------------------------------------
# commands


def _names(names) -> str:
    return ", ".join(names)


def _selected_backends(requested, ops) -> tuple[list[str], list[str], list[str]]:
    """(backends to time, the operations of ``ops`` left with a backend, notes for the output).

    Without ``requested``: every backend of those operations available here. Otherwise the
    requested ones, each timed on the cases of the operations it implements: a name that is a
    backend of no operation, or one unavailable here, is an error; one that does not implement an
    operation of ``ops`` is said so, and an operation none of them implements is left out.
    """
    registered = {op: bench.op_backends(op) for op in dict.fromkeys((*backends.OPERATIONS, *ops))}
    every = list(dict.fromkeys(name for names in registered.values() for name in names))
    if not requested:
        relevant = [name for name in every if any(name in registered[op] for op in ops)]
        reasons = {name: backends.unavailable_reason(name) for name in relevant}
        return ([name for name in relevant if reasons[name] is None], list(ops),
                [f"{name} not timed: unavailable here ({reasons[name]})" for name in relevant if reasons[name]])
    requested = list(dict.fromkeys(requested))
    for name in requested:
        if name == bench.AUTO:  # the operation as users call it: applies to every operation
            continue
        if name not in every:
            raise CommandLineError(f"unknown backend {name!r}; registered: "
                                   + "; ".join(f"{op}: {_names(names)}" for op, names in registered.items()))
        reason = backends.unavailable_reason(name)
        if reason is not None:
            raise CommandLineError(f"backend {name!r} is not available here: {reason}")
    kept, notes = [], []
    for op in ops:
        applying = [name for name in requested if name in registered[op] or name == bench.AUTO]
        others = [name for name in requested if name not in registered[op] and name != bench.AUTO]
        if not applying:
            notes.append(f"{op} cases left out: none of {_names(requested)} is a {op} backend "
                         f"({op}'s backends are {_names(registered[op])})")
            continue
        kept.append(op)
        if others:
            notes.append(f"not timed on {op} cases: {_names(others)} ({op}'s backends are "
                         f"{_names(registered[op])})")
    if not kept:
        raise CommandLineError(f"none of the requested backends ({_names(requested)}) implements "
                               f"{' or '.join(ops)}; " + "; ".join(f"{op}'s backends are {_names(registered[op])}"
                                                                   for op in ops))
    return [name for name in requested if name == bench.AUTO or any(name in registered[op] for op in kept)], kept, notes


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


def _suite_ops(cases) -> list[str]:
    return list(dict.fromkeys(case.op for case in cases))


def _bench(args) -> int:
    peers, peer_notes = _selected_peers(args.peers)
    if args.rounds is not None and not args.networks:
        raise CommandLineError(f"--rounds {args.rounds} times whole networks: it needs --networks")
    if args.networks:
        print("\n".join(peer_notes + [networks.bench_text(args.networks, args.backends or [], "torch" in peers,
                                                          args.quick, args.repeat, args.rounds)]))
        return 0
    suite = suite_cases(args.suite, quick=args.quick, dtype=args.dtype)
    cases = pass_cases(suite, args.pass_)
    if len(cases) < len(suite):
        print(f"--pass {args.pass_}: {len(suite) - len(cases)} cases of other operations than conv2d left out")
    backend_names, ops, notes = _selected_backends(args.backends, _suite_ops(cases))
    if args.suite == "calls" and not args.backends:
        backend_names = [bench.AUTO, *backend_names]  # what a call costs as users make it, beside each backend
    cases = [case for case in cases if case.op in ops]
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
    calls = bench.call_overhead_summary(results)
    if calls:
        print(f"\n{calls}")
    if args.json:
        _write_json(results, args.json)
        print(f"results written to {args.json}")
    return 0


def _measured(result: dict):
    """Seconds of one bench result, or why it was not timed (as :meth:`Explanation.with_measurements` takes it)."""
    if result["status"] == "ok":
        return result["median_s"]
    head = result["reason"].partition(": ")[0]
    return result["reason"] if head in ("declines", "unavailable") else f"{result['status']}: {result['reason']}"


def explain_case(case: Case):
    """:func:`fastconv.explain` of a conv2d case, on the very weight ``fastconv bench`` times it with
    (so that weight-dependent backends, ``separable``, are judged on that kernel)."""
    import fastconv

    _, weight = make_inputs(case)
    return fastconv.explain(case.input_shape, weight, dtype=case.dtype, op=case.op, **case.conv_kwargs())


def _explain(args) -> int:
    if args.backends and not args.measure:
        raise CommandLineError("--backends only applies with --measure")
    input_shape = args.input if len(args.input) == 4 else (1, *args.input)
    if len(input_shape) != 4:
        raise CommandLineError(f"--input must be NxCxHxW or CxHxW, got {'x'.join(map(str, args.input))}")
    if len(args.weight) != 4:
        raise CommandLineError(f"--weight must be KxCxKHxKW (C = input channels / groups), "
                               f"got {'x'.join(map(str, args.weight))}")
    case = Case("explain", input_shape, args.weight, stride=args.stride, padding=args.padding,
                dilation=args.dilation, groups=args.groups, padding_mode=args.padding_mode, kernel=args.kernel,
                dtype=args.dtype, op=PASSES[args.pass_])
    try:
        spec = case.spec()
    except (ValueError, TypeError) as error:
        raise CommandLineError(str(error)) from None
    if args.measure:
        backend_names, _, notes = _selected_backends(args.backends, [case.op])
        peers, peer_notes = _selected_peers(args.peers)
        for note in notes + peer_notes:
            print(note)
    explanation = explain_case(case)

    print(f"{case.describe()}\noutput {'x'.join(map(str, spec.out_shape))}, {spec.flops / 1e9:.3g} GFLOP "
          f"(direct), padding {spec.padding}\n")
    if args.measure:
        results = bench.measure([case], backend_names, peers, repeat=args.repeat or 5)
        entry = results["cases"][0]
        explanation = explanation.with_measurements(
            {name: _measured(entry["results"][name]) for name in entry["backends"]},
            peers={peer: _measured(entry["results"][peer]) for peer in peers})
    print(explanation)
    if args.measure:
        print(f"measured column: median of up to {results['repeat']} timed calls after warm-up, as fastconv bench "
              f"times them; peers each in their own process")
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
        backend_names, _, notes = _selected_backends(args.backends, _suite_ops(report.sweep_cases(args.quick)))
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
    operations = {name: [op for op in backends.OPERATIONS if name in backends.backend_names(op)]
                  for op in backends.OPERATIONS for name in backends.backend_names(op)}
    width = max(len(", ".join(ops)) for ops in operations.values())
    print(f"{'backend':<11} {'operations':<{width}}  status")
    for name, ops in operations.items():
        reason = backends.unavailable_reason(name)
        if reason is not None:
            status = f"unavailable: {reason}"
        else:
            roles = [role for role, yes in (("the reference loops", backends.is_reference(name)),
                                            ("GPU arrays", backends.placement(name) == "device")) if yes]
            status = "available" + (f" ({', '.join(roles)})" if roles else "")
        prefix = f"{name:<11} {', '.join(ops):<{width}}  "
        print(textwrap.fill(status, width=max(100, len(prefix) + 40), initial_indent=prefix,
                            subsequent_indent=" " * len(prefix)))
    return 0


def _tune(args) -> int:
    from fastconv.auto import calibrate

    problem = calibrate.argument_problem(args)
    if problem is not None:
        raise CommandLineError(problem)
    return calibrate.run_command(args)


# --------------------------------------------------------------------------------------------
# the parser


def _add_measurement_options(parser, repeat_default_help: str) -> None:
    parser.add_argument("--peers", action=argparse.BooleanOptionalAction, default=True,
                        help="also time torch, scipy and OpenCV where installed, each in its own process (default: on)")
    parser.add_argument("--repeat", type=_positive_int, metavar="N",
                        help=f"timed calls per measurement, after one warm-up call ({repeat_default_help})")


def _add_pass_option(parser) -> None:
    parser.add_argument("--pass", dest="pass_", choices=tuple(PASSES), default="forward",
                        help="the forward conv2d call (default), or its gradient with respect to the input or the "
                             "weight (torch's peer: torch.autograd.grad)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="fastconv", description="2-D convolution backends and benchmarks")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    bench_parser = commands.add_parser("bench", help="time every backend on a built-in suite", description=(
        "Time every available backend, and torch/scipy/OpenCV as peers, on a built-in suite of problems."))
    bench_parser.add_argument("--suite", choices=SUITES, default="default",
                              help="which problems: a quick mix (default), CNN layers, image filters, "
                                   "depthwise/grouped, transposed, calls (a 1x1x8x8 input and a 3x3 kernel: the "
                                   "time per call, with backend='auto' as a row), or all")
    bench_parser.add_argument("--backends", nargs="+", metavar="NAME",
                              help="backends to time, each on the cases of the operations it implements "
                                   "(default: all available); 'auto' times backend='auto' as a row of its own")
    bench_parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    bench_parser.add_argument("--json", metavar="FILE", help="also write every measurement to FILE as JSON")
    _add_pass_option(bench_parser)
    bench_parser.add_argument("--quick", action="store_true", help="tiny problems, one timed call: a smoke test")
    bench_parser.add_argument("--networks", nargs="+", choices=tuple(networks.NETWORKS), metavar="NET",
                              help="time every conv layer of whole networks in sequence instead of a suite")
    bench_parser.add_argument("--rounds", type=_positive_int, metavar="N", help="with --networks: N processes per "
                              "library, taking turns; the median and range (default 3; 1 with --quick)")
    _add_measurement_options(bench_parser, "default 5; 1 with --quick")
    bench_parser.set_defaults(run=_bench, fail=bench_parser.error)

    explain = commands.add_parser(
        "explain", help="which backends can run one convolution, and auto's choice",
        description="Say which backends can run one conv2d call, why the others decline, and which one "
                    "backend='auto' picks; --measure fills the table's measured column with the times fastconv "
                    "bench would report. Example: fastconv explain --input 1x64x56x56 --weight 64x64x3x3 "
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
    explain.add_argument("--kernel", choices=KERNELS, default="random",
                         help="the weight values, which decide whether separable can run: random (full rank, "
                              "like learned filters; the default) or gaussian (rank 1), as fastconv bench makes them")
    _add_pass_option(explain)
    explain.add_argument("--measure", action="store_true",
                         help="also time the backends (and peers) as fastconv bench does: the measured column")
    explain.add_argument("--backends", nargs="+", metavar="NAME", help="with --measure: backends to time (default: all available)")
    _add_measurement_options(explain, "default 5")
    explain.set_defaults(run=_explain, fail=explain.error)

    report_parser = commands.add_parser(
        "report", help="sweep the backends and write plots and a Markdown page",
        description="Run a sweep (or read one with --json) and write PNG plots and report.md to a directory.")
    report_parser.add_argument("-o", "--output", default="fastconv-report", metavar="DIR",
                               help="directory for report.md, the PNGs and results.json (default fastconv-report)")
    report_parser.add_argument("--json", metavar="FILE", help="plot the results.json of an earlier report instead of measuring")
    report_parser.add_argument("--backends", nargs="+", metavar="NAME",
                               help="conv2d backends to time (default: all available)")
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
    tune.set_defaults(run=_tune, fail=tune.error)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args, unrecognized = parser.parse_known_args(argv)
    if unrecognized:  # reported by the subcommand's parser, so that the error names the command
        getattr(args, "fail", parser.error)(f"unrecognized arguments: {' '.join(unrecognized)}")
    try:
        return args.run(args)
    except CommandLineError as error:
        args.fail(str(error))  # prints "fastconv <command>: error: ..." and exits with status 2
    except KeyboardInterrupt:
        print(f"fastconv {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`fastconv tune --show | head`): not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes
        return 1
