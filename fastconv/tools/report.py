"""``fastconv report``: a sweep over the backends, four plots and a Markdown page that explains them.

The sweep (:func:`sweep_cases`) has three groups of problems:

``crossover``
    single-channel image filtering, image side × kernel side, random and Gaussian kernels
    (plots 1 and 2: which backend wins where, and time against kernel size);
``layers``
    the canonical CNN layers (plot 3: achieved GFLOP/s against the machine's sgemm rate);
``stride_dilation``
    one ResNet-style 3×3 layer with stride 1–4 and dilation 1–4 (plot 4).

Every backend available here is measured, so backends added later appear without changes here.
Plots are written with matplotlib's Agg backend (no display needed).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import replace

from fastconv import backends
from fastconv.tools import bench
from fastconv.tools.cases import Case, canonical_layers, image_filter, suite_cases

__all__ = ["run_sweep", "sweep_cases", "write_report"]

PLOTS = ("crossover.png", "kernel_size.png", "layers.png", "stride_dilation.png")


def sweep_cases(quick: bool = False) -> list[Case]:
    """The problems of the report's sweep (tiny ones when ``quick``)."""
    sides, kernel_sides = ((32, 64), (3, 7)) if quick else ((64, 128, 256, 512, 1024), (3, 5, 9, 15, 31, 63))
    cases = [image_filter(side, k, kind, group="crossover")
             for kind in ("random", "gaussian") for side in sides for k in kernel_sides if k <= side]
    if quick:
        cases += [replace(case, group="layers") for case in suite_cases("cnn", quick=True)]
        base = Case("", (1, 8, 16, 16), (8, 8, 3, 3), padding="same", group="stride_dilation")
        steps = (1, 2)
    else:
        cases += canonical_layers()
        base = Case("", (1, 64, 56, 56), (64, 64, 3, 3), padding="same", group="stride_dilation")
        steps = (1, 2, 3, 4)
    for stride in steps:
        cases.append(replace(base, name=f"3x3 stride {stride}", stride=stride))
    for dilation in steps[1:]:
        cases.append(replace(base, name=f"3x3 dilation {dilation}", dilation=dilation))
    return cases


def run_sweep(backend_names, peers, quick: bool = False, repeat: int | None = None) -> dict:
    """Measure :func:`sweep_cases` and the sgemm ceiling; the dict that :func:`write_report` plots."""
    results = bench.measure(sweep_cases(quick), backend_names, peers, repeat=repeat or (1 if quick else 3),
                            budget_s=0.1 if quick else 0.5)
    results["sgemm_gflops"] = bench.sgemm_gflops(256 if quick else 1024)
    return results


# --------------------------------------------------------------------------------------------
# plots


def _entries(results: dict, group: str) -> list[tuple[Case, dict]]:
    return [(Case.from_dict(entry["case"]), entry) for entry in results["cases"] if entry["case"]["group"] == group]


def _colours(results: dict) -> dict[str, tuple]:
    # one colour per name for every plot: registration order first, so a backend keeps its colour
    # from one report to the next
    import matplotlib

    names = list(dict.fromkeys([*backends.backend_names(), *results["backends"], *bench.PEERS, *results["peers"]]))
    palette = matplotlib.colormaps["tab10"].colors
    return {name: palette[i % len(palette)] for i, name in enumerate(names)}


def _line_style(name: str, results: dict) -> dict:
    return {"linestyle": "--", "marker": "s"} if name in results["peers"] else {"linestyle": "-", "marker": "o"}


def _label(name: str, results: dict) -> str:
    return f"{name} (peer)" if name in results["peers"] else name


