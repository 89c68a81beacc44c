"""Shared pieces of the asv benchmarks: which backends to compare, the canonical shapes, and setup.

Every registered fastconv backend is a benchmark parameter, next to torch, scipy and OpenCV as baseline
"backends", so a backend registered later appears in every benchmark without edits here. A
combination that cannot run here (backend unavailable, a backend declining the spec, a peer not
installed, an op this version of fastconv lacks, naive on a problem it would take seconds on)
raises NotImplementedError in setup, which asv reports as n/a rather than a failure.

The problems come from :mod:`fastconv.bench`, which ships a copy of the canonical layer shapes
(``fastconv/data/shapes.json``), so the suite needs nothing outside the repository.
"""

import fastconv
from fastconv.tools import bench
from fastconv.tools.cases import Case, Skip, canonical_layers, image_filter, make_inputs, suite_cases  # noqa: F401

#: fastconv's registered backends, then the peer libraries.
BACKENDS = [*fastconv.backends.backend_names(), *bench.PEERS]


def size(text: str) -> tuple[int, int]:
    """'64x32' -> (64, 32): asv parameters are readable strings."""
    height, width = text.split("x")
    return int(height), int(width)


def prepare(case: Case, backend: str):
    """The call that times ``case`` on ``backend``, warmed up (JIT compiled, FFT planned) here in setup."""
    x, w = make_inputs(case)
    try:
        return bench.prepare_call(case, backend, x, w)
    except Skip as reason:
        raise NotImplementedError(str(reason)) from None


def gflops(case: Case, call) -> float:
    """Achieved GFLOP/s (direct-convolution flops / median time) of a prepared call."""
    seconds, _ = bench.time_call(call, repeat=5, budget_s=1.0)
    return case.flops / seconds / 1e9
