"""The ``fft`` and ``separable`` backends against their peers, each library timed in its own process.

Cases (float32, data from a fixed seed, :func:`fastconv.tools.cases.make_inputs`):

* ``random31`` / ``random101``: one 2048×2048 image, a random 31×31 / 101×101 kernel, padding
  "same"; ``fft`` against ``scipy.signal.fftconvolve(x, kernel[::-1, ::-1], mode="same")`` (the
  flipped kernel turns scipy's convolution into our correlation) and ``oaconvolve``. ``fft`` is
  timed twice: with the filter-spectrum cache warm (the same weight applied again, the common
  case) and cold (a new weight array with new values every call).
* ``gaussian31``: the same image, a 31×31 Gaussian; ``separable`` against
  ``scipy.ndimage.correlate(x, kernel, mode="constant")``.
* ``convnet_l2_9x9``: 64→128 channels, 64×64, 9×9 (a canonical layer,
  :func:`fastconv.tools.cases.canonical_layers`); ``fft`` against ``torch.nn.functional.conv2d``.
* ``rfft_even_odd``: pyFFTW r2c + c2r of a 2080×2080 grid against 2080×2079 (the odd length
  ``pyfftw.next_fast_len(2078)`` returns), to show why the backend pads the last axis to even sizes.

Every (case, library) pair runs in a fresh process (:func:`fastconv.tools.isolated.time_isolated`)
so that no library's idle thread pool spins while another is timed. Threads: fastconv and pyFFTW
use ``--threads`` (default 2), torch ``torch.set_num_threads(--threads)``; scipy's
``fftconvolve`` and ``ndimage`` are single-threaded by design (they take no thread count). Times
are medians by fastconv's timing rule (:func:`fastconv.tools.bench.time_call`: a warm-up call, a
settle pause and 30 ms of untimed calls, then up to ``--repeat`` calls within 2 s). Ratios are
fastconv / peer: below 1, fastconv is faster.

Run it from the repository root with fastconv importable, on a quiet machine::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/compare/compare_fft_separable.py

``--quick`` shrinks every image to 256×256 (the 101×101 kernel to 31×31, the layer to 16×16) and
the FFT grids to 130×130, to check that the script works.
"""

from __future__ import annotations

import argparse
import dataclasses

import numpy as np

import fastconv
from fastconv import config
from fastconv.tools import bench
from fastconv.tools.cases import canonical_layers, image_filter, make_inputs
from fastconv.tools.isolated import time_isolated

CASES = {
    # case: (fastconv timings, peers, target ratio against the first peer or None)
    "random31": (["fft", "fft_cold"], ["scipy_fftconvolve", "scipy_oaconvolve"], 0.5),
    "random101": (["fft", "fft_cold"], ["scipy_fftconvolve", "scipy_oaconvolve"], 0.5),
    "gaussian31": (["separable"], ["scipy_ndimage"], 0.02),
    "convnet_l2_9x9": (["fft", "fft_cold"], ["torch"], None),
    "rfft_even_odd": (["pyfftw_even"], ["pyfftw_odd"], None),
}

FASTCONV = {"fft", "fft_cold", "separable"}


def problem(case: str, quick: bool):
    """The :class:`~fastconv.tools.cases.Case` of a convolution case (``rfft_even_odd`` has none)."""
    if case == "convnet_l2_9x9":
        layer = {layer.name: layer for layer in canonical_layers()}[case]
        return dataclasses.replace(layer, input_shape=(1, 64, 16, 16)) if quick else layer
    side = 256 if quick else 2048
    size = {"random31": 31, "random101": 31 if quick else 101, "gaussian31": 31}[case]
    return image_filter(side, size, "gaussian" if case == "gaussian31" else "random")