def _plot_crossover(results, colours, path, plt):
    from matplotlib.patches import Patch

    entries = _entries(results, "crossover")
    sides = sorted({case.input_shape[-1] for case, _ in entries})
    kernel_sides = sorted({case.weight_shape[-1] for case, _ in entries})
    figure, axes = plt.subplots(1, 2, figsize=(12, 5.2), sharey=True)
    winners_seen = set()
    for axis, kind in zip(axes, ("random", "gaussian")):
        axis.set_xlim(-0.5, len(sides) - 0.5)
        axis.set_ylim(-0.5, len(kernel_sides) - 0.5)
        for case, entry in entries:
            if case.kernel != kind:
                continue
            column, row = sides.index(case.input_shape[-1]), kernel_sides.index(case.weight_shape[-1])
            winner = bench.fastest(entry, results["backends"])
            peer = bench.fastest(entry, results["peers"])
            if winner is None:  # every backend declined or was skipped (naive on a large problem)
                axis.add_patch(plt.Rectangle((column - 0.5, row - 0.5), 1, 1, color="lightgrey"))
                axis.text(column, row, "no backend\ntimed" + (f"\n†{peer}" if peer else ""),
                          ha="center", va="center", fontsize=7)
                continue
            winners_seen.add(winner)
            seconds = bench.median_seconds(entry, winner)
            axis.add_patch(plt.Rectangle((column - 0.5, row - 0.5), 1, 1, color=colours[winner]))
            beaten = peer is not None and bench.median_seconds(entry, peer) < seconds
            # the fastest peer's time against fastconv's best: > 1 where the peer is slower
            against = f"\n{bench.median_seconds(entry, peer) / seconds:.2g}× {peer}" if peer else ""
            axis.text(column, row, f"{seconds * 1e3:.3g} ms" + ("\n†" if beaten else "") + against,
                      ha="center", va="center", fontsize=7, color="white" if not beaten else "black")
        axis.set_xticks(range(len(sides)), [f"{side}²" for side in sides])
        axis.set_yticks(range(len(kernel_sides)), [f"{k}×{k}" for k in kernel_sides])
        axis.set_xlabel("image size (pixels, single channel)")
        axis.set_title(f"{kind} kernels" + (" (rank 1, separable)" if kind == "gaussian" else " (full rank)"))
    axes[0].set_ylabel("kernel size (taps)")
    figure.legend(handles=[Patch(color=colours[name], label=name) for name in sorted(winners_seen)],
                  loc="lower center", ncol=max(len(winners_seen), 1), title="fastest fastconv backend")
    figure.suptitle("Crossover map: fastest backend per image and kernel size (cell text: its median time)")
    figure.tight_layout(rect=(0, 0.12, 1, 0.95))
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _fixed_side(results) -> int:
    sides = sorted({case.input_shape[-1] for case, _ in _entries(results, "crossover")})
    return max([side for side in sides if side <= 512] or sides)


