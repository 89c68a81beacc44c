"""backend="auto": hard rules, cost-model choice, autotuning, the persistent cache and explain.

Decision logic is tested with fake backend modules (as scipy.fft's backend tests do): each fake
says what it costs (``estimate_seconds``) and returns a constant that identifies it.
"""

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
import types

import numpy as np
import pytest

import fastconv
from fastconv import backends, config
from fastconv.auto import calibrate, choice, constants, cost, timing, tuning_cache
from fastconv.geometry import make_spec


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    """Every test gets its own cache directory and forgets earlier decisions."""
    monkeypatch.setattr(config, "cache_dir", str(tmp_path / "cache"))
    monkeypatch.setattr(config, "autotune", False)
    monkeypatch.setattr(timing, "SETTLE_SECONDS", 0.0)  # fake backends have no thread pools to settle
    monkeypatch.setattr(constants, "_loaded", None)
    choice.clear_cache()
    tuning_cache._warned.clear()
    yield tmp_path / "cache"
    choice.clear_cache()


@pytest.fixture
def register(monkeypatch):
    """register(name, value, estimate=..., declines=..., unavailable=..., delay=..., placement=...) adds a fake."""
    names = []

    def add(name, value, *, estimate=None, declines=None, unavailable=None, delay=0.0, placement="host"):
        module = types.ModuleType(f"fastconv_fake_{name}")
        module.name = name
        module.placement = placement
        module.available = lambda: unavailable
        module.supports = declines or (lambda spec: None)
        module.calls = 0

        def run(x, w, b, spec):
            module.calls += 1
            if delay:
                time.sleep(delay)
            return np.full(spec.out_shape, value, dtype=spec.dtype)

        module.run = run
        if estimate is not None:  # its cost: one unscaled term of the estimated seconds
            seconds = estimate if callable(estimate) else (lambda spec: estimate)
            module.cost_terms = lambda spec, rank: {"call": seconds(spec)}
            module.COST_CONSTANTS = {"call": 1.0}
        monkeypatch.setitem(sys.modules, module.__name__, module)
        monkeypatch.setitem(backends._MODULES, name, (module.__name__, ("conv2d",)))
        backends._unavailable.pop(name, None)  # a real backend of that name may have been loaded
        backends._loaded.pop(name, None)
        names.append(name)
        choice.clear_cache()
        return module

    yield add
    for name in names:
        backends._unavailable.pop(name, None)
        backends._loaded.pop(name, None)


def _only_fakes(monkeypatch, *names):
    """Leave only the given fakes registered (naive out of the way), in this order."""
    monkeypatch.setattr(backends, "_MODULES", {name: backends._MODULES[name] for name in names})
    choice.clear_cache()


X = np.ones((1, 1, 6, 6))
W = np.ones((1, 1, 3, 3))


def _value(**kwargs):
    return fastconv.conv2d(X, W, **kwargs)[0, 0, 0, 0]


# --------------------------------------------------------------------------------------------
# choice by the cost model


def test_lowest_estimate_wins(register, monkeypatch):
    register("slow", 1.0, estimate=1e-3)
    register("fast", 2.0, estimate=1e-6)
    _only_fakes(monkeypatch, "slow", "fast")
    assert _value() == 2.0


def test_cost_ordering_follows_the_spec(register, monkeypatch):
    # "small" is cheap for small kernels, "large" for large ones, as direct vs FFT
    register("small", 1.0, estimate=lambda spec: spec.kernel_height ** 2 * 1e-6)
    register("large", 2.0, estimate=lambda spec: 20e-6)
    _only_fakes(monkeypatch, "small", "large")
    x = np.ones((1, 1, 16, 16))
    assert fastconv.conv2d(x, np.ones((1, 1, 3, 3)))[0, 0, 0, 0] == 1.0
    assert fastconv.conv2d(x, np.ones((1, 1, 7, 7)))[0, 0, 0, 0] == 2.0


def test_declining_and_unavailable_backends_are_never_chosen(register, monkeypatch):
    register("picky", 1.0, estimate=0.0, declines=lambda spec: "no float32" if spec.dtype == np.float32 else None)
    register("broken", 2.0, estimate=0.0, unavailable="no hardware")
    register("steady", 3.0, estimate=1.0)
    _only_fakes(monkeypatch, "picky", "broken", "steady")
    assert _value() == 1.0
    assert fastconv.conv2d(X.astype(np.float32), W.astype(np.float32))[0, 0, 0, 0] == 3.0