def build(case: str, library: str, quick: bool):
    """A zero-argument callable doing one convolution of ``case`` with ``library``."""
    if case == "rfft_even_odd":
        import pyfftw

        side = 130 if quick else 2080
        width = side if library == "pyfftw_even" else side - 1
        source = pyfftw.empty_aligned((side, width), np.float32)
        spectrum = pyfftw.empty_aligned((side, width // 2 + 1), np.complex64)
        target = pyfftw.empty_aligned((side, width), np.float32)
        source[...] = np.random.default_rng(0).standard_normal(source.shape)
        forward = pyfftw.FFTW(source, spectrum, axes=(0, 1), threads=config.threads, flags=("FFTW_ESTIMATE",))
        inverse = pyfftw.FFTW(spectrum, target, axes=(0, 1), direction="FFTW_BACKWARD", threads=config.threads,
                              flags=("FFTW_ESTIMATE", "FFTW_DESTROY_INPUT"))
        return lambda: (forward.execute(), inverse.execute())

    case = problem(case, quick)
    x, w = make_inputs(case)
    if library == "torch":
        return bench.prepare_call(case, "torch", x, w)
    image, kernel = x[0, 0], w[0, 0]
    if library in ("scipy_fftconvolve", "scipy_oaconvolve"):
        from scipy import signal

        flipped = np.ascontiguousarray(kernel[::-1, ::-1])
        convolve = signal.fftconvolve if library == "scipy_fftconvolve" else signal.oaconvolve
        return lambda: convolve(image, flipped, mode="same")
    if library == "scipy_ndimage":
        from scipy import ndimage

        return lambda: ndimage.correlate(image, kernel, mode="constant")
    if library == "fft_cold":  # new values every call: the spectrum cache never hits
        weights = [w * (1 + 1e-3 * i) for i in range(4)]
        counter = iter(range(10**9))
        return lambda: fastconv.conv2d(x, weights[next(counter) % 4], backend="fft", **case.conv_kwargs())
    return bench.prepare_call(case, library, x, w)


def measure(case: str, library: str, threads: int, repeat: int, quick: bool = False) -> float | None:
    """Median seconds of one call of ``case`` with ``library``, timed in a process of its own (None:
    the peer library is not installed)."""
    result = time_isolated(build, [case], library, quick, repeat=repeat, budget_s=2.0, threads=threads,
                           peer=library not in FASTCONV)[case]
    if result["status"] == "failed" or library in FASTCONV and result["status"] != "ok":
        raise SystemExit(f"{case} with {library}: {result['status']}: {result['reason']}")
    return result.get("median_s")  # None: a peer that is not installed


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--cases", nargs="*", default=list(CASES), choices=list(CASES))
    parser.add_argument("--quick", action="store_true", help="small images: check that the script works")
    args = parser.parse_args(argv)
    print(f"threads={args.threads}, median of <= {args.repeat} calls; ratio = fastconv / peer (< 1: fastconv faster)")
    print(f"{'case':<16} {'fastconv':<12} {'ms':>9} {'peer':<18} {'ms':>9} {'ratio':>7}  target")
    for case in args.cases:
        ours, peers, target = CASES[case]
        peer_seconds = {peer: measure(case, peer, args.threads, args.repeat, args.quick) for peer in peers}
        for library in ours:
            seconds = measure(case, library, args.threads, args.repeat, args.quick)
            for index, peer in enumerate(peers):
                if peer_seconds[peer] is None:
                    print(f"{case:<16} {library:<12} {seconds * 1e3:9.2f} {peer:<18} {'n/a':>9} {'n/a':>7}  "
                          f"(not installed)", flush=True)
                    continue
                ratio = seconds / peer_seconds[peer]
                verdict = "" if target is None or index else (f"<= {target} " + ("met" if ratio <= target else "MISSED"))
                print(f"{case:<16} {library:<12} {seconds * 1e3:9.2f} {peer:<18} {peer_seconds[peer] * 1e3:9.2f} "
                      f"{ratio:7.3f}  {verdict}", flush=True)


if __name__ == "__main__":
    main()
