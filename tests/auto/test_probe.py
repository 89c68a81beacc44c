"""The cost probe: the shipped constants scaled to this machine's speeds, kept per machine, and
used only by auto.

Most tests stub the measurement (the ``cost_probe_stub`` fixture in conftest.py); one runs the
real probe.
"""

import json
import os
import subprocess
import sys
import textwrap
import time
import warnings

import numpy as np
import pytest

import fastconv
from fastconv import backends, config
from fastconv.auto import choice, constants, cost, pool_switches, probe
from fastconv.geometry import make_spec

REFERENCE = constants.REFERENCE_MACHINE["quantities"]
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _environment(cache_dir, **extra):
    environment = dict(os.environ, FASTCONV_CACHE_DIR=str(cache_dir), FASTCONV_COST_PROBE="1",
                       PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    environment.update(extra)
    return environment


# --------------------------------------------------------------------------------------------
# the scaling rule


def test_a_terms_name_says_which_resource_it_uses():
    names = {"call": "call", "gemm_call": "call", "byte": "memory", "unfold_byte": "memory",
             "gemm_byte": "memory", "filter_spectrum_byte": "memory", "gemm_flop": "gemm",
             "bin_gemm_flop": "gemm", "fft_flop": "fft", "mac": "compute", "mac_depthwise3x3": "compute",
             "row_pass": "compute", "tile": "compute"}
    assert {term: constants.term_resource(term) for term in names} == names
    assert constants.term_resource("float64_factor") is None
    assert constants.term_resource("mac", {"mac": "serial_compute"}) == "serial_compute"


@pytest.mark.parametrize("resource, terms", [
    ("gemm", {"gemm_flop": 4e-12, "bin_gemm_flop": 6e-11}),
    ("memory", {"byte": 2e-11, "unfold_byte": 1e-10}),
    ("compute", {"mac": 5e-11, "row_pass": 2e-8}),
    ("fft", {"fft_flop": 4e-11}),
    ("call", {"call": 1e-5, "gemm_call": 1e-6}),
])
def test_a_machine_three_times_as_fast_at_a_resource_halves_its_terms_constants(resource, terms):
    # (the probe's own spread, 1.5x, is taken off the measured ratio: 3x faster counts as 2x)
    others = {"float64_factor": 1.4, "mac" if resource != "compute" else "byte": 3e-11}
    table = {**terms, **others}
    faster = dict(REFERENCE, **{resource: 3 * REFERENCE[resource]})
    scaled = constants.scale_constants(table, faster, REFERENCE)
    assert scaled == pytest.approx({**{term: value / 2 for term, value in terms.items()}, **others})
    slower = dict(REFERENCE, **{resource: REFERENCE[resource] / 6})
    assert constants.scale_constants(table, slower, REFERENCE)[next(iter(terms))] \
        == pytest.approx(4 * next(iter(terms.values())))


@pytest.mark.parametrize("ratio", [1 / constants.PROBE_SPREAD, 0.8, 1.0, 1.3, constants.PROBE_SPREAD])
def test_a_difference_within_the_probes_own_spread_leaves_the_constants_alone(ratio):
    measured = {resource: ratio * value for resource, value in REFERENCE.items()}
    assert list(constants.resource_factors(measured, REFERENCE).values()) == pytest.approx([1.0] * len(constants.RESOURCES))


def test_a_declared_resource_wins_over_the_name_and_a_missing_quantity_leaves_the_constant():
    faster = dict(REFERENCE, serial_compute=3 * REFERENCE["serial_compute"])
    assert constants.scale_constants({"mac": 1e-9}, faster, REFERENCE, {"mac": "serial_compute"}) \
        == pytest.approx({"mac": 5e-10})
    without_fft = {resource: value for resource, value in REFERENCE.items() if resource != "fft"}
    assert constants.scale_constants({"fft_flop": 4e-11}, without_fft, REFERENCE) == {"fft_flop": 4e-11}


def _costed_backends():
    return [name for name in backends.backend_names() if backends.unavailable_reason(name) is None
            and hasattr(backends.get(name), "COST_CONSTANTS")]


@pytest.mark.parametrize("name", _costed_backends())
def test_every_shipped_term_uses_a_resource_the_probe_measures(name):
    module = backends.get(name)
    declared = getattr(module, "COST_RESOURCES", {})
    assert set(declared) <= set(module.COST_CONSTANTS), "COST_RESOURCES names terms the backend does not have"
    for term in module.COST_CONSTANTS:
        resource = constants.term_resource(term, declared)
        assert resource is None or resource in constants.RESOURCES, (term, resource)
        if term in cost.UNSCALED_TERMS:  # costs that do not shrink with threads: one thread's speed
            assert resource in ("call", "serial_compute"), (term, resource)


# --------------------------------------------------------------------------------------------
# what auto uses


def test_auto_uses_the_shipped_constants_scaled_by_the_probe(cost_probe_stub):
    cost_probe_stub.quantities["gemm"] *= 3  # (less the probe's spread, 1.5: twice as fast)
    cost_probe_stub.quantities["call"] /= 3
    im2col = backends.get("im2col")
    scaled = constants.constants_for("im2col", im2col)
    shipped = im2col.COST_CONSTANTS
    assert scaled["gemm_flop"] == pytest.approx(shipped["gemm_flop"] / 2)
    assert scaled["call"] == pytest.approx(shipped["call"] * 2)
    assert scaled["unfold_byte"] == pytest.approx(shipped["unfold_byte"])
    assert scaled["float64_factor"] == shipped["float64_factor"]
    assert constants.constants_source().startswith("probed on ")
    assert len(cost_probe_stub.calls) == 1
    spec = make_spec((1, 64, 28, 28), (128, 64, 1, 1), dtype="float32")
    assert cost.estimate_seconds("im2col", spec) == pytest.approx(
        cost.estimate_seconds("im2col", spec, constants={"im2col": scaled}))


def test_the_probes_threads_are_the_constants_threads(cost_probe_stub, monkeypatch):
    monkeypatch.setattr(config, "threads", 1)
    assert constants.constants_threads("numba_cpu") == 1 and cost_probe_stub.calls == [1]
    spec = make_spec((1, 8, 32, 32), (8, 8, 3, 3), padding=1, dtype="float32")
    # measured on one thread: asked for one thread, the estimate is the constants' own
    assert cost.estimate_seconds("numba_cpu", spec) == pytest.approx(cost.estimate_seconds(
        "numba_cpu", spec, constants={"numba_cpu": constants.constants_for("numba_cpu")}, threads=1,
        measured_threads=1))


def test_fitted_constants_win_over_probed_ones_which_win_over_shipped_ones(cost_probe_stub):
    cost_probe_stub.quantities["gemm"] *= 3
    fitted = {"call": 3e-6, "mac": 2e-9, "float64_factor": 1.0}
    path = constants.save_constants({"naive": fitted}, threads=2)
    naive, im2col = backends.get("naive"), backends.get("im2col")
    assert constants.constants_for("naive", naive) == fitted
    assert constants.constants_for("im2col", im2col)["gemm_flop"] == pytest.approx(im2col.COST_CONSTANTS["gemm_flop"] / 2)
    assert constants.constants_source().startswith(f"fitted on this machine ({path}) for naive; the others probed on ")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(config, "cost_probe", False)
        assert constants.constants_for("naive", naive) == fitted
        assert constants.constants_for("im2col", im2col) is im2col.COST_CONSTANTS
        assert constants.constants_source().startswith(f"fitted on this machine ({path}) for naive; the others "
                                                       f"shipped defaults (the cost probe is off")


def test_constants_fitted_for_every_backend_need_no_probe(cost_probe_stub):
    constants.save_constants({name: dict(table) for name, table in constants.shipped_constants().items()}, 2)
    assert constants.constants_source() == f"fitted on this machine ({constants.constants_path()})"
    assert cost_probe_stub.calls == [] and constants.probe_result() is None


def test_opted_out_auto_uses_the_shipped_constants_and_never_probes(cost_probe_stub, monkeypatch):
    monkeypatch.setattr(config, "cost_probe", False)
    assert fastconv.explain((1, 8, 16, 16), (8, 8, 3, 3), padding=1).constants_source.startswith(
        "shipped defaults (the cost probe is off")
    fastconv.conv2d(np.ones((1, 1, 8, 8), np.float32), np.ones((1, 1, 3, 3), np.float32))
    assert constants.constants_for("im2col", backends.get("im2col")) is backends.get("im2col").COST_CONSTANTS
    assert cost_probe_stub.calls == [] and not os.path.exists(constants.probe_path())


def test_explain_says_where_the_constants_came_from(cost_probe_stub, monkeypatch):
    shape = ((1, 8, 16, 16), (8, 8, 3, 3))
    probed = repr(fastconv.explain(*shape, padding=1))
    date = constants.probe_result()["date"]
    assert f"cost constants: probed on {date}: the shipped constants scaled" in probed
    monkeypatch.setattr(config, "cost_probe", False)
    assert "cost constants: shipped defaults (the cost probe is off" in repr(fastconv.explain(*shape, padding=1))
    path = constants.save_constants({name: dict(table) for name, table in constants.shipped_constants().items()}, 2)
    assert f"cost constants: fitted on this machine ({path})" in repr(fastconv.explain(*shape, padding=1))


def test_a_new_probe_changes_the_decisions(cost_probe_stub):
    rng = np.random.default_rng(0)
    x, w = (rng.standard_normal(shape).astype(np.float32) for shape in ((1, 32, 28, 28), (32, 32, 3, 3)))
    spec = make_spec(x.shape, w.shape, padding=1, dtype="float32")

    def machine(fast, factor=1000.0):
        """A machine ``factor`` times faster than the reference at ``fast``, as much slower at the rest."""
        return {resource: value * (factor if resource in fast else 1 / factor) for resource, value in REFERENCE.items()}

    cost_probe_stub.quantities = machine({"gemm", "memory", "call"})
    assert choice.choose(spec, w) == "im2col"
    cost_probe_stub.quantities = machine({"compute", "memory", "call"})
    constants.rerun_probe()
    assert choice.choose(spec, w) in ("numba_cpu", "winograd")  # direct or transformed, no BLAS
    assert len(cost_probe_stub.calls) == 2
    np.testing.assert_allclose(fastconv.conv2d(x, w, padding=1), fastconv.conv2d(x, w, padding=1, backend="naive"),
                               rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------------------------
# the probe file


def test_the_result_is_kept_per_machine_and_thread_count(cost_probe_stub, monkeypatch):
    monkeypatch.setattr(config, "threads", 2)
    threads = constants.probe_threads()
    constants.constants_source()
    assert cost_probe_stub.calls == [threads]
    document = json.loads(open(constants.probe_path()).read())
    assert document["machine"] == constants.machine_key()
    entry = document["entries"][str(threads)]
    assert entry["quantities"] == pytest.approx(cost_probe_stub.quantities) and entry["seconds"] >= 0
    monkeypatch.setattr(constants, "_loaded", None)  # as a later process: it reads the file
    assert constants.probe_result()["date"] == entry["date"] and len(cost_probe_stub.calls) == 1
    if threads == 1:
        return  # a one-core machine: no other thread count to probe
    monkeypatch.setattr(config, "threads", 1)  # another thread count is measured and kept beside it
    assert constants.probe_result()["threads"] == 1 and cost_probe_stub.calls == [2, 1]
    assert sorted(json.loads(open(constants.probe_path()).read())["entries"]) == ["1", "2"]


def test_a_file_from_another_machine_is_measured_again_quietly(cost_probe_stub, monkeypatch):
    constants.constants_source()
    other = dict(constants.machine_key(), cpu="another CPU")
    monkeypatch.setattr(constants, "machine_key", lambda: other)
    monkeypatch.setattr(constants, "_loaded", None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        constants.constants_source()
    assert len(cost_probe_stub.calls) == 2
    assert json.loads(open(constants.probe_path()).read())["machine"]["cpu"] == "another CPU"


@pytest.mark.parametrize("content", [
    "{not json", "", "[1, 2]", '{"format": "fastconv-cost-probe", "version": 1}',
    '{"format": "fastconv-cost-probe", "version": 1, "machine": "x", "entries": {}}',
])
def test_a_damaged_file_is_a_warning_and_a_new_probe(cost_probe_stub, content):
    os.makedirs(config.cache_dir)
    with open(constants.probe_path(), "w") as file:
        file.write(content)
    with pytest.warns(RuntimeWarning, match="ignoring the cost probe's file"):
        assert constants.constants_source().startswith("probed on ")
    assert len(cost_probe_stub.calls) == 1
    document = json.loads(open(constants.probe_path()).read())
    assert list(document["entries"]) == [str(constants.probe_threads())]


@pytest.mark.parametrize("entry", [{"date": 3, "seconds": 1, "quantities": {"gemm": 1}},
                                   {"date": "d", "seconds": 1, "quantities": {"gemm": -1.0}},
                                   {"date": "d", "seconds": 1, "quantities": {"warp drive": 1.0}},
                                   {"date": "d", "seconds": 1, "quantities": {}},
                                   {"date": "d", "seconds": 1, "quantities": {"gemm": 1.0}, "switches": {"blas>openmp": -1}},
                                   {"date": "d", "seconds": 1, "quantities": {"gemm": 1.0}, "switches": {"blas": 1e-5}},
                                   "text"])
def test_a_malformed_entry_is_a_warning_and_a_new_probe(cost_probe_stub, entry):
    os.makedirs(config.cache_dir)
    with open(constants.probe_path(), "w") as file:
        json.dump({"format": "fastconv-cost-probe", "version": 1, "machine": constants.machine_key(),
                   "entries": {str(constants.probe_threads()): entry}}, file)
    with pytest.warns(RuntimeWarning, match="is not one the probe writes"):
        constants.constants_source()
    assert len(cost_probe_stub.calls) == 1


def test_a_failing_probe_is_a_warning_and_the_shipped_constants(cost_probe_stub, monkeypatch):
    def broken(threads=None):
        raise RuntimeError("no timer on this machine")

    monkeypatch.setattr(probe, "measure", broken)
    with pytest.warns(RuntimeWarning, match="the cost probe failed .*no timer"):
        source = constants.constants_source()
    assert source.startswith("shipped defaults (the cost probe failed: RuntimeError: no timer")
    im2col = backends.get("im2col")
    assert constants.constants_for("im2col", im2col) is im2col.COST_CONSTANTS
    assert not os.path.exists(constants.probe_path())


def test_an_unwritable_cache_is_a_warning_and_the_probe_is_still_used(cost_probe_stub, tmp_path, monkeypatch):
    (tmp_path / "a_file").write_text("")
    monkeypatch.setattr(config, "cache_dir", tmp_path / "a_file" / "cache")
    with pytest.warns(RuntimeWarning, match="could not keep the cost probe's measurements .* is a file"):
        assert constants.constants_source().startswith("probed on ")


def test_processes_starting_at_once_probe_once(tmp_path):
    """Four processes need constants at once: one probes (slowly), the others wait for its result."""
    markers = tmp_path / "probes"
    markers.mkdir()
    script = textwrap.dedent(f"""
        import os, time
        from fastconv.auto import constants, probe

        def slow_measure(threads=None):
            open(os.path.join({str(markers)!r}, str(os.getpid())), "w").close()
            time.sleep(0.5)
            return dict(constants.REFERENCE_MACHINE["quantities"])

        probe.measure = slow_measure
        print(constants.constants_source())
    """)
    environment = _environment(tmp_path / "cache")
    processes = [subprocess.Popen([sys.executable, "-c", script], env=environment, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(4)]
    outputs = [process.communicate(timeout=120) for process in processes]
    assert [process.returncode for process in processes] == [0] * 4, outputs
    assert len(os.listdir(markers)) == 1
    sources = {out.strip() for out, _ in outputs}
    assert len(sources) == 1 and sources.pop().startswith("probed on ")
    assert not any("Warning" in err for _, err in outputs), outputs
    document = json.loads((tmp_path / "cache" / constants.PROBE_FILE).read_text())
    assert len(document["entries"]) == 1
    assert not [name for name in os.listdir(tmp_path / "cache") if name.startswith(".tmp-")]


def test_no_probe_in_a_process_that_never_uses_auto(tmp_path):
    script = textwrap.dedent("""
        import sys
        import numpy as np
        import fastconv
        after_import = sorted(name for name in sys.modules if name.startswith(("numba", "fastconv.auto.probe")))
        x, w = np.ones((1, 2, 8, 8), np.float32), np.ones((2, 2, 3, 3), np.float32)
        for backend in ("naive", "im2col", "numba_cpu", "fft", "winograd"):
            fastconv.conv2d(x, w, padding=1, backend=backend)
        fastconv.conv_transpose2d(x, w)
        fastconv.max_pool2d(x, 2)
        fastconv.correlate2d(x[0, 0], w[0, 0], backend="im2col")
        from fastconv.auto import constants
        print(after_import, "fastconv.auto.probe" in sys.modules, constants._loaded is None)
    """)
    result = subprocess.run([sys.executable, "-c", script], env=_environment(tmp_path / "cache"),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["[]", "False", "True"]
    assert not (tmp_path / "cache" / constants.PROBE_FILE).exists()


def test_auto_probes_on_its_first_call_only(cost_probe_stub):
    x, w = np.ones((1, 1, 8, 8), np.float32), np.ones((1, 1, 3, 3), np.float32)
    fastconv.conv2d(x, w, backend="numba_cpu")
    assert cost_probe_stub.calls == []
    for _ in range(3):
        fastconv.conv2d(x, w)
    assert len(cost_probe_stub.calls) == 1 and os.path.exists(constants.probe_path())


# --------------------------------------------------------------------------------------------
# rerunning it


def test_rerun_probe_measures_again_and_the_cli_shows_it(cost_probe_stub, capsys):
    from fastconv.tools.cli import main

    constants.constants_source()
    cost_probe_stub.quantities["fft"] *= 6
    assert main(["tune", "--probe"]) == 0
    assert len(cost_probe_stub.calls) == 2
    out = capsys.readouterr().out
    assert f"kept in {constants.probe_path()}" in out and "cost probe of " in out
    assert "x0.25" in out  # six times as fast, less the probe's spread: a quarter of the shipped constants
    shipped = backends.get("fft").COST_CONSTANTS["fft_flop"]
    assert f"fft_flop={shipped / 4:.3g}" in out and "  fft        probed " in out
    assert constants.probe_result()["quantities"]["fft"] == pytest.approx(6 * REFERENCE["fft"])
    assert main(["tune", "--show"]) == 0
    assert "in use: probed on " in capsys.readouterr().out


def test_rerun_probe_with_the_probe_off_keeps_the_shipped_constants(cost_probe_stub, monkeypatch, capsys):
    from fastconv.tools.cli import main

    monkeypatch.setattr(config, "cost_probe", False)
    assert main(["tune", "--probe"]) == 0
    assert "the cost probe is off" in capsys.readouterr().out
    assert os.path.exists(constants.probe_path())
    assert constants.constants_source().startswith("shipped defaults")


# --------------------------------------------------------------------------------------------
# the real thing


def test_the_probe_keeps_each_resource_s_best_round_and_stops_at_its_budget(monkeypatch):
    calls = []

    def measurer(resource, rates):
        rates = iter(rates)

        def rate():
            calls.append(resource)
            return next(rates)

        return rate

    def fake(threads):
        monkeypatch.setattr(probe, "_call_rate", lambda: measurer("call", [1.0, 3.0, 2.0]))
        monkeypatch.setattr(probe, "_compute_rates", lambda threads: (measurer("serial_compute", [5.0] * 3),
                                                                      measurer("compute", [9.0, 8.0, 7.0])))
        monkeypatch.setattr(probe, "_memory_rate", lambda threads: measurer("memory", [4.0] * 3))
        monkeypatch.setattr(probe, "_fft_rate", lambda threads: measurer("fft", [6.0] * 3))
        monkeypatch.setattr(probe, "_gemm_rate", lambda threads: measurer("gemm", [1.0, 1.0, 6.0]))

    fake(1)
    # a slow spell in any one round lowers no resource: each keeps its best of the rounds
    assert probe.measure(1) == {"call": 3.0, "serial_compute": 5.0, "compute": 9.0, "memory": 4.0, "fft": 6.0,
                                "gemm": 6.0}
    assert len(calls) == 3 * 6 and calls[-1] == "gemm"  # BLAS last in each round
    calls.clear()
    fake(1)
    monkeypatch.setattr(probe, "_BUDGET_SECONDS", 0.0)  # a loaded machine: the first round only
    assert probe.measure(1)["gemm"] == 1.0 and len(calls) == 6


def test_the_real_probe_measures_every_resource_quickly():
    started = time.perf_counter()
    quantities = probe.measure()
    seconds = time.perf_counter() - started
    assert set(quantities) == set(constants.RESOURCES)
    assert all(np.isfinite(value) and value > 0 for value in quantities.values())
    # sanity: a core does more than 0.1 G multiply-adds a second, and all threads at least what one does
    assert quantities["serial_compute"] > 1e8 and quantities["compute"] > 0.5 * quantities["serial_compute"]
    assert seconds < 10, f"the probe took {seconds:.2f} s"  # (about 0.7 s here; 10 s: a busy CI machine)


# --------------------------------------------------------------------------------------------
# switching thread pools


def test_the_probe_keeps_what_switching_thread_pools_costs(cost_probe_stub):
    cost_probe_stub.switches = {"openmp>blas": 3e-4, "blas>openmp": 1e-4}
    assert pool_switches.pool_switch_seconds("openmp", "blas") == 3e-4
    assert pool_switches.pool_switch_seconds("blas", "openmp") == 1e-4
    # a pair the probe did not measure (a pool missing there): the shipped figure
    assert pool_switches.pool_switch_seconds("python", "fftw") == pool_switches.SHIPPED_SWITCH_SECONDS["python>fftw"]
    assert pool_switches.pool_switch_seconds("blas", "blas") == 0.0 and pool_switches.pool_switch_seconds(None, "blas") == 0.0
    entry = json.loads(open(constants.probe_path()).read())["entries"][str(constants.probe_threads())]
    assert entry["switches"] == cost_probe_stub.switches


def test_a_probe_file_without_switch_costs_is_used_with_the_shipped_ones(cost_probe_stub):
    os.makedirs(config.cache_dir)
    with open(constants.probe_path(), "w") as file:
        json.dump({"format": "fastconv-cost-probe", "version": 1, "machine": constants.machine_key(),
                   "entries": {str(constants.probe_threads()): {"date": "d", "seconds": 1.0,
                                                                "quantities": dict(REFERENCE)}}}, file)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert pool_switches.pool_switch_seconds("blas", "openmp") == pool_switches.SHIPPED_SWITCH_SECONDS["blas>openmp"]
    assert cost_probe_stub.calls == []


def test_the_real_probe_measures_each_switch_between_pools():
    switches = probe.measure_switches(repeats=2)
    pools = [pool for pool in probe.POOLS if pool != "fftw" or "fftw" in {pair.split(">")[0] for pair in switches}]
    assert set(switches) == {f"{first}>{then}" for first in pools for then in pools if first != then}
    assert all(0 <= seconds < 0.1 for seconds in switches.values())