def test_ties_are_broken_by_registration_order(register, monkeypatch):
    register("first", 1.0, estimate=1e-5)
    register("second", 2.0, estimate=1e-5)
    _only_fakes(monkeypatch, "first", "second")
    assert _value() == 1.0
    _only_fakes(monkeypatch, "second", "first")
    assert _value() == 2.0


def test_unmodelled_backend_is_ranked_by_generic_work_with_a_warning(register, monkeypatch):
    register("mystery", 1.0)  # no cost_terms: its direct-convolution work at a generic rate
    register("slow", 2.0, estimate=5.0)
    _only_fakes(monkeypatch, "mystery", "slow")
    with pytest.warns(RuntimeWarning, match="'mystery' defines no cost_terms"):
        assert _value() == 1.0
    register("instant", 3.0, estimate=1e-12)
    _only_fakes(monkeypatch, "mystery", "instant")
    assert _value() == 3.0


def test_no_candidate_raises(register, monkeypatch):
    register("picky", 1.0, declines=lambda spec: "never")
    _only_fakes(monkeypatch, "picky")
    with pytest.raises(ValueError, match="no backend can run this convolution"):
        _value()


def test_decision_is_cached_per_signature(register, monkeypatch):
    calls = []
    register("counted", 1.0, estimate=lambda spec: calls.append(spec) or 1e-6)
    _only_fakes(monkeypatch, "counted")
    for _ in range(5):
        _value()
    assert len(calls) == 1
    fastconv.conv2d(np.ones((1, 1, 7, 7)), W)  # a new signature is estimated afresh
    assert len(calls) == 2


def test_use_backend_wins_and_cuda_only_for_device_arrays(register, monkeypatch):
    register("cuda", 9.0, estimate=0.0, placement="device")
    register("host", 1.0, estimate=1.0)
    _only_fakes(monkeypatch, "cuda", "host")
    assert _value() == 1.0  # host arrays never go to cuda on their own
    with fastconv.use_backend("cuda"):
        assert _value() == 9.0
    spec = make_spec(X.shape, W.shape)
    assert choice.choose(spec, on_device=True) == "cuda"
    _only_fakes(monkeypatch, "host")
    with pytest.raises(ValueError, match="arrays in GPU memory need a GPU backend"):
        choice.choose(spec, on_device=True)


def test_separable_is_chosen_only_for_low_rank_kernels(register, monkeypatch):
    # equal rates per multiply-add: separable wins when r (kh + kw) < kh kw, whatever was calibrated
    from fastconv.backends import numba_cpu, separable

    fake = register("separable", 7.0)
    fake.cost_terms, fake.COST_CONSTANTS = separable.cost_terms, {"mac": 1e-9}
    fake.supports_weight = lambda weight, spec: None  # a weight-dependent backend: costed with the rank
    register("direct", 1.0, estimate=lambda spec: cost.estimate_seconds(
        "numba_cpu", spec, module=numba_cpu, constants={"numba_cpu": {"plane_flop": 0.5e-9, "block_flop": 0.5e-9}}))
    _only_fakes(monkeypatch, "separable", "direct")
    x = np.ones((1, 1, 64, 64))
    gauss = np.exp(-np.linspace(-2, 2, 15) ** 2)
    rank_one = np.outer(gauss, gauss)[None, None]
    full_rank = np.random.default_rng(0).standard_normal((1, 1, 15, 15))
    assert fastconv.conv2d(x, rank_one, padding="same")[0, 0, 0, 0] == 7.0
    assert fastconv.conv2d(x, full_rank, padding="same")[0, 0, 0, 0] == 1.0
    full_rank[0, 0] = rank_one[0, 0]  # in place: the rank must be recomputed, not remembered
    assert fastconv.conv2d(x, full_rank, padding="same")[0, 0, 0, 0] == 7.0


