import os
import sys

from hypothesis import HealthCheck, settings

# Numba compiles on first use: no per-example deadline. CI keeps example counts modest so the
# whole suite stays within minutes on two cores; FASTCONV_HYPOTHESIS_PROFILE=thorough for more.
settings.register_profile("ci", deadline=None, max_examples=40,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("thorough", deadline=None, max_examples=500,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile(os.environ.get("FASTCONV_HYPOTHESIS_PROFILE", "ci"))

# The tests mirror the package in folders; the oracle (reference.py) and the hypothesis strategies
# (strategies.py) they share live here, importable from every folder.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# The CUDA simulator must be on before numba is first imported, so tests/backends/cuda runs in a
# pytest process of its own (tests/backends/test_cuda.py starts it) unless this process already
# simulates.
if os.environ.get("NUMBA_ENABLE_CUDASIM") != "1":
    collect_ignore = ["backends/cuda"]
