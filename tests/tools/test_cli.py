"""The ``fastconv`` command line, run as users run it: in a subprocess, on the tiny ``--quick`` suites."""

import json
import os
import subprocess
import sys

import pytest

REPOSITORY = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def fastconv_cli(*arguments, timeout=240):
    environment = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [REPOSITORY, os.environ.get("PYTHONPATH")])))
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


def test_explain_lists_backends_and_auto_choice():
    result = fastconv_cli("explain", "--input", "1x8x16x16", "--weight", "8x8x3x3", "--padding", "same",
                          "--stride", "2")
    assert result.returncode == 0, result.stderr
    assert "output 1x8x8x8" in result.stdout
    assert "naive" in result.stdout and "auto" in result.stdout


def test_explain_measure_times_the_backends():
    result = fastconv_cli("explain", "--input", "4x10x10", "--weight", "4x1x3x3", "--groups", "4",
                          "--padding", "1,1,0,2", "--padding-mode", "reflect", "--measure", "--backends", "naive", "--no-peers",
                          "--repeat", "1")
    assert result.returncode == 0, result.stderr
    assert "winner: naive" in result.stdout


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
    ["bench", "--suite", "nope"],
    ["bench", "--repeat", "0"],
    ["bench", "--backends", "no_such_backend"],
    ["bench", "--quick", "--no-peers", "--json", "/nonexistent-dir/x.json"],
    ["explain", "--weight", "8x8x3x3"],
    ["explain", "--input", "1xAx16x16", "--weight", "8x8x3x3"],
    ["explain", "--input", "1x8x16x16", "--weight", "8x8x3"],
    ["explain", "--input", "1x8x4x4", "--weight", "8x8x9x9"],
    ["explain", "--input", "1x8x16x16", "--weight", "8x8x3x3", "--groups", "3"],
    ["explain", "--input", "1x8x16x16", "--weight", "8x8x3x3", "--padding", "1,2,3"],
    ["explain", "--input", "1x8x16x16", "--weight", "8x8x3x3", "--stride", "0"],
    ["report", "--json", "/nonexistent-dir/results.json"],
])
def test_bad_arguments_exit_2_with_a_one_line_error(arguments):
    result = fastconv_cli(*arguments)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and errors[0] == result.stderr.strip().splitlines()[-1]