def test_supports_weight_hook_is_honoured_and_remembered(register, monkeypatch):
    verdicts = []

    def positive_only(weight, spec):
        verdicts.append(1)
        return None if (weight > 0).all() else "needs positive weights"

    picky = register("picky", 1.0, estimate=1e-6)
    picky.supports_weight = positive_only
    register("plain", 2.0, estimate=1e-3)
    _only_fakes(monkeypatch, "picky", "plain")
    assert _value() == 1.0
    assert fastconv.conv2d(X, -W)[0, 0, 0, 0] == 2.0
    assert _value() == 1.0 and len(verdicts) == 2  # same weight content: verdict remembered
    negative = W.copy()
    assert fastconv.conv2d(X, negative)[0, 0, 0, 0] == 1.0
    negative[0, 0, 0, 0] = -1  # mutated in place: asked again
    assert fastconv.conv2d(X, negative)[0, 0, 0, 0] == 2.0
    report = fastconv.explain(X, negative)
    assert "no: needs positive weights" in repr(report) and report.choice == "plain"


# --------------------------------------------------------------------------------------------
# autotuning and its cache


def test_tune_measures_once_and_remembers_across_processes(register, monkeypatch, isolated_cache):
    slow = register("slow", 1.0, estimate=1e-6, delay=0.004)  # the model prefers slow...
    fast = register("fast", 2.0, estimate=2e-6)
    _only_fakes(monkeypatch, "slow", "fast")
    assert _value() == 1.0
    assert _value(tune=True) == 2.0  # ...measurement knows better
    assert slow.calls >= 2  # one untimed warm-up call, then timed ones
    entries = tuning_cache.read_cache()
    assert [entry["backend"] for entry in entries.values()] == ["fast"]
    choice.clear_cache()  # a new process: memory empty, the file remains
    slow.calls = 0
    assert _value(tune=True) == 2.0
    assert slow.calls == 0


def test_tuning_signature_includes_layout_and_threads(register, monkeypatch):
    register("fast", 2.0, estimate=1e-6)
    _only_fakes(monkeypatch, "fast")
    _value(tune=True)
    threads = fastconv.config.threads
    monkeypatch.setattr(config, "threads", 1)
    _value(tune=True)
    fastconv.conv2d(np.asfortranarray(np.ones((1, 1, 6, 6))), W, tune=True)
    tails = {tuple(key.split()[-2:]) for key in tuning_cache.read_cache()}
    assert tails == {("C", "t1"), ("F", "t1"), ("C", f"t{threads}")} if threads != 1 else len(tails) == 2


def test_autotune_switch_and_environment(register, monkeypatch):
    register("slow", 1.0, estimate=1e-6, delay=0.004)
    register("fast", 2.0, estimate=2e-6)
    _only_fakes(monkeypatch, "slow", "fast")
    fastconv.autotune(True)
    assert config.autotune and _value() == 2.0
    assert _value(tune=False) == 1.0
    fastconv.autotune(False)
    assert _value() == 1.0
    assert config._environment_flag("FASTCONV_NO_SUCH_VARIABLE", False) is False
    monkeypatch.setenv("FASTCONV_AUTOTUNE", "on")
    assert config._environment_flag("FASTCONV_AUTOTUNE", False) is True
    monkeypatch.setenv("FASTCONV_AUTOTUNE", "maybe")
    with pytest.warns(RuntimeWarning, match="FASTCONV_AUTOTUNE='maybe': accepted values are 1/0"):
        assert config._environment_flag("FASTCONV_AUTOTUNE", False) is False


def test_tune_argument_is_validated():
    with pytest.raises(ValueError, match="tune=True with backend='naive'"):
        _value(tune=True, backend="naive")
    with pytest.raises(ValueError, match="tune='yes'"):
        _value(tune="yes")
    with pytest.raises(TypeError, match="autotune must be True or False"):
        fastconv.autotune("yes")


def test_tuning_skips_backends_estimated_far_slower(register, monkeypatch):
    register("fast", 2.0, estimate=1e-5)
    hopeless = register("hopeless", 1.0, estimate=10.0)
    _only_fakes(monkeypatch, "fast", "hopeless")
    assert _value(tune=True) == 2.0
    assert hopeless.calls == 0
    (entry,) = tuning_cache.read_cache().values()
    assert entry["seconds"]["hopeless"].startswith("skipped: estimated")


