"""The comparison scripts' runner: a function in a fresh process, with its threads, environment,
errors and timings."""

import os

import pytest

from fastconv import config
from fastconv.tools.cases import Skip
from fastconv.tools.isolated import run_isolated, time_isolated


def settings_seen(*names):
    """What a new process sees: its thread count, the given environment variables and its pid."""
    return {"threads": config.threads, "pid": os.getpid(), **{name: os.environ.get(name) for name in names}}


def fail(message):
    raise ArithmeticError(message)


def build(key, scale):
    if key == "declines":
        raise Skip("this key cannot run here")
    if key == "breaks":
        return lambda: 1 / 0
    return lambda: sum(range(scale))


def test_the_function_runs_in_a_new_process_with_the_threads_asked_for():
    seen = run_isolated(settings_seen, threads=3)
    assert seen["threads"] == 3 and seen["pid"] != os.getpid()


def test_a_peer_gets_the_environment_before_fastconv_limited_openmp():
    peer = run_isolated(settings_seen, "FASTCONV_LIMIT_OMP_SPIN", "GOMP_SPINCOUNT")
    assert peer["FASTCONV_LIMIT_OMP_SPIN"] == "0"
    assert peer["GOMP_SPINCOUNT"] == config.peer_environment().get("GOMP_SPINCOUNT")
    own = run_isolated(settings_seen, "FASTCONV_LIMIT_OMP_SPIN", "GOMP_SPINCOUNT", peer=False)
    assert own["FASTCONV_LIMIT_OMP_SPIN"] == os.environ.get("FASTCONV_LIMIT_OMP_SPIN")
    assert own["GOMP_SPINCOUNT"] == os.environ.get("GOMP_SPINCOUNT")


def test_a_failure_in_the_process_is_an_error_here_that_says_why():
    with pytest.raises(RuntimeError, match="(?s)fail failed in its own process .*ArithmeticError: no answer"):
        run_isolated(fail, "no answer")


def test_only_module_level_functions_can_be_found_by_a_new_process():
    with pytest.raises(ValueError, match="module-level function"):
        run_isolated(lambda: 1)
    with pytest.raises(ValueError, match="module-level function"):
        time_isolated(print.__call__, ["a"])


def test_time_isolated_times_what_runs_and_says_why_the_rest_did_not():
    results = time_isolated(build, ["sums", "declines", "breaks"], 1000, repeat=2, budget_s=0.05, peer=False)
    assert results["sums"]["status"] == "ok" and results["sums"]["median_s"] > 0 and results["sums"]["runs"] >= 2
    assert results["declines"] == {"status": "skipped", "reason": "this key cannot run here"}
    assert results["breaks"]["status"] == "failed" and "ZeroDivisionError" in results["breaks"]["reason"]
