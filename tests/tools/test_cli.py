"""The ``fastconv`` command line, run as users run it: in a subprocess, on the tiny ``--quick`` suites."""

import dataclasses
import json
import os
import subprocess
import sys

import pytest

from fastconv.tools import bench
from fastconv.tools.cases import Case, image_filter
from fastconv.tools.cli import explain_case

REPOSITORY = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def fastconv_cli(*arguments, timeout=240, cache_dir=None):
    environment = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [REPOSITORY, os.environ.get("PYTHONPATH")])))
    if cache_dir is not None:
        environment["FASTCONV_CACHE_DIR"] = str(cache_dir)
    return subprocess.run([sys.executable, "-m", "fastconv", *arguments], capture_output=True, text=True,
                          timeout=timeout, env=environment, cwd=REPOSITORY)


def test_bench_quick_prints_a_table_per_case_and_writes_json(tmp_path):
    # every available backend: the smoke test of the whole timing path (other tests use naive only)
    path = tmp_path / "bench.json"
    result = fastconv_cli("bench", "--quick", "--no-peers", "--json", str(path))
    assert result.returncode == 0, result.stderr
    assert "## tiny 3x3, 8ch 16x16" in result.stdout
    assert "| naive " in result.stdout and "winner: " in result.stdout and "auto picks:" in result.stdout
    results = json.loads(path.read_text())
    assert results["backends"][0] == "naive" and results["peers"] == []
    first = results["cases"][0]
    assert first["results"]["naive"]["status"] == "ok" and first["results"]["naive"]["median_s"] > 0
    assert first["flops"] == 2 * 8 * 16 * 16 * 8 * 9


def test_bench_times_installed_peers_in_their_own_process():
    result = fastconv_cli("bench", "--quick", "--suite", "image", "--backends", "naive", "--repeat", "2")
    assert result.returncode == 0, result.stderr
    assert "| scipy (peer) " in result.stdout and "vs scipy" in result.stdout


def test_bench_networks_times_whole_passes():
    result = fastconv_cli("bench", "--networks", "mobilenetv2", "--backends", "numba_cpu", "--quick", "--no-peers")
    assert result.returncode == 0, result.stderr
    assert "every conv layer of each network in sequence" in result.stdout
    assert "| mobilenetv2 | " in result.stdout and "| auto | numba_cpu |" in result.stdout


def test_rounds_need_networks():
    result = fastconv_cli("bench", "--rounds", "2", "--quick", "--no-peers")
    assert result.returncode == 2 and "--rounds 2" in result.stderr and "--networks" in result.stderr


def test_explain_lists_backends_and_auto_choice():
    result = fastconv_cli("explain", "--input", "1x8x16x16", "--weight", "8x8x3x3", "--padding", "same",
                          "--stride", "2")
    assert result.returncode == 0, result.stderr
    assert "output 1x8x8x8" in result.stdout
    assert "naive" in result.stdout and "auto picks" in result.stdout


def _row(output: str, name: str) -> str:
    """The line of a table whose first word is ``name``, without explain's mark of auto's pick."""
    return next(line for line in output.splitlines() if line.split()[:1] == [name]).replace("<- auto", "")


def test_explain_honours_dtype_and_judges_separable_on_the_kernel():
    # the kernel is random (full rank) unless --kernel says otherwise: separable declines it
    problem = ["explain", "--input", "1x1x512x512", "--weight", "1x1x9x9", "--padding", "same"]
    for dtype in ("float32", "float64"):
        result = fastconv_cli(*problem, "--dtype", dtype)
        assert result.returncode == 0, result.stderr
        header = next(line for line in result.stdout.splitlines() if line.startswith("conv2d input ("))
        assert header.endswith(f"{dtype}, kernel rank 9"), header
        assert " no " in _row(result.stdout, "separable")
        assert "numerical rank 9" in result.stdout  # the reason, as a footnote
    gaussian = fastconv_cli(*problem, "--kernel", "gaussian")
    assert gaussian.returncode == 0, gaussian.stderr
    assert "kernel rank 1" in gaussian.stdout and " yes " in _row(gaussian.stdout, "separable")