def test_short_calls_are_timed_many_times_and_the_best_kept(register, monkeypatch):
    # "bursty" runs in 1 ms but its first three timed calls lose 7 ms each to a neighbour;
    # "steady" always takes 3 ms. Three calls each would pick steady; timing until 30 ms have
    # been spent in each finds bursty's true time.
    bursty = register("bursty", 1.0, estimate=1e-6)
    register("steady", 2.0, estimate=2e-6, delay=0.003)
    original_run = bursty.run

    def run(x, w, b, spec):
        time.sleep(0.008 if 1 <= bursty.calls <= 3 else 0.001)
        return original_run(x, w, b, spec)

    bursty.run = run
    _only_fakes(monkeypatch, "bursty", "steady")
    times = timing.time_backends(["bursty", "steady"], (X, W, None), make_spec(X.shape, W.shape),
                                 repeats=3, budget=10.0, min_seconds=0.03, warmup_seconds=0.0)
    assert times["bursty"] < 0.003 < times["steady"]
    assert bursty.calls > 6  # one warm-up, then until 30 ms were timed
    bursty.calls = 0
    timing.time_backends(["bursty"], (X, W, None), make_spec(X.shape, W.shape), repeats=3, min_seconds=0.0,
                         warmup_seconds=0.0)
    assert bursty.calls == 4  # min_seconds=0: exactly one warm-up call and `repeats` timed calls
    bursty.calls = 100  # past its burst: 1 ms a call
    timing.time_backends(["bursty"], (X, W, None), make_spec(X.shape, W.shape), repeats=3, min_seconds=0.0,
                         warmup_seconds=0.02)
    assert bursty.calls - 100 >= 10 + 3  # untimed calls for 20 ms (at most 2 ms each), then the timed ones


def test_a_timing_disturbed_by_other_processes_is_redone(monkeypatch):
    # (machine busy CPU seconds, this process's CPU seconds) around each backend's timing: other
    # processes used 4.9 s while "a" was first timed, nothing afterwards
    readings = iter([(0.0, 0.0), (5.0, 0.1), (5.0, 0.1), (5.01, 0.11), (5.01, 0.11), (5.02, 0.12)])
    monkeypatch.setattr(timing, "_cpu_snapshot", lambda: next(readings))
    script = {"a": iter([3.0, 1.0]), "b": iter([2.0])}
    timings = []

    def fake_time_backends(names, *args, **kwargs):
        timings.extend(names)
        return {name: next(script[name]) for name in names}

    monkeypatch.setattr(timing, "time_backends", fake_time_backends)
    assert timing.time_backends_quietly(["a", "b"], None, None, pause=0.0) == {"a": 1.0, "b": 2.0}
    assert timings == ["a", "a", "b"]  # only the disturbed backend is timed again
    assert not timing._others_were_busy((0.0, 0.0), (0.01, 0.0), 1.0)  # one clock tick: rounding, not a neighbour
    assert not timing._others_were_busy(None, (5.0, 0.0), 1.0)  # cannot tell (not Linux): assume quiet


def _scripted_timings(monkeypatch, script):
    """Make measure's timings return script[name][k] for the k-th timing of backend `name`."""
    order = []

    def fake(names, operands, spec, **kwargs):
        (name,) = names
        order.append(name)
        return {name: script[name][min(order.count(name), len(script[name])) - 1]}

    monkeypatch.setattr(timing, "time_backends_quietly", fake)
    return order


@pytest.mark.parametrize("second_pass, rounds", [
    ({"a": 1.00, "b": 1.02}, 3),  # still within 10% after re-timing: timed again, up to 3 rounds
    ({"a": 0.80, "b": 1.20}, 1),  # separated by the first re-timing (a now 0.8, b still 1.05): done
])
def test_close_contenders_are_timed_again(register, monkeypatch, second_pass, rounds):
    register("a", 1.0, estimate=1.0)
    register("b", 2.0, estimate=2.0)
    register("c", 3.0, estimate=3.0)
    _only_fakes(monkeypatch, "a", "b", "c")
    script = {"a": [1.0, second_pass["a"]], "b": [1.05, second_pass["b"]], "c": [5.0]}
    order = _scripted_timings(monkeypatch, script)
    results = choice.measure(make_spec(X.shape, W.shape), (X, W, None), budget=100.0)
    assert order == ["a", "b", "c"] + ["b", "a"] * rounds  # c (5x slower) is never timed again
    assert choice.fastest(results) == "a" and results["c"] == 5.0