def _plot_kernel_size(results, colours, path, plt):
    from matplotlib.ticker import FormatStrFormatter

    side = _fixed_side(results)
    entries = [(case, entry) for case, entry in _entries(results, "crossover") if case.input_shape[-1] == side]
    figure, axes = plt.subplots(1, 2, figsize=(12, 4.8), sharey=True)
    for axis, kind in zip(axes, ("random", "gaussian")):
        for name in results["backends"] + results["peers"]:
            points = [(case.weight_shape[-1], bench.median_seconds(entry, name) * 1e3)
                      for case, entry in entries if case.kernel == kind and bench.median_seconds(entry, name)]
            if points:
                axis.plot(*zip(*sorted(points)), label=_label(name, results), color=colours[name],
                          **_line_style(name, results))
        axis.set_xscale("log", base=2)
        axis.set_yscale("log")
        axis.yaxis.set_major_formatter(FormatStrFormatter("%g"))
        kernel_sides = sorted({case.weight_shape[-1] for case, _ in entries})
        axis.set_xticks(kernel_sides, [str(k) for k in kernel_sides])
        axis.set_xlabel("kernel side k (k×k taps, log scale)")
        axis.set_title(f"{kind} kernels")
        axis.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("median time per call (ms, log scale)")
    axes[1].legend(loc="upper left", fontsize=8)
    figure.suptitle(f"Time against kernel size, {side}×{side} single-channel image, padding 'same'")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _plot_layers(results, colours, path, plt):
    import numpy as np
    from matplotlib.ticker import FormatStrFormatter

    entries = _entries(results, "layers")
    names = results["backends"] + results["peers"]
    height = 0.8 / max(len(names), 1)
    figure, axis = plt.subplots(figsize=(11, 1.5 + 0.25 * len(entries) * max(len(names), 2)))
    for position, name in enumerate(names):
        rates = [entry["flops"] / bench.median_seconds(entry, name) / 1e9 if bench.median_seconds(entry, name) else np.nan
                 for _, entry in entries]
        axis.barh(np.arange(len(entries)) + position * height, rates, height=height, color=colours[name],
                  label=_label(name, results), hatch="//" if name in results["peers"] else None)
    if results.get("sgemm_gflops"):
        axis.axvline(results["sgemm_gflops"], color="black", linestyle="--",
                     label=f"sgemm ceiling ({results['sgemm_gflops']:.0f} GFLOP/s)")
    axis.set_yticks(np.arange(len(entries)) + height * (len(names) - 1) / 2, [case.name for case, _ in entries])
    axis.invert_yaxis()
    axis.set_xscale("log")
    axis.xaxis.set_major_formatter(FormatStrFormatter("%g"))
    axis.set_xlabel("achieved GFLOP/s (direct-convolution flops / median time, log scale)")
    axis.set_title("Canonical CNN layers: achieved GFLOP/s per backend against the machine's sgemm rate")
    axis.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)
    axis.grid(True, axis="x", which="both", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _stride_dilation_points(results, name, field):
    points = []
    for case, entry in _entries(results, "stride_dilation"):
        other = "dilation" if field == "stride" else "stride"
        if getattr(case, other) == 1 and bench.median_seconds(entry, name):
            points.append((getattr(case, field), entry["flops"] / bench.median_seconds(entry, name) / 1e9))
    return sorted(points)


def _plot_stride_dilation(results, colours, path, plt):
    from matplotlib.ticker import FormatStrFormatter

    entries = _entries(results, "stride_dilation")
    base = entries[0][0] if entries else None
    figure, axes = plt.subplots(1, 2, figsize=(12, 4.6), sharey=True)
    for axis, field in zip(axes, ("stride", "dilation")):
        for name in results["backends"] + results["peers"]:
            points = _stride_dilation_points(results, name, field)
            if points:
                axis.plot(*zip(*points), label=_label(name, results), color=colours[name], **_line_style(name, results))
        values = sorted({getattr(case, field) for case, _ in entries})
        axis.set_xticks(values, [str(value) for value in values])
        axis.set_xlabel(f"{field} (both axes)")
        axis.set_yscale("log")
        axis.yaxis.set_major_formatter(FormatStrFormatter("%g"))
        axis.grid(True, which="both", alpha=0.3)
        axis.set_title(f"effect of {field}")
    axes[0].set_ylabel("achieved GFLOP/s (direct flops / time, log scale)")
    axes[1].legend(fontsize=8)
    if base is not None:
        figure.suptitle(f"Stride and dilation: input {'x'.join(map(str, base.input_shape))}, "
                        f"weight {'x'.join(map(str, base.weight_shape))}, padding 'same'")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


# --------------------------------------------------------------------------------------------
# the page


def _crossover_findings(results) -> list[str]:
    lines = []
    for kind in ("random", "gaussian"):
        wins = Counter(bench.fastest(entry, results["backends"]) for case, entry in _entries(results, "crossover")
                       if case.kernel == kind)
        wins.pop(None, None)
        if wins:
            lines.append(f"- {kind} kernels: " + ", ".join(f"{name} wins {count} of {sum(wins.values())} cells"
                                                           for name, count in wins.most_common()))
    entries = _entries(results, "crossover")
    for peer in results["peers"]:
        timed = [(bench.median_seconds(entry, peer), bench.median_seconds(entry, best))
                 for _, entry in entries
                 if bench.median_seconds(entry, peer) and (best := bench.fastest(entry, results["backends"]))]
        if timed:
            faster = sum(peer_seconds < best for peer_seconds, best in timed)
            lines.append(f"- {peer} was faster than every fastconv backend in {faster} of {len(timed)} cells it ran")
    if results["peers"]:
        lines.append("- a cell where the fastest peer beat every fastconv backend is marked †; every cell names "
                     "the fastest peer and its time as a multiple of fastconv's best (> 1: fastconv is faster)")
    return lines


def _kernel_size_findings(results) -> list[str]:
    side = _fixed_side(results)
    lines = []
    for name in results["backends"] + results["peers"]:
        points = sorted((case.weight_shape[-1], bench.median_seconds(entry, name))
                        for case, entry in _entries(results, "crossover")
                        if case.input_shape[-1] == side and case.kernel == "random" and bench.median_seconds(entry, name))
        if len(points) >= 2:
            (k0, t0), (k1, t1) = points[0], points[-1]
            lines.append(f"- {_label(name, results)}: {t1 / t0:.3g}× slower at {k1}×{k1} than at {k0}×{k0} "
                         f"(the tap count grows {(k1 / k0) ** 2:.3g}×)")
    return lines


def _layer_rows(results) -> list[str]:
    ceiling = results.get("sgemm_gflops")
    rows = ["| layer | GFLOP | fastest backend | GFLOP/s | % of sgemm | fastest peer | GFLOP/s | auto picks |",
            "|---|---:|---|---:|---:|---|---:|---|"]
    for case, entry in _entries(results, "layers"):
        cells = [case.name, f"{entry['flops'] / 1e9:.3g}"]
        for names in (results["backends"], results["peers"]):
            best = bench.fastest(entry, names)
            rate = entry["flops"] / bench.median_seconds(entry, best) / 1e9 if best else None
            cells += [best or "—", f"{rate:.1f}" if rate else "—"]
            if names is results["backends"]:
                cells.append(f"{100 * rate / ceiling:.0f}%" if rate and ceiling else "—")
        cells.append(entry.get("auto") or "—")
        rows.append("| " + " | ".join(cells) + " |")
    return rows


def _page(results: dict) -> str:
    machine = results["machine"]
    packages = ("numpy", "scipy", "numba", "pyfftw", "torch", "opencv")
    versions = ", ".join(f"{package} {machine[package]}" for package in packages if machine.get(package))
    peers = ", ".join(results["peers"]) or "none"
    summary = bench.auto_summary(results)
    return "\n".join([
        "# fastconv trade-off report",
        "",
        f"Measured {machine['date']} on {machine['cpu']} ({machine['cores']} cores, {machine['threads']} threads) "
        f"with fastconv {machine['fastconv']}; {versions}. Backends: {', '.join(results['backends'])}; "
        f"peers (each timed in its own process): {peers}. Each point is the median of up to "
        f"{results['repeat']} timed calls (calls under 30 ms: as many as fill 30 ms) after one untimed warm-up call (JIT compilation, FFT planning), a 0.15 s "
        "pause and, for short calls, 30 ms of untimed calls (the previous backend's threads stop spinning, the "
        "machine wakes up). "
        "GFLOP/s counts the flops of direct convolution (2 per tap per output value) whatever the "
        "algorithm actually does, so an FFT backend can exceed the direct rate. Regenerate with "
        "`fastconv report -o DIR`, or re-plot these numbers with `fastconv report --json results.json -o DIR`.",
        "",
        "## 1. Crossover map",
        "",
        "![crossover map](crossover.png)",
        "",
        "Single-channel image filtering with padding 'same': each cell is one image size (x) and kernel size (y), "
        "coloured by the fastest fastconv backend and labelled with its median time. Direct methods cost "
        "O(H·W·k²), FFT methods O(H·W·log(H·W)) whatever k is, and a separable (rank-1) kernel costs only "
        "O(H·W·2k) as two 1-D passes — so the left map shows where FFT overtakes direct convolution as "
        "kernels grow, and the right map (Gaussian kernels, which are rank 1) shows where separable filtering "
        "takes over. Each cell also gives the fastest peer library's time as a multiple of fastconv's best "
        "there (OpenCV's `filter2D`/`sepFilter2D` where installed); † marks a cell where that peer was faster.",
        "",
        *_crossover_findings(results),
        "",
        "## 2. Time against kernel size",
        "",
        "![time against kernel size](kernel_size.png)",
        "",
        f"The same measurements at a fixed {_fixed_side(results)}×{_fixed_side(results)} image, one line per "
        "backend (peers dashed), log-log axes: a direct method's line climbs with slope 2 (time ∝ k²), an "
        "FFT method's stays nearly flat, a separable method's climbs with slope 1 on Gaussian kernels. "
        "From the smallest to the largest kernel (random kernels):",
        "",
        *_kernel_size_findings(results),
        "",
        "## 3. Canonical CNN layers against the sgemm ceiling",
        "",
        "![GFLOP/s per layer](layers.png)",
        "",
        "Achieved GFLOP/s of each backend on each canonical layer (ResNet-50, VGG, MobileNetV2, DeepLabV3, "
        "DeepSpeech, large-kernel convnet layers; batch 1), against the rate of a float32 matrix multiply "
        f"through numpy's BLAS on this machine ({results.get('sgemm_gflops', float('nan')):.0f} GFLOP/s, dashed "
        "line) — roughly the most a GEMM-based convolution can reach, like the roof of a roofline plot. "
        "Depthwise and 1×1 layers do few flops per byte moved, so every backend should sit far below the "
        "ceiling on them; layers with many channels are where GEMM lowering can come close, and Winograd "
        "(fewer multiplies than the direct count) can pass it. The table says what was measured. A missing bar "
        "means the backend declined the layer or was skipped (naive above "
        f"{bench.REFERENCE_MAX_FLOPS / 1e9:.1f} GFLOP).",
        "",
        *_layer_rows(results),
        "",
        "## 4. Stride and dilation",
        "",
        "![stride and dilation](stride_dilation.png)",
        "",
        "One 3×3 layer with growing stride (left) and dilation (right), as achieved GFLOP/s. Stride s "
        "divides the useful work by s² but not every algorithm's cost: an FFT computes every output position "
        "and throws most away, GEMM lowering gathers less, direct loops skip. Dilation spreads the taps "
        "apart: direct methods lose cache locality, FFT methods pay for the larger effective kernel.",
        "",
        "## Auto's choice",
        "",
        (summary + "." if summary else "No case had both auto's choice and the fastest backend timed."),
        "",
    ])


def write_report(results: dict, directory: str) -> str:
    """Write the four PNGs, ``results.json`` and ``report.md`` into ``directory``; return the page's path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "results.json"), "w") as file:
        json.dump(results, file, indent=1)
    colours = _colours(results)
    for plot, filename in zip((_plot_crossover, _plot_kernel_size, _plot_layers, _plot_stride_dilation), PLOTS):
        plot(results, colours, os.path.join(directory, filename), plt)
    page = os.path.join(directory, "report.md")
    with open(page, "w") as file:
        file.write(_page(results))
    return page
