"""Settings read from the environment at import time (checked in fresh interpreters)."""

import os
import subprocess
import sys

import pytest


def _run(code, **environment):
    env = {key: value for key, value in os.environ.items() if key not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env.update(environment)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [os.getcwd(), env.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout


def test_import_limits_how_long_idle_openmp_workers_spin():
    assert _run("import os, fastconv; print(os.environ['GOMP_SPINCOUNT'])").strip() == "2000"


@pytest.mark.parametrize("variable, value", [("OMP_WAIT_POLICY", "ACTIVE"), ("GOMP_SPINCOUNT", "5")])
def test_openmp_settings_the_user_made_win(variable, value):
    code = "import os, fastconv; print(os.environ.get('OMP_WAIT_POLICY'), os.environ.get('GOMP_SPINCOUNT'))"
    expected = {"OMP_WAIT_POLICY": None, "GOMP_SPINCOUNT": None, variable: value}
    assert _run(code, **{variable: value}).split() == [str(expected["OMP_WAIT_POLICY"]), str(expected["GOMP_SPINCOUNT"])]


def _run_with_warnings(code, **environment):
    env = {key: value for key, value in os.environ.items() if not key.startswith("FASTCONV_")}
    env.update(environment)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [os.getcwd(), env.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-W", "always", "-c", code], env=env, capture_output=True, text=True,
                          check=True)


_SETTINGS = ("import fastconv as f; c = f.config; "
             "print(c.threads, c.workspace_bytes, c.autotune, c.fftw_planner, c.cost_probe)")


@pytest.mark.parametrize("variable, value", [
    ("FASTCONV_NUM_THREADS", "two"), ("FASTCONV_NUM_THREADS", "0"), ("FASTCONV_NUM_THREADS", "-3"),
    ("FASTCONV_NUM_THREADS", "1.5"), ("FASTCONV_WORKSPACE_MB", "abc"), ("FASTCONV_WORKSPACE_MB", "0"),
    ("FASTCONV_WORKSPACE_MB", "-1"), ("FASTCONV_WORKSPACE_MB", "1.5"), ("FASTCONV_WORKSPACE_MB", "1e3"),
    ("FASTCONV_AUTOTUNE", "maybe"), ("FASTCONV_AUTOTUNE", "2"), ("FASTCONV_FFTW_PLANNER", "slow"),
    ("FASTCONV_LIMIT_OMP_SPIN", "sometimes"), ("FASTCONV_COST_PROBE", "maybe"), ("FASTCONV_COST_PROBE", "2"),
])
def test_a_bad_environment_variable_warns_and_the_default_is_used(variable, value):
    defaults = _run_with_warnings(_SETTINGS)
    result = _run_with_warnings(_SETTINGS, **{variable: value})
    assert result.stdout == defaults.stdout  # import did not fail, and the default is in force
    assert "RuntimeWarning" in result.stderr
    assert f"{variable}={value!r}" in result.stderr and "accepted values are" in result.stderr


def test_good_environment_values_are_used():
    result = _run_with_warnings(_SETTINGS, FASTCONV_NUM_THREADS=" 3 ", FASTCONV_WORKSPACE_MB="5",
                                FASTCONV_AUTOTUNE="On", FASTCONV_FFTW_PLANNER="measure", FASTCONV_COST_PROBE="off")
    assert result.stdout.split() == ["3", str(5 << 20), "True", "FFTW_MEASURE", "False"]
    assert "Warning" not in result.stderr


@pytest.mark.parametrize("name, value, error", [
    ("threads", 0, ValueError), ("threads", -1, ValueError), ("threads", 1.5, TypeError), ("threads", "2", TypeError),
    ("threads", True, TypeError), ("workspace_bytes", 0, ValueError), ("workspace_bytes", None, TypeError),
    ("autotune", "yes", TypeError), ("autotune", 2, TypeError), ("fftw_planner", "fast", ValueError),
    ("fftw_planner", 3, ValueError), ("cache_dir", "", TypeError), ("cache_dir", 5, TypeError),
    ("cost_probe", "no", TypeError), ("cost_probe", None, TypeError),
])
def test_assigning_a_setting_directly_is_validated(name, value, error):
    from fastconv import config

    before = getattr(config, name)
    with pytest.raises(error, match=name):
        setattr(config, name, value)
    assert getattr(config, name) == before


def test_assigning_a_setting_directly_works_like_its_setter(monkeypatch, tmp_path):
    from fastconv import config

    for name, value, expected in [("threads", 3, 3), ("workspace_bytes", 1 << 20, 1 << 20),
                                  ("autotune", 1, True), ("fftw_planner", "patient", "FFTW_PATIENT"),
                                  ("cache_dir", str(tmp_path), tmp_path), ("cost_probe", 0, False)]:
        monkeypatch.setattr(config, name, value)
        assert getattr(config, name) == expected
    config.set_threads(2)
    assert config.threads == 2


def test_peer_environment_restores_the_openmp_settings_the_user_had():
    code = ("import os, fastconv; env = fastconv.config.peer_environment(X='1'); "
            "print(env.get('OMP_WAIT_POLICY'), env.get('GOMP_SPINCOUNT'), env['FASTCONV_LIMIT_OMP_SPIN'], env['X'])")
    assert _run(code).split() == ["None", "None", "0", "1"]
    assert _run(code, OMP_WAIT_POLICY="ACTIVE").split() == ["ACTIVE", "None", "0", "1"]


def test_fastconv_limit_omp_spin_0_leaves_openmp_alone():
    code = "import os, fastconv; print(os.environ.get('GOMP_SPINCOUNT'))"
    assert _run(code, FASTCONV_LIMIT_OMP_SPIN="0").strip() == "None"