def test_a_backend_expected_to_win_that_measured_slow_is_timed_again(register, monkeypatch):
    register("model_pick", 1.0, estimate=0.1)  # caught in a slow state in its first timing
    register("other", 2.0, estimate=1.5)
    _only_fakes(monkeypatch, "model_pick", "other")
    order = _scripted_timings(monkeypatch, {"model_pick": [5.0, 0.2], "other": [1.0]})
    results = choice.measure(make_spec(X.shape, W.shape), (X, W, None), budget=100.0)
    assert order == ["model_pick", "other", "model_pick", "other"]
    assert results == {"model_pick": 0.2, "other": 1.0}


def test_tuning_stays_within_its_budget(register, monkeypatch):
    for index, name in enumerate("abcdef"):
        register(name, float(index), estimate=1e-6 * (index + 1), delay=0.02)
    _only_fakes(monkeypatch, *"abcdef")
    started = time.perf_counter()
    results = choice.measure(make_spec(X.shape, W.shape), (X, W, None), budget=0.05)
    assert time.perf_counter() - started < 1.0
    skipped = [name for name, value in results.items() if isinstance(value, str)]
    assert skipped and all(results[name].startswith("skipped: tuning budget") for name in skipped)
    assert isinstance(results["a"], float)


def test_tuned_winner_that_now_declines_is_measured_again(register, monkeypatch):
    fast = register("fast", 2.0, estimate=1e-6)
    register("other", 1.0, estimate=2e-6, delay=0.002)
    _only_fakes(monkeypatch, "fast", "other")
    assert _value(tune=True) == 2.0
    fast.supports = lambda spec: "not any more"
    choice.clear_cache()
    assert _value(tune=True) == 1.0


@pytest.mark.parametrize("content, problem", [
    ("{not json", "unreadable"),
    ('{"format": "something else", "entries": {}}', "not a fastconv autotuning file"),
    ("[1, 2, 3]", "not a fastconv autotuning file"),
    ("", "unreadable"),
])
def test_corrupt_cache_warns_and_is_rewritten(register, monkeypatch, isolated_cache, content, problem):
    register("fast", 2.0, estimate=1e-6)
    _only_fakes(monkeypatch, "fast")
    isolated_cache.mkdir(parents=True)
    (isolated_cache / tuning_cache.CACHE_FILE).write_text(content)
    with pytest.warns(RuntimeWarning, match=problem):
        assert _value(tune=True) == 2.0
    document = json.loads((isolated_cache / tuning_cache.CACHE_FILE).read_text())
    assert document["format"] == "fastconv-autotune"
    assert [entry["backend"] for entry in document["entries"].values()] == ["fast"]


def test_foreign_cache_is_ignored(register, monkeypatch, isolated_cache):
    register("fast", 2.0, estimate=1e-6)
    _only_fakes(monkeypatch, "fast")
    machine = dict(constants.machine_key(), cpu="some other CPU")
    spec_key = tuning_cache.signature(make_spec(X.shape, W.shape))
    isolated_cache.mkdir(parents=True)
    (isolated_cache / tuning_cache.CACHE_FILE).write_text(json.dumps(
        {"format": "fastconv-autotune", "version": 1, "machine": machine,
         "entries": {spec_key: {"backend": "elsewhere"}}}))
    with pytest.warns(RuntimeWarning, match="another machine"):
        assert _value(tune=True) == 2.0
    assert tuning_cache.read_cache()[spec_key]["backend"] == "fast"


def test_unwritable_cache_warns_but_the_call_succeeds(register, monkeypatch, tmp_path):
    register("fast", 2.0, estimate=1e-6)
    _only_fakes(monkeypatch, "fast")
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    monkeypatch.setattr(config, "cache_dir", str(blocker / "cache"))  # a directory under a file
    with pytest.warns(RuntimeWarning, match="could not write the autotuning cache"):
        assert _value(tune=True) == 2.0


def test_concurrent_writers_threads(isolated_cache):
    def writer(thread):
        for i in range(20):
            tuning_cache.store_entries({f"thread{thread}-{i}": {"backend": "naive"}})

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(tuning_cache.read_cache()) == 120
    assert not [name for name in os.listdir(isolated_cache) if name.startswith(".tmp-")]