@pytest.mark.parametrize("case", [
    image_filter(512, 9),
    image_filter(512, 9, "gaussian"),
    dataclasses.replace(image_filter(512, 9), dtype="float64"),
    image_filter(1024, 31),
    Case("resnet 3x3", (1, 64, 56, 56), (64, 64, 3, 3), padding=1),
    Case("depthwise, stride 2", (1, 32, 56, 56), (32, 1, 3, 3), stride=2, padding=1, groups=32),
    Case("dilated, reflect", (1, 8, 64, 64), (8, 8, 5, 5), dilation=2, padding=4, padding_mode="reflect"),
], ids=lambda case: f"{case.name} {case.dtype}")
def test_explain_picks_what_bench_reports_as_autos_pick(case):
    bench_pick = bench.measure([case], [], peers=[], progress=False)["cases"][0]["auto"]
    assert explain_case(case).choice == bench_pick


def test_explain_command_agrees_with_bench_on_the_same_problem():
    result = fastconv_cli("explain", "--input", "1x1x512x512", "--weight", "1x1x9x9", "--padding", "same",
                          "--dtype", "float32")
    assert result.returncode == 0, result.stderr
    bench_pick = bench.measure([image_filter(512, 9)], [], peers=[], progress=False)["cases"][0]["auto"]
    assert f"auto picks {bench_pick!r}:" in result.stdout


def test_explain_measure_fills_the_measured_column_of_one_table():
    result = fastconv_cli("explain", "--input", "4x10x10", "--weight", "4x1x3x3", "--groups", "4",
                          "--padding", "1,1,0,2", "--padding-mode", "reflect", "--measure", "--backends", "naive",
                          "--repeat", "1")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert sum(line.startswith("backend ") for line in lines) == 1 and not any("|" in line for line in lines)
    def times(name):
        return sum(word in ("s", "ms", "us", "ns") for word in _row(result.stdout, name).split())

    assert times("naive") == 2  # estimated and measured
    assert times("im2col") == 1  # not requested: estimated only
    assert times("scipy") == 1  # the peers are rows of the same table, measured only
    assert "measured column: median of up to 1 timed calls" in result.stdout


def test_bench_backends_filter_every_suite():
    result = fastconv_cli("bench", "--quick", "--backends", "naive", "--no-peers")
    assert result.returncode == 0, result.stderr
    assert "## tiny transposed" in result.stdout and "col2im" not in result.stdout
    assert "| naive " in result.stdout and "| numba_cpu " not in result.stdout
    result = fastconv_cli("bench", "--quick", "--backends", "im2col", "col2im", "--no-peers")
    assert result.returncode == 0, result.stderr
    assert "not timed on conv2d cases: col2im" in result.stdout
    assert "not timed on conv_transpose2d cases: im2col" in result.stdout
    transposed = result.stdout[result.stdout.index("## tiny transposed"):]
    assert "| col2im " in transposed and "| im2col " not in transposed and "| naive " not in transposed
    result = fastconv_cli("bench", "--quick", "--suite", "transposed", "--backends", "im2col", "naive", "--no-peers")
    assert result.returncode == 0, result.stderr
    assert "not timed on conv_transpose2d cases: im2col" in result.stdout


def test_bench_calls_suite_times_auto_beside_the_backends_and_the_peer():
    """The per-call overhead: conv2d(backend="auto") as a row of its own, never the winner."""
    pytest.importorskip("torch")
    result = fastconv_cli("bench", "--suite", "calls", "--backends", "auto", "naive", "--repeat", "2")
    assert result.returncode == 0, result.stderr
    assert "## per-call overhead: 1x1x8x8, 3x3" in result.stdout
    assert "| auto " in result.stdout and "| naive " in result.stdout and "| torch (peer) " in result.stdout
    assert "winner: naive" in result.stdout
    summary = result.stdout.strip().splitlines()[-1]
    assert summary.startswith("per-call overhead: 1x1x8x8, 3x3: conv2d(backend='auto') ") and "× torch's time" in summary


def test_bench_notes_stay_short_with_reasons_as_footnotes():
    result = fastconv_cli("bench", "--quick", "--suite", "image", "--backends", "naive", "separable", "winograd",
                          "--no-peers")
    assert result.returncode == 0, result.stderr
    assert "declines [1]" in result.stdout
    assert "[1] separable declines: weight[0, 0] has numerical rank 5" in result.stdout
    assert "winograd declines: Winograd F(m×m, 3×3) needs a 3×3 kernel" in result.stdout
    table_lines = [line for line in result.stdout.splitlines() if line.startswith("|")]
    assert table_lines and max(map(len, table_lines)) <= 80, max(table_lines, key=len)


