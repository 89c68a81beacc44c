"""Settings read from the environment at import time (checked in fresh interpreters)."""

import os
import subprocess
import sys

import pytest


def _run(code, **environment):
    env = {key: value for key, value in os.environ.items() if key != "OMP_WAIT_POLICY"}
    env.update(environment)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [os.getcwd(), env.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout


def test_import_asks_openmp_workers_to_sleep_when_idle():
    assert _run("import os, fastconv; print(os.environ['OMP_WAIT_POLICY'])").strip() == "PASSIVE"


def test_a_wait_policy_the_user_set_wins():
    assert _run("import os, fastconv; print(os.environ['OMP_WAIT_POLICY'])",
                OMP_WAIT_POLICY="ACTIVE").strip() == "ACTIVE"


@pytest.mark.parametrize("variable, value, message", [
    ("FASTCONV_NUM_THREADS", "two", "FASTCONV_NUM_THREADS='two' is not an integer"),
    ("FASTCONV_NUM_THREADS", "0", "FASTCONV_NUM_THREADS='0' must be >= 1"),
    ("FASTCONV_WORKSPACE_MB", "-5", "FASTCONV_WORKSPACE_MB='-5' must be >= 1"),
])
def test_bad_environment_values_name_the_variable(variable, value, message):
    with pytest.raises(subprocess.CalledProcessError) as failure:
        _run("import fastconv", **{variable: value})
    assert message in failure.value.stderr


def test_peer_environment_restores_the_wait_policy_the_user_had():
    code = ("import os, fastconv; env = fastconv.config.peer_environment(X='1'); "
            "print(env.get('OMP_WAIT_POLICY'), env['FASTCONV_OMP_PASSIVE'], env['X'])")
    assert _run(code).split() == ["None", "0", "1"]
    assert _run(code, OMP_WAIT_POLICY="ACTIVE").split() == ["ACTIVE", "0", "1"]


def test_fastconv_omp_passive_0_leaves_the_wait_policy_alone():
    code = "import os, fastconv; print(os.environ.get('OMP_WAIT_POLICY'))"
    assert _run(code, FASTCONV_OMP_PASSIVE="0").strip() == "None"
