"""explain: the dtype and weight it judges the call on, its footnotes, and a measured column filled in.

The decision logic behind it (fake backends, tuning) is tested in test_tuning.py; here, the real
registry, on what a user passes.
"""

import numpy as np
import pytest

import fastconv
from fastconv import config
from fastconv.auto import choice, constants
from fastconv.geometry import backend_spec, make_spec
from fastconv.ops.conv2d import choose_backend


@pytest.fixture(autouse=True)
def shipped_constants_and_no_tuning(tmp_path, monkeypatch):
    """The shipped constants, an empty tuning cache and autotuning off: what a fresh install sees."""
    monkeypatch.setattr(config, "cache_dir", str(tmp_path / "cache"))
    monkeypatch.setattr(config, "autotune", False)
    monkeypatch.setattr(constants, "_loaded", None)
    choice.clear_cache()
    yield
    choice.clear_cache()


def _gaussian(size: int) -> np.ndarray:
    profile = np.exp(-0.5 * ((np.arange(size) - (size - 1) / 2) / (size / 6)) ** 2)
    return np.outer(profile, profile)[None, None]


RNG = np.random.default_rng(0)


@pytest.mark.parametrize("operands, dtype, expected", [
    (((1, 1, 32, 32), (1, 1, 3, 3)), None, np.float64),  # shapes alone: numpy's default
    (((1, 1, 32, 32), (1, 1, 3, 3)), "float32", np.float32),
    (((1, 1, 32, 32), (1, 1, 3, 3)), np.float16, np.float32),  # computes as conv2d would
    ((np.ones((1, 1, 32, 32), np.float32), np.ones((1, 1, 3, 3), np.float32)), None, np.float32),
    ((np.ones((1, 1, 32, 32), np.float32), np.ones((1, 1, 3, 3))), None, np.float64),
    ((np.ones((1, 1, 32, 32), np.int16), np.ones((1, 1, 3, 3), np.int16)), None, np.float64),
    ((np.ones((1, 1, 32, 32)), np.ones((1, 1, 3, 3))), "float32", np.float32),  # dtype wins over arrays
    (((1, 1, 32, 32), np.ones((1, 1, 3, 3), np.float32)), None, np.float32),
])
def test_explain_judges_the_call_in_the_dtype_asked_for(operands, dtype, expected):
    report = fastconv.explain(*operands, padding="same", dtype=dtype)
    assert report.spec.dtype == expected
    assert str(np.dtype(expected)) in repr(report).splitlines()[0]


def test_estimates_follow_the_dtype():
    single, double = (fastconv.explain((1, 1, 256, 256), (1, 1, 9, 9), padding="same", dtype=dtype)
                      for dtype in ("float32", "float64"))
    naive = [row.estimated_seconds for report in (single, double) for row in report.rows if row.name == "naive"]
    assert naive[0] < naive[1]  # float64 work costs more in the shipped constants


@pytest.mark.parametrize("dtype", ["float8", "U5", object])
def test_a_bad_dtype_is_a_type_error_naming_it(dtype):
    with pytest.raises(TypeError, match="dtype"):
        fastconv.explain((1, 1, 8, 8), (1, 1, 3, 3), dtype=dtype)


def _separable(report):
    return next(row for row in report.rows if row.name == "separable")


def test_weight_dependent_backends_are_judged_on_the_weight():
    shapes_only = fastconv.explain((1, 1, 128, 128), (1, 1, 9, 9), padding="same", dtype="float32")
    assert not _separable(shapes_only).supported and "numerical rank 9" in _separable(shapes_only).reason
    assert shapes_only.rank == 9  # random kernels are full rank
    gaussian = fastconv.explain((1, 1, 128, 128), _gaussian(9).astype(np.float32), padding="same")
    assert _separable(gaussian).supported and gaussian.rank == 1


CALLS = [
    ((1, 1, 512, 512), RNG.standard_normal((1, 1, 9, 9)), dict(padding="same")),
    ((1, 1, 512, 512), _gaussian(9), dict(padding="same")),
    ((1, 1, 256, 256), _gaussian(31), dict(padding="same")),
    ((1, 64, 56, 56), RNG.standard_normal((64, 64, 3, 3)), dict(padding=1)),
    ((1, 32, 56, 56), RNG.standard_normal((32, 1, 3, 3)), dict(padding=1, groups=32, stride=2)),
    ((2, 8, 40, 40), RNG.standard_normal((8, 8, 5, 5)), dict(padding=4, dilation=2, padding_mode="reflect")),
]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("x_shape, weight, keywords", CALLS)
def test_explain_picks_the_backend_conv2d_runs(x_shape, weight, keywords, dtype):
    weight = weight.astype(dtype)
    spec = backend_spec(make_spec(x_shape, weight.shape, dtype=np.dtype(dtype), **keywords))
    assert fastconv.explain(x_shape, weight, dtype=dtype, **keywords).choice == choose_backend(spec, weight)


def test_long_reasons_are_footnotes_and_short_ones_stay_in_the_table():
    report = fastconv.explain((1, 1, 64, 64), (1, 1, 9, 9), padding="same", dtype="float32")
    text = repr(report)
    winograd = next(row for row in report.rows if row.name == "winograd")
    assert "winograd    no [" in text and f"winograd: {winograd.reason}" in text
    footnotes = [line for line in text.splitlines() if line.startswith("[")]
    assert [line.split("]")[0] for line in footnotes] == [f"[{n}" for n in range(1, len(footnotes) + 1)]
    table = text.splitlines()[1:1 + len(report.rows)]
    assert max(map(len, table)) <= 100
    assert text.splitlines()[-2].startswith("auto picks")


def test_with_measurements_fills_the_measured_column_and_keeps_the_choice():
    report = fastconv.explain((1, 1, 64, 64), (1, 1, 5, 5), padding="same", dtype="float32")
    other = next(row.name for row in report.rows if row.supported and row.name not in (report.choice, "naive"))
    slow_note = "skipped: 0.6 GFLOP: too slow for the reference loops (limit 0.5 GFLOP)"
    timed = report.with_measurements({report.choice: 2e-3, other: 1e-3, "naive": slow_note},
                                     peers={"scipy": 5e-3, "torch": "failed: worker exited"})
    assert timed.choice == report.choice and timed.why == report.why
    assert {row.name: row.measured_seconds for row in timed.rows}[other] == 1e-3
    assert [(row.name, row.measured_seconds, row.note) for row in timed.peers] == \
        [("scipy", 5e-3, ""), ("torch", None, "failed: worker exited")]
    text = repr(timed)
    assert text.count("backend ") == 1  # one table
    assert f"measured: {other!r} is the fastest (1 ms); auto's pick {report.choice!r} took 2.00x as long" in text
    assert "skipped [" in text and f"naive: {slow_note}" in text
    assert "scipy       peer library" in text and "5 ms" in text
    assert repr(report).count("measured:") == 0  # the original is unchanged


def test_the_reason_never_names_the_reference_loops_as_a_better_candidate(monkeypatch):
    # naive's estimate may be the lowest on a tiny call, but auto runs it only where no compiled
    # backend can: the reason must say so rather than call it the next best
    from fastconv.backends import naive

    monkeypatch.setattr(naive, "COST_CONSTANTS", dict(naive.COST_CONSTANTS, call=1e-12, mac=1e-15))
    explanation = fastconv.explain(np.ones((1, 1, 8, 8), np.float32), np.ones((1, 1, 3, 3), np.float32))
    assert explanation.choice != "naive"
    assert "next best naive" not in explanation.why
    assert explanation.why.endswith("not naive: the reference loops, run only where nothing else can")