def test_backends_lists_every_operation_and_tune_show_each_backends_constants(tmp_path):
    listing = fastconv_cli("backends")
    assert listing.returncode == 0, listing.stderr
    assert _row(listing.stdout, "col2im").split()[1] == "conv_transpose2d"
    assert "conv2d, conv_transpose2d" in _row(listing.stdout, "naive")
    assert max(map(len, listing.stdout.splitlines())) <= 100
    show = fastconv_cli("tune", "--show", cache_dir=tmp_path)
    assert show.returncode == 0, show.stderr
    for name in ("naive", "im2col", "fft"):
        assert _row(show.stdout, name).split()[1] == "shipped"
    assert "autotuning cache" in show.stdout and str(tmp_path) in show.stdout
    assert max(len(line) for line in show.stdout.splitlines() if str(tmp_path) not in line) <= 100


def test_report_quick_writes_plots_and_page_and_replots_from_json(tmp_path):
    result = fastconv_cli("report", "--quick", "--backends", "naive", "--no-peers", "-o", str(tmp_path / "report"))
    assert result.returncode == 0, result.stderr
    page = (tmp_path / "report" / "report.md").read_text()
    for name in ("crossover.png", "kernel_size.png", "layers.png", "stride_dilation.png"):
        png = (tmp_path / "report" / name).read_bytes()
        assert png.startswith(b"\x89PNG") and len(png) > 10_000, name
        assert f"]({name})" in page
    assert "sgemm" in page and "naive wins" in page

    replot = fastconv_cli("report", "--json", str(tmp_path / "report" / "results.json"), "-o", str(tmp_path / "again"))
    assert replot.returncode == 0, replot.stderr
    assert (tmp_path / "again" / "crossover.png").stat().st_size > 10_000


@pytest.mark.parametrize("arguments", [
    [],
    ["frobnicate"],
    ["--frobnicate"],
    ["bench", "--suite", "nope"],
    ["bench", "--repeat", "0"],
    ["bench", "--frobnicate"],
    ["bench", "--backends", "no_such_backend"],
    ["bench", "--suite", "cnn", "--backends", "col2im"],
    ["bench", "--quick", "--no-peers", "--json", "/nonexistent-dir/x.json"],
    ["explain", "--weight", "8x8x3x3"],
    ["explain", "--input", "1xAx16x16", "--weight", "8x8x3x3"],
    ["explain", "--input", "1x8x16x16", "--weight", "8x8x3"],
    ["explain", "--input", "1x8x4x4", "--weight", "8x8x9x9"],
    ["explain", "--input", "1x8x16x16", "--weight", "8x8x3x3", "--groups", "3"],
    ["explain", "--input", "1x8x16x16", "--weight", "8x8x3x3", "--padding", "1,2,3"],
    ["explain", "--input", "1x8x16x16", "--weight", "8x8x3x3", "--stride", "0"],
    ["explain", "--input", "1x8x16x16", "--weight", "8x8x3x3", "--kernel", "box"],
    ["explain", "--input", "1x8x16x16", "--weight", "8x8x3x3", "--backends", "naive"],
    ["explain", "--input", "1x8x16x16", "--weight", "8x8x3x3", "--measure", "--backends", "col2im"],
    ["report", "--json", "/nonexistent-dir/results.json"],
    ["report", "--repeat", "-1"],
    ["report", "--quick", "--backends", "no_such_backend"],
    ["backends", "--all"],
    ["tune", "--frobnicate"],
    ["tune", "--backends", "naive"],
    ["tune", "--calibrate", "--backends", "no_such_backend"],
], ids=" ".join)
def test_bad_arguments_exit_2_with_a_one_line_error(arguments):
    result = fastconv_cli(*arguments)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stdout == "" and result.stderr.count("\n") == 1, result.stderr
    command = arguments[0] if arguments and arguments[0] in ("bench", "explain", "report", "backends", "tune") else ""
    assert result.stderr.startswith(f"fastconv {command}: error: ".replace(" :", ":")), result.stderr
    assert result.stderr.rstrip().endswith("--help)")


def test_bench_and_explain_time_a_backward_pass():
    result = fastconv_cli("bench", "--quick", "--suite", "cnn", "--pass", "input", "--no-peers", "--backends",
                          "naive", "col2im", "--repeat", "1")
    assert result.returncode == 0, result.stderr
    assert "conv2d_input input 1x8x16x16" in result.stdout and "| col2im " in result.stdout
    result = fastconv_cli("explain", "--input", "1x8x16x16", "--weight", "8x8x3x3", "--padding", "same",
                          "--pass", "weight", "--measure", "--no-peers", "--backends", "naive", "im2col")
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("conv2d_weight") >= 2 and "auto picks" in result.stdout
