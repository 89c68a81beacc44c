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
    assert _run("import os, fastconv; print(os.environ['GOMP_SPINCOUNT'])").strip() == "20000"


@pytest.mark.parametrize("variable, value", [("OMP_WAIT_POLICY", "ACTIVE"), ("GOMP_SPINCOUNT", "5")])
def test_openmp_settings_the_user_made_win(variable, value):
    code = "import os, fastconv; print(os.environ.get('OMP_WAIT_POLICY'), os.environ.get('GOMP_SPINCOUNT'))"
    expected = {"OMP_WAIT_POLICY": None, "GOMP_SPINCOUNT": None, variable: value}
    assert _run(code, **{variable: value}).split() == [str(expected["OMP_WAIT_POLICY"]), str(expected["GOMP_SPINCOUNT"])]


@pytest.mark.parametrize("variable, value, message", [
    ("FASTCONV_NUM_THREADS", "two", "FASTCONV_NUM_THREADS='two' is not an integer"),
    ("FASTCONV_NUM_THREADS", "0", "FASTCONV_NUM_THREADS='0' must be >= 1"),
    ("FASTCONV_WORKSPACE_MB", "-5", "FASTCONV_WORKSPACE_MB='-5' must be >= 1"),
])
def test_bad_environment_values_name_the_variable(variable, value, message):
    with pytest.raises(subprocess.CalledProcessError) as failure:
        _run("import fastconv", **{variable: value})
    assert message in failure.value.stderr


def test_peer_environment_restores_the_openmp_settings_the_user_had():
    code = ("import os, fastconv; env = fastconv.config.peer_environment(X='1'); "
            "print(env.get('OMP_WAIT_POLICY'), env.get('GOMP_SPINCOUNT'), env['FASTCONV_LIMIT_OMP_SPIN'], env['X'])")
    assert _run(code).split() == ["None", "None", "0", "1"]
    assert _run(code, OMP_WAIT_POLICY="ACTIVE").split() == ["ACTIVE", "None", "0", "1"]


def test_fastconv_limit_omp_spin_0_leaves_openmp_alone():
    code = "import os, fastconv; print(os.environ.get('GOMP_SPINCOUNT'))"
    assert _run(code, FASTCONV_LIMIT_OMP_SPIN="0").strip() == "None"
