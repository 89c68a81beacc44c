"""The comparison scripts in ``benchmarks/compare/``: every one answers ``--help``, uses only
fastconv's public names, and what it hands its worker processes runs (here, in-process, on its
quick problems); one script runs end to end, worker process included."""

import argparse
import ast
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fastconv
from fastconv.tools.cases import Skip

ROOT = Path(__file__).resolve().parents[2]
FOLDER = ROOT / "benchmarks" / "compare"
SCRIPTS = sorted(FOLDER.glob("*.py"))


def load(stem: str):
    """A script as a module (its ``if __name__ == "__main__"`` block does not run)."""
    name = f"compare_script_{stem}"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, FOLDER / f"{stem}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def run_or_skip(call):
    """Build and run one worker call; a peer that is not installed skips, as the scripts allow."""
    try:
        return call()()
    except Skip as reason:
        assert "not installed" in str(reason) or "peer" in str(reason), reason
        return None


def test_the_folder_holds_the_scripts_and_readme_lists_each():
    assert [path.stem for path in SCRIPTS] == ["check_auto", "compare_cpu", "compare_family", "compare_fft_separable",
                                               "compare_winograd", "dask_scale", "im2col_workspace"]
    assert not (FOLDER / "__init__.py").exists()  # not a package: asv's discovery stays out
    readme = (FOLDER / "README.md").read_text(encoding="utf-8")
    for path in SCRIPTS:
        assert f"`{path.name}`" in readme and f"python benchmarks/compare/{path.name}" in readme


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda path: path.stem)
def test_every_script_answers_help(path, capsys):
    with pytest.raises(SystemExit) as done:
        load(path.stem).main(["--help"])
    assert done.value.code == 0
    assert capsys.readouterr().out.startswith("usage:")


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda path: path.stem)
def test_scripts_use_only_public_names_of_fastconv(path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    fastconv_names, offenders = set(), []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("fastconv"):
            offenders += [f"{node.module}.{alias.name}" for alias in node.names if alias.name.startswith("_")]
            fastconv_names.update(alias.asname or alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            fastconv_names.update((alias.asname or alias.name).split(".")[0] for alias in node.names
                                  if alias.name.startswith("fastconv"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            base = node.value
            while isinstance(base, ast.Attribute):
                base = base.value
            if isinstance(base, ast.Name) and base.id in fastconv_names:
                offenders.append(ast.unparse(node))
    assert not offenders, offenders


def test_compare_cpu_builds_every_library_call():
    script = load("compare_cpu")
    full = script.load_cases()
    assert {case.group for case in full} == {"cnn", "depthwise", "image"}
    assert all(case.spec() for case in full)
    for case in script.load_cases(quick=True):
        for library in script.LIBRARIES:
            run_or_skip(lambda: script.build(case.name, library, True))


def test_compare_family_builds_every_library_call(tmp_path):
    script = load("compare_family")
    transposed, pooling = script.cases(None)
    assert "dcgan_g_4x4_s2" in [case.name for case in transposed] and len(pooling) == 4
    shapes_file = tmp_path / "shapes.json"
    shapes_file.write_text('{"conv_transpose2d": [{"name": "mine", "N": 1, "C": 4, "H": 5, "W": 5, "K": 2, "R": 3, '
                           '"S": 3, "stride": 2, "pad": 1, "output_padding": 1, "dilation": 1, "groups": 1}]}')
    assert [case.name for case in script.transposed_layers(str(shapes_file))] == ["mine"]
    transposed, pooling = script.cases(None, quick=True)
    for name in [case.name for case in transposed] + [entry[0] for entry in pooling]:
        outputs = [run_or_skip(lambda: script.build(name, library, None, True)) for library in ("fastconv", "torch")]
        if outputs[1] is not None:
            np.testing.assert_allclose(outputs[0], outputs[1].numpy(), rtol=1e-4, atol=1e-4)


def test_compare_fft_separable_builds_every_library_call():
    script = load("compare_fft_separable")
    assert script.problem("random101", quick=False).weight_shape == (1, 1, 101, 101)
    for case, (ours, peers, _) in script.CASES.items():
        for library in ours + peers:
            run_or_skip(lambda: script.build(case, library, True))


def test_compare_winograd_builds_its_calls_and_stage_profile():
    script = load("compare_winograd")
    assert [case.name for case in script.load_layers()][-1] == "resnet50_3x3_56_batch8"
    for case in script.load_layers(quick=True):
        for library in ("winograd", "torch"):
            run_or_skip(lambda: script.build(case.name, library, True))
    stages = script.stage_times(True, 1)
    assert {"tile", "input_transform", "gemm", "output_transform", "filter_transform"} <= set(stages[case.name])
    errors = script.errors(True)
    assert len(errors) == 4 and all(error < 1e-4 for error in errors.values())


def test_check_auto_grid_and_report():
    script = load("check_auto")
    grid = script.problems()
    assert len(grid) >= 40 and len({entry[0] for entry in grid}) == len(grid)
    result = {"name": "p", "dtype": "float32", "times": {"fft": 2.0, "im2col": 1.0}, "auto": "fft", "tuned": "im2col"}
    table = script.report([result])
    assert "| p (float32) | im2col | 1e+03 ms | fft | 2.00 | im2col | 1.00 |" in table
    picked, auto, explicit = script.fastconv_overhead()
    assert picked in fastconv.backends.backend_names() and auto > 0 and explicit > 0


def test_dask_scale_steps_run_on_a_small_image(tmp_path):
    pytest.importorskip("dask")
    script = load("dask_scale")
    settings = dict(workdir=str(tmp_path), size=256, tile=128, rows=64, backend="auto", io="blocks", repeat=1,
                    skip_overhead=False)
    paths = argparse.Namespace(**{**settings, "workdir": tmp_path})
    script.prepare(paths)
    assert script.run_step("in_memory", settings)["seconds"] > 0
    assert set(script.run_step("dask_tile", settings)) == {
        "in-memory", "2x2 squares, compute", "2x2 squares, store", "4 strips, compute", "4 strips, store"}
    big = script.run_step("out_of_core", settings)
    assert big["blocks"] == 4 and big["spot_check_error"] < 1e-5
    script.clean(paths)
    assert not list(tmp_path.iterdir())


def test_a_script_runs_end_to_end_with_its_worker_process():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    done = subprocess.run([sys.executable, str(FOLDER / "im2col_workspace.py"), "--quick", "--limits", "16"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    row = done.stdout.splitlines()[2].split()
    assert row[0] == "16" and float(row[-1]) >= 0  # limit, ..., seconds (printed to 0.01 s: a quick run may show 0.00)
