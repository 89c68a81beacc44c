"""The timing harness behind ``fastconv bench``, ``fastconv explain --measure`` and ``fastconv report``.

A :class:`~fastconv.tools.cases.Case` is one convolution problem (shapes, geometry, dtype, kind of
kernel). :func:`measure`
times every requested fastconv backend on every case in this process and every peer library
(torch, scipy, OpenCV) in a subprocess of its own, one per peer: an idle BLAS or OpenMP thread pool left
behind by one library keeps spinning and steals cores from the next, so libraries are never timed
side by side in one process.

Each measurement is one untimed warm-up call (numba compiles, FFTW plans, caches fill), a short
settle pause and, for short calls, 30 ms of untimed calls (see :func:`time_call`), then up to
``repeat`` timed calls, fewer when they exceed ``budget_s`` seconds together, more when they add up
to less than 30 ms; the median is kept.
A backend that declines a case (its ``supports(spec)`` says why) is recorded as skipped with that
reason, never timed. The reference loops (``naive``) are skipped on cases above
:data:`REFERENCE_MAX_FLOPS`, where one call would take seconds.

The comparison scripts (``benchmarks/compare/``) use the same pieces: :func:`time_call`, the
problems of :mod:`fastconv.tools.cases`, :func:`prepare_call`'s peers, :func:`sgemm_gflops`, and
:mod:`fastconv.tools.isolated` to run each library in a process of its own.

Examples
--------
>>> from fastconv.tools.bench import measure
>>> from fastconv.tools.cases import Case
>>> case = Case("tiny", (1, 2, 8, 8), (2, 2, 3, 3), padding=1)
>>> results = measure([case], ["naive"], peers=[], repeat=1, progress=False)
>>> results["cases"][0]["results"]["naive"]["status"]
'ok'
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from importlib import metadata

import numpy as np

from fastconv import backends, config
from fastconv.geometry import backend_spec, pad_input
from fastconv.auto import passes
from fastconv.auto.timing import steady_state_times, timed
from fastconv.tools.cases import PASS_OPS, Case, Skip, make_grad_output, make_inputs

__all__ = [
    "AUTO",
    "REFERENCE_MAX_FLOPS",
    "call_overhead_summary",
    "PEERS",
    "auto_summary",
    "fastest",
    "installed_peers",
    "machine_info",
    "measure",
    "median_seconds",
    "op_backends",
    "prepare_call",
    "sgemm_gflops",
    "time_call",
]

#: Libraries timed next to fastconv, when installed. OpenCV (``cv2.filter2D``, ``cv2.sepFilter2D``
#: for Gaussian kernels) times image filters only: single-channel images, and batches of them as
#: one multi-channel image (a colour image filtered channel by channel).
PEERS = ("torch", "scipy", "opencv")

# The module each peer is imported as.
_PEER_MODULES = {"torch": "torch", "scipy": "scipy", "opencv": "cv2"}

#: Above this many flops one call of the reference loops takes ~0.25 s or more (they run at about
#: 2 GFLOP/s on one core), so ``naive`` is skipped rather than timed.
REFERENCE_MAX_FLOPS = 5e8

# The distributions that install cv2 (their versions name OpenCV's).
_OPENCV_DISTRIBUTIONS = ("opencv-python-headless", "opencv-python", "opencv-contrib-python-headless",
                         "opencv-contrib-python")
# The most channels an OpenCV matrix has (CV_CN_MAX).
_OPENCV_MAX_CHANNELS = 512

#: Timed like a backend where asked for: the operation called with ``backend="auto"``, as a user
#: calls it (validation and the choice included). Never "the fastest backend" (:func:`fastest`).
AUTO = "auto"


def _pass_of(op: str) -> str:
    """``"input"`` or ``"weight"`` for a backward-pass operation."""
    return "input" if op == "conv2d_input" else "weight"


def _fastconv_pass_call(case: Case, backend: str, x, w):
    import fastconv

    route = passes.route(_pass_of(case.op), backend, backend_spec(case.spec()))
    reason = passes.decline_reason(route)
    if reason is not None:
        raise Skip(f"{'unavailable' if backends.unavailable_reason(backend) else 'declines'}: {reason}")
    if backends.is_reference(backend) and case.flops > REFERENCE_MAX_FLOPS:
        raise Skip(f"{case.flops / 1e9:.1f} GFLOP: too slow for the reference loops (limit {REFERENCE_MAX_FLOPS / 1e9:.1f} GFLOP)")
    g = make_grad_output(case)
    if case.op == "conv2d_input":
        return functools.partial(fastconv.conv2d_input, x.shape, w, g, backend=backend, **case.conv_kwargs())
    return functools.partial(fastconv.conv2d_weight, x, w.shape, g, backend=backend, **case.conv_kwargs())


def _fastconv_call(case: Case, backend: str, x, w):
    import fastconv

    if case.op in PASS_OPS:
        return _fastconv_pass_call(case, backend, x, w)
    if backend == AUTO:
        if not hasattr(fastconv, case.op):
            raise Skip(f"fastconv.{case.op} is not in this version of fastconv")
        return functools.partial(getattr(fastconv, case.op), x, w, backend=AUTO, **case.conv_kwargs())
    if case.op == "conv2d":
        reason = backends.unavailable_reason(backend)
        if reason is not None:
            raise Skip(f"unavailable: {reason}")
        from fastconv.auto.choice import weight_decline_reason

        reason = (backends.get(backend).supports(case.backend_spec())
                  or weight_decline_reason(backend, w, case.backend_spec()))  # e.g. separable's rank test
        if reason is not None:
            raise Skip(f"declines: {reason}")
    elif not hasattr(fastconv, case.op):
        raise Skip(f"fastconv.{case.op} is not in this version of fastconv")
    if backends.is_reference(backend) and case.flops > REFERENCE_MAX_FLOPS:
        raise Skip(f"{case.flops / 1e9:.1f} GFLOP: too slow for the reference loops (limit {REFERENCE_MAX_FLOPS / 1e9:.1f} GFLOP)")
    return functools.partial(getattr(fastconv, case.op), x, w, backend=backend, **case.conv_kwargs())


def _torch_call(case: Case, x, w):
    if importlib.util.find_spec("torch") is None:
        raise Skip("torch is not installed")
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(config.threads)
    if str(x.dtype) not in ("float32", "float64"):
        raise Skip(f"timed only for float32 and float64, not {x.dtype}")
    # tensors made from numpy arrays do not require gradients: no autograd graph is recorded
    x, w = torch.from_numpy(x), torch.from_numpy(w)
    if case.op == "conv_transpose2d":
        return functools.partial(F.conv_transpose2d, x, w, **case.conv_kwargs())
    spec = case.spec()
    (top, bottom), (left, right) = spec.padding
    symmetric = (top, left) == (bottom, right) and spec.padding_mode == "zeros"
    pre_pad = None if symmetric else (left, right, top, bottom)
    pad_mode = "constant" if spec.padding_mode == "zeros" else spec.padding_mode  # torch's other names match
    padding = (top, left) if symmetric else 0
    if case.op in PASS_OPS:
        # the forward call recorded once; each timed call is the backward pass alone, computing only
        # the gradient asked for (autograd skips the other), as a training step's backward runs it
        wanted = x.requires_grad_() if case.op == "conv2d_input" else w.requires_grad_()
        inputs = x if symmetric else F.pad(x, pre_pad, mode=pad_mode)
        y = F.conv2d(inputs, w, None, spec.stride, padding, spec.dilation, spec.groups)
        g = torch.from_numpy(make_grad_output(case))
        return functools.partial(torch.autograd.grad, y, [wanted], g, retain_graph=True)

    def call():  # asymmetric padding ("same" with an even extent) or a padding mode: pad first, as torch users do
        inputs = x if symmetric else F.pad(x, pre_pad, mode=pad_mode)
        return F.conv2d(inputs, w, None, spec.stride, padding, spec.dilation, spec.groups)

    return call


def _scipy_call(case: Case, x, w):
    import scipy.signal

    if case.op != "conv2d":
        raise Skip(f"scipy has no {case.op}")
    spec = case.spec()
    if spec.stride != (1, 1) or spec.dilation != (1, 1):
        raise Skip("scipy.signal.correlate has no stride or dilation")

    def call():
        # 'valid' correlation of a (C/g, H, W) slab with a (C/g, kh, kw) filter also sums over the
        # channels, so one scipy call per (image, filter) computes one output channel
        padded = pad_input(x, spec)
        out = np.empty(spec.out_shape, dtype=spec.dtype)
        per_group_in, per_group_out = spec.in_channels_per_group, spec.out_channels_per_group
        for n in range(spec.batch):
            for k in range(spec.out_channels):
                first = (k // per_group_out) * per_group_in
                out[n, k] = scipy.signal.correlate(padded[n, first:first + per_group_in], w[k], mode="valid")[0]
        return out

    return call


def _rank_one_factors(kernel: np.ndarray):
    """(column, row) 1-D factors of a rank-1 kernel, ``kernel == outer(column, row)``, in its dtype."""
    u, s, vt = np.linalg.svd(kernel.astype(np.float64))
    scale = np.sqrt(s[0])
    return (u[:, 0] * scale).astype(kernel.dtype), (vt[0] * scale).astype(kernel.dtype)


def _opencv_call(case: Case, x, w):
    if importlib.util.find_spec("cv2") is None:
        raise Skip("OpenCV (cv2) is not installed")
    if case.op != "conv2d":
        raise Skip(f"OpenCV has no {case.op}")
    spec = case.spec()
    if spec.in_channels != 1 or spec.out_channels != 1:
        raise Skip("cv2.filter2D filters single-channel images (one input and one output channel), or the "
                   "channels of an image with one kernel: give it a batch of single-channel images")
    if spec.stride != (1, 1) or spec.dilation != (1, 1):
        raise Skip("cv2.filter2D has no stride or dilation")
    if str(x.dtype) not in ("float32", "float64"):
        raise Skip(f"timed only for float32 and float64, not {x.dtype}")
    if spec.batch > _OPENCV_MAX_CHANNELS:
        raise Skip(f"a batch of {spec.batch} images is more channels than OpenCV's limit ({_OPENCV_MAX_CHANNELS})")
    import cv2

    cv2.setNumThreads(config.threads)
    kernel = w[0, 0]
    if case.kernel == "gaussian":  # a rank-1 kernel: OpenCV users call sepFilter2D with its 1-D factors
        column, row = _rank_one_factors(kernel)

        def apply(image, anchor):
            return cv2.sepFilter2D(image, -1, row, column, anchor=anchor, borderType=cv2.BORDER_CONSTANT)
    else:
        def apply(image, anchor):
            return cv2.filter2D(image, -1, kernel, anchor=anchor, borderType=cv2.BORDER_CONSTANT)

    # A batch of single-channel images is one multi-channel image to OpenCV (H x W x N, filtered
    # channel by channel with the one kernel, in one call), as a colour image is. The layout
    # change happens here, untimed: each library gets the data in the layout it works on.
    (top, _), (left, _) = spec.padding
    same = spec.padding_mode == "zeros" and spec.out_shape[2:] == x.shape[2:]
    source = x[:, 0] if same else pad_input(x, spec)[:, 0]
    image = np.ascontiguousarray(source.transpose(1, 2, 0))
    if spec.batch == 1:
        image = image[:, :, 0]

    def as_batch(out):  # (H, W[, N]) -> (N, 1, H, W), a view
        return (out[:, :, None] if out.ndim == 2 else out).transpose(2, 0, 1)[:, None]

    if same:  # "same" size: OpenCV's own zero border, the kernel anchored where the padding puts it
        return lambda: as_batch(apply(image, (left, top)))
    # other paddings: pad first, then keep the outputs whose windows lie inside
    return lambda: as_batch(apply(image, (0, 0))[:spec.out_height, :spec.out_width])


def prepare_call(case: Case, backend: str, x, w):
    """A zero-argument callable that runs ``case`` on fastconv ``backend`` or peer ``"torch"``,
    ``"scipy"`` or ``"opencv"``, already called once, so that JIT compilation and FFT planning are
    done before any timing.

    Raises :class:`Skip` (with the reason) when that backend or peer cannot run the case here.
    """
    if backend == "torch":
        call = _torch_call(case, x, w)
    elif backend == "scipy":
        call = _scipy_call(case, x, w)
    elif backend == "opencv":
        call = _opencv_call(case, x, w)
    else:
        call = _fastconv_call(case, backend, x, w)
    try:
        call()
    except ValueError as error:
        if case.op == "conv2d":  # conv2d backends decline through supports(): this is a real failure
            raise
        raise Skip(f"declines: {error}") from None  # other ops decline by raising on the first call
    return call


def time_call(function, repeat: int = 5, budget_s: float = 1.0) -> tuple[float, int]:
    """Median seconds of about ``repeat`` calls of ``function``, and the number of calls timed.

    The tuner's rule (:func:`fastconv.auto.timing.steady_state_times`), stopping once ``budget_s``
    seconds have passed since timing began (at least one call is always timed). Warm up first
    (:func:`prepare_call` does). Timing starts after ``SETTLE_SECONDS`` of sleep, so
    that the thread pools of the previous backend (OpenBLAS after ``im2col``, say) have stopped
    spinning on the cores this one needs. Calls shorter than ``WARMUP_SECONDS``
    are first repeated untimed for that long: after an idle moment (another backend's run, a
    peer's subprocess) parallel calls on this 2-vCPU machine ran several times slower for ~20 ms
    while the other core woke up — fft on a 512² image with a 9×9 kernel measured 3.55 ms
    instead of 1.6–1.7 ms — and a loop over images runs in the awake state. For the same reason
    short calls are timed until they add up to ``MIN_TIMED_SECONDS`` (more than
    ``repeat`` calls), so that a few slow calls cannot become the median.
    """
    times = steady_state_times(function, repeats=repeat, budget=budget_s, first_is_warm=True)
    return statistics.median(times), len(times)


def _measure_one(case: Case, backend: str, repeat: int, budget_s: float) -> dict:
    try:
        x, w = make_inputs(case)
        call = prepare_call(case, backend, x, w)
        seconds, runs = time_call(call, repeat, budget_s)
    except Skip as reason:
        return {"status": "skipped", "reason": str(reason)}
    except Exception as error:  # one broken backend must not end the run: record it and go on
        return {"status": "failed", "reason": f"{type(error).__name__}: {error}"}
    return {"status": "ok", "median_s": seconds, "runs": runs}


# --------------------------------------------------------------------------------------------
# running a list of cases


def installed_peers() -> list[str]:
    """The peer libraries importable here (found without importing them)."""
    return [peer for peer in PEERS if importlib.util.find_spec(_PEER_MODULES[peer]) is not None]


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict:
    """CPU, core and thread counts and library versions: what a measurement needs next to it."""
    import fastconv

    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "threads": config.threads,
        "python": platform.python_version(),
        "fastconv": fastconv.__version__,
        **{package: _version(package) for package in ("numpy", "scipy", "numba", "pyfftw", "torch")},
        "opencv": next(filter(None, map(_version, _OPENCV_DISTRIBUTIONS)), None),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def _auto_choice(case: Case) -> str | None:
    if case.op in PASS_OPS:
        return passes.choose(_pass_of(case.op), backend_spec(case.spec())).backend
    if case.op != "conv2d":
        return None
    from fastconv.ops.conv2d import choose_backend

    try:  # with the weight, as conv2d's own auto sees it: the rank decides whether separable can run
        return choose_backend(case.backend_spec(), make_inputs(case)[1])
    except ValueError:
        return None


class _Progress:
    """A tqdm bar on stderr when stderr is a terminal; silent otherwise (logs and pipes stay clean)."""

    def __init__(self, total: int, enabled: bool):
        self._bar = None
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=total, unit="run", leave=False, dynamic_ncols=True)

    def step(self, label: str) -> None:
        if self._bar is not None:
            self._bar.set_description_str(label[:40])
            self._bar.update()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def _run_peer_process(peer: str, cases: list[Case], repeat: int, budget_s: float, progress: _Progress):
    """Time ``cases`` on ``peer`` in a fresh Python process; yields one result per case."""
    request = json.dumps({"peer": peer, "cases": [case.to_dict() for case in cases], "repeat": repeat,
                          "budget_s": budget_s, "threads": config.threads})
    env = config.peer_environment(FASTCONV_NUM_THREADS=str(config.threads))
    process = subprocess.Popen([sys.executable, "-m", "fastconv.tools.bench"], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    process.stdin.write(request)
    process.stdin.close()
    received = 0
    for line in process.stdout:
        received += 1
        progress.step(f"{peer}: {cases[received - 1].name}")
        yield json.loads(line)
    error = process.stderr.read().strip().splitlines()
    process.wait()
    for _ in cases[received:]:  # the worker died: say so for every case it did not report
        progress.step(peer)
        yield {"status": "failed", "reason": f"{peer} worker exited with code {process.returncode}: "
                                             f"{error[-1] if error else 'no message'}"}


def _peer_worker() -> None:
    """``python -m fastconv.tools.bench``: read a request on stdin, print one JSON result line per case."""
    request = json.load(sys.stdin)
    config.set_threads(request["threads"])
    for data in request["cases"]:
        result = _measure_one(Case.from_dict(data), request["peer"], request["repeat"], request["budget_s"])
        print(json.dumps(result), flush=True)


def op_backends(op: str, requested=None) -> list[str]:
    """The backends to time on cases of operation ``op``: those of ``requested`` that implement
    it, in the order given, or every backend registered for it when ``requested`` is None.

    >>> op_backends("conv_transpose2d", ["naive", "im2col"])
    ['naive']
    >>> op_backends("conv2d_input", ["col2im", "winograd"])
    ['col2im', 'winograd']
    """
    registered = passes.pass_backends(_pass_of(op)) if op in PASS_OPS else backends.backend_names(op)
    if requested is None:
        return list(registered)
    return [name for name in requested if name in registered or name == AUTO]


def measure(cases, backend_names, peers=(), repeat: int = 5, budget_s: float = 1.0, progress: bool = True) -> dict:
    """Time every case on every backend (in this process) and every peer (one process per peer).

    Each case is timed on the backends of ``backend_names`` that implement its operation
    (:func:`op_backends`). Returns a JSON-ready dict: ``machine`` (:func:`machine_info`), the settings, and per case its
    description, flops, ``auto`` (the backend ``backend="auto"`` picks, for conv2d), ``backends``
    (those timed on it) and ``results``: for each backend or peer, ``{"status": "ok", "median_s", "runs"}`` or
    ``{"status": "skipped" | "failed", "reason"}``.
    """
    cases = list(cases)
    entries = [{"case": case.to_dict(), "flops": case.flops, "auto": _auto_choice(case),
                "backends": op_backends(case.op, backend_names), "results": {}} for case in cases]
    bar = _Progress(sum(len(entry["backends"]) + len(peers) for entry in entries), progress)
    try:
        for case, entry in zip(cases, entries):
            for backend in entry["backends"]:
                bar.step(f"{backend}: {case.name}")
                entry["results"][backend] = _measure_one(case, backend, repeat, budget_s)
        for peer in peers:
            for entry, result in zip(entries, _run_peer_process(peer, cases, repeat, budget_s, bar)):
                entry["results"][peer] = result
    finally:
        bar.close()
    return {"machine": machine_info(), "repeat": repeat, "budget_s": budget_s,
            "backends": list(backend_names), "peers": list(peers), "cases": entries}


def median_seconds(entry: dict, name: str) -> float | None:
    """The measured median of backend or peer ``name`` in one case entry of :func:`measure`, or None."""
    result = entry["results"].get(name)
    return result["median_s"] if result and result["status"] == "ok" else None


def fastest(entry: dict, names) -> str | None:
    """The fastest of ``names`` that ran in one case entry of :func:`measure` (None if none ran);
    :data:`AUTO` is not a backend and never the fastest."""
    timed = [(median_seconds(entry, name), name) for name in names
             if name != AUTO and median_seconds(entry, name) is not None]
    return min(timed)[1] if timed else None


def auto_summary(results: dict) -> str:
    """One sentence: how often ``auto``'s pick was within 10% of the fastest backend, and the worst case."""
    ratios = []
    for entry in results["cases"]:
        winner, auto = fastest(entry, entry.get("backends", results["backends"])), entry.get("auto")
        if winner and auto and median_seconds(entry, auto):
            ratios.append((median_seconds(entry, auto) / median_seconds(entry, winner), entry["case"]["name"]))
    if not ratios:
        return ""
    hits = sum(ratio <= 1.1 for ratio, _ in ratios)
    worst, worst_case = max(ratios)
    return (f"auto's choice was within 10% of the fastest backend on {hits} of {len(ratios)} cases"
            + (f"; worst: {worst:.2f}x the fastest time, on {worst_case}" if worst > 1.1 else ""))


def call_overhead_summary(results: dict, peer: str = "torch") -> str:
    """One line per case where :data:`AUTO` and ``peer`` both ran: their times per call, and the ratio.

    For the ``calls`` suite, whose problem is so small that a call's time is its overhead.
    """
    lines = []
    for entry in results["cases"]:
        auto, other = median_seconds(entry, AUTO), median_seconds(entry, peer)
        if auto and other:
            lines.append(f"{entry['case']['name']}: conv2d(backend='auto') {auto * 1e6:.2f} µs per call, "
                         f"{peer} {other * 1e6:.2f} µs: {auto / other:.2f}× {peer}'s time")
    return "\n".join(lines)


def sgemm_gflops(size: int = 1024, repeat: int = 5) -> float:
    """The machine's float32 matrix-multiply rate through numpy's BLAS (best of ``repeat``), in GFLOP/s.

    Dense GEMM is about the fastest arithmetic a CPU sustains, so it serves as the ceiling that
    convolution backends are compared against.
    """
    from fastconv.thread_pools import blas_threads

    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((size, size)).astype(np.float32) for _ in range(2))
    with blas_threads(config.threads):
        a @ b
        best = min(timed(lambda: a @ b) for _ in range(repeat))
    return 2 * size**3 / best / 1e9


if __name__ == "__main__":
    _peer_worker()