def test_concurrent_writers_processes(isolated_cache):
    script = textwrap.dedent("""
        import sys
        from fastconv.auto import calibrate, choice, constants, cost, timing, tuning_cache
        for i in range(25):
            tuning_cache.store_entries({f"process{sys.argv[1]}-{i}": {"backend": "naive"}})
    """)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    environment = dict(os.environ, FASTCONV_CACHE_DIR=str(isolated_cache),
                       PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    processes = [subprocess.Popen([sys.executable, "-c", script, str(p)], env=environment) for p in range(4)]
    assert [process.wait(timeout=60) for process in processes] == [0] * 4
    entries = tuning_cache.read_cache()
    assert len(entries) == 100 and all(entry["backend"] == "naive" for entry in entries.values())


# --------------------------------------------------------------------------------------------
# explain


def test_explain_table(register, monkeypatch):
    register("picky", 1.0, estimate=1e-6, declines=lambda spec: "only 5x5 kernels")
    register("good", 2.0, estimate=2e-3)
    register("better", 3.0, estimate=1e-3)
    _only_fakes(monkeypatch, "picky", "good", "better")
    report = fastconv.explain((1, 1, 32, 32), (4, 1, 3, 3), padding=1, dtype=np.float32)
    assert report.choice == "better"
    assert [(row.name, row.supported) for row in report.rows] == [("picky", False), ("good", True), ("better", True)]
    text = repr(report)
    assert "no: only 5x5 kernels" in text and "2 ms" in text and "1 ms" in text
    assert "auto picks 'better': lowest estimated time (1 ms; next best good 2 ms)" in text
    assert "float32" in text and "(4, 1, 3, 3)" in text


def test_explain_with_tuning_shows_measurements(register, monkeypatch):
    register("slow", 1.0, estimate=1e-6, delay=0.003)
    register("fast", 2.0, estimate=2e-6)
    _only_fakes(monkeypatch, "slow", "fast")
    report = fastconv.explain(np.ones((1, 2, 8, 8)), np.ones((2, 2, 3, 3)), tune=True)
    assert report.choice == "fast" and report.why.startswith("fastest measured")
    measured = {row.name: row.measured_seconds for row in report.rows}
    assert measured["slow"] >= 0.003 > measured["fast"]
    assert "auto picks 'fast'" in repr(report)
    # later, untuned explain shows the stored measurements but says they are not used
    untuned = fastconv.explain((1, 2, 8, 8), (2, 2, 3, 3))
    assert untuned.choice == "slow" and "not used unless autotuning is on" in untuned.why


def test_explain_real_naive_backend_and_padding_modes():
    report = fastconv.explain(np.ones((3, 10, 10), np.float32), np.ones((2, 3, 3, 3), np.float32),
                              padding=2, padding_mode="reflect")
    assert report.spec.padding == ((0, 0), (0, 0)) and report.spec.in_height == 14
    assert report.rank == 1 and report.choice in [row.name for row in report.rows if row.supported]
    with pytest.raises(ValueError, match="groups=2 must divide"):
        fastconv.explain((1, 3, 8, 8), (2, 1, 3, 3), groups=2)


# --------------------------------------------------------------------------------------------
# calibration


def test_calibrate_round_trip_and_cli(isolated_cache, capsys):
    grid = [((1, 1, 8, 8), (1, 1, 3, 3), {}, "float64", False),
            ((1, 2, 12, 12), (3, 2, 3, 3), {"padding": 1}, "float64", False),
            ((1, 4, 16, 16), (4, 4, 5, 5), {}, "float64", False)]
    fitted, samples = calibrate.calibrate(["naive"], grid=grid, budget_per_problem=0.05,
                                       progress=lambda line: None)
    assert len(samples["naive"]) == 3 and all(seconds > 0 for _, _, seconds in samples["naive"])
    assert {"call", "mac"} <= set(fitted["naive"]) and all(v >= 0 for v in fitted["naive"].values())
    path = constants.save_constants({"naive": fitted["naive"]}, threads=2)
    assert constants.constants_source() == path and constants.constants_for("naive") == fitted["naive"]
    im2col = backends.get("im2col")
    assert constants.constants_for("im2col", im2col) == im2col.COST_CONSTANTS  # not calibrated: shipped
    from fastconv.tools.cli import main

    assert main(["tune", "--show"]) == 0
    assert path in capsys.readouterr().out


def test_corrupt_constants_fall_back_to_defaults(isolated_cache):
    isolated_cache.mkdir(parents=True)
    (isolated_cache / constants.CONSTANTS_FILE).write_text('{"format": "fastconv-cost-constants", "version": 1}')
    with pytest.warns(RuntimeWarning, match="using the shipped defaults"):
        source = constants.constants_source()
    assert source == "shipped defaults" and constants.fitted_constants() == {}
