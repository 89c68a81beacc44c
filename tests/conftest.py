import os
import sys
import types

import pytest
from hypothesis import HealthCheck, settings

# Numba compiles on first use: no per-example deadline. CI keeps example counts modest so the
# whole suite stays within minutes on two cores; FASTCONV_HYPOTHESIS_PROFILE=thorough for more.
settings.register_profile("ci", deadline=None, max_examples=40,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("thorough", deadline=None, max_examples=500,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile(os.environ.get("FASTCONV_HYPOTHESIS_PROFILE", "ci"))

# Under pytest-xdist (the test extra installs it; pyproject's addopts run one worker per core)
# every worker compiles into a numba cache directory of its own: numba's cache is not safe for
# processes compiling at once, since two of them saving new specialisations of one function can
# both take the same data file number, leaving an index entry that points at the other's machine
# code. Set before numba is imported (by the test modules); subprocesses inherit it, and a nested
# pytest run gets directories below its worker's.
_WORKER = os.environ.get("PYTEST_XDIST_WORKER")
if _WORKER:
    _numba_cache = os.path.join(os.environ.get("NUMBA_CACHE_DIR")
                                or os.path.join(os.path.dirname(os.path.abspath(__file__)), "__pycache__", "numba"),
                                f"xdist-{_WORKER}")
    os.environ["NUMBA_CACHE_DIR"] = _numba_cache
    if "numba" in sys.modules:  # imported already (by a plugin): its config was read at import
        sys.modules["numba"].config.CACHE_DIR = _numba_cache

# The tests mirror the package in folders; the oracle (reference.py) and the hypothesis strategies
# (strategies.py) they share live here, importable from every folder.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# The CUDA simulator must be on before numba is first imported, so tests/backends/cuda runs in a
# pytest process of its own (tests/backends/test_cuda.py starts it) unless this process already
# simulates.
if os.environ.get("NUMBA_ENABLE_CUDASIM") != "1":
    collect_ignore = ["backends/cuda"]

# The cost probe measures the machine (about a second, once per cache directory) the first time
# auto needs its constants. The tests run on the shipped constants, in every process they start,
# so that their choices do not depend on the machine; tests of the probe itself turn it on with
# the ``cost_probe_stub`` fixture (or, once, for real).
os.environ["FASTCONV_COST_PROBE"] = "0"


@pytest.fixture
def cost_probe_stub(tmp_path, monkeypatch):
    """The cost probe on, measuring nothing: ``stub.quantities`` (the reference machine's, unless
    a test changes them) are what it "measures"; ``stub.calls`` counts its runs. A fresh cache
    directory, and no decisions remembered from earlier tests."""
    from fastconv import config
    from fastconv.auto import choice, constants, pool_switches, probe

    stub = types.SimpleNamespace(quantities=dict(constants.REFERENCE_MACHINE["quantities"]), calls=[],
                                 switches=dict(pool_switches.SHIPPED_SWITCH_SECONDS))

    def measure(threads=None):
        stub.calls.append(threads)
        return dict(stub.quantities)

    monkeypatch.setattr(probe, "measure", measure)
    monkeypatch.setattr(probe, "measure_switches", lambda threads=None: dict(stub.switches))
    monkeypatch.setattr(config, "cache_dir", tmp_path / "cache")
    monkeypatch.setattr(config, "cost_probe", True)
    monkeypatch.setattr(constants, "_loaded", None)
    choice.clear_cache()
    yield stub
    constants._loaded = None
    choice.clear_cache()


@pytest.fixture
def stale_pool():
    """A pool name no backend has, noted as the last pool, so that a test sees which pool its call
    notes; the pool noted before the test is noted again after it."""
    from fastconv import thread_pools

    before = thread_pools.last_pool()
    thread_pools.note_pool("stale")
    yield "stale"
    thread_pools.note_pool(before)
