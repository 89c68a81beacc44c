"""The ``fft`` and ``separable`` backends against their peers, each library timed in its own process.

Cases (float32, fixed seed):

* ``random31`` / ``random101``: one 2048×2048 image, a random 31×31 / 101×101 kernel, padding
  "same"; ``fft`` against ``scipy.signal.fftconvolve(x, kernel[::-1, ::-1], mode="same")`` (the
  flipped kernel turns scipy's convolution into our correlation). ``fft`` is timed twice: with the
  filter-spectrum cache warm (the same weight applied again, the common case) and cold (a new
  weight array with new values every call).
* ``gaussian31``: the same image, a 31×31 Gaussian; ``separable`` against
  ``scipy.ndimage.correlate(x, kernel, mode="constant")``.
* ``convnet_l2_9x9``: 64→128 channels, 64×64, 9×9 (from shared/shapes.json); ``fft`` against
  ``torch.nn.functional.conv2d``.
* ``rfft_even_odd``: pyFFTW r2c + c2r of a 2080×2080 grid against 2080×2079 (the odd length
  ``pyfftw.next_fast_len(2078)`` returns), to show why the backend pads the last axis to even sizes.

Every (case, library) pair runs in a fresh subprocess so that no library's idle thread pool spins
while another is timed. Threads: fastconv and pyFFTW use ``--threads`` (default 2, through
FASTCONV_NUM_THREADS), torch ``torch.set_num_threads(--threads)``; scipy's ``fftconvolve`` and
``ndimage`` are single-threaded by design (they take no thread count). Time = best over
``--repeat`` rounds of the mean of enough calls to fill ~0.2 s, after warm-up calls (numba
compilation, FFTW planning). Ratios are fastconv / peer: below 1, fastconv is faster.

Run it on a quiet machine::

    flock -x /work/cpu.lock env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE \\
        python benchmarks/compare_fft_separable.py
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

CASES = {
    # case: (fastconv timings, peers, target ratio against the first peer or None)
    "random31": (["fft", "fft_cold"], ["scipy_fftconvolve", "scipy_oaconvolve"], 0.5),
    "random101": (["fft", "fft_cold"], ["scipy_fftconvolve", "scipy_oaconvolve"], 0.5),
    "gaussian31": (["separable"], ["scipy_ndimage"], 0.02),
    "convnet_l2_9x9": (["fft", "fft_cold"], ["torch"], None),
    "rfft_even_odd": (["pyfftw_even"], ["pyfftw_odd"], None),
}

# shared/shapes.json's convnet_l2_9x9 layer (kept here so the script runs without the file)
CONVNET_L2 = {"N": 1, "C": 64, "H": 64, "W": 64, "K": 128, "R": 9, "S": 9}


def _gaussian(size, dtype):
    import numpy as np

    t = np.arange(size) - (size - 1) / 2
    g = np.exp(-t**2 / (2 * (size / 6) ** 2))
    return (np.outer(g, g) / np.outer(g, g).sum()).astype(dtype)


def make_call(case: str, library: str, threads: int):
    """A zero-argument callable doing one convolution of ``case`` with ``library``."""
    import numpy as np

    rng = np.random.default_rng(0)
    if case == "rfft_even_odd":
        import pyfftw

        width = 2080 if library == "pyfftw_even" else 2079
        source = pyfftw.empty_aligned((2080, width), np.float32)
        spectrum = pyfftw.empty_aligned((2080, width // 2 + 1), np.complex64)
        target = pyfftw.empty_aligned((2080, width), np.float32)
        source[...] = rng.standard_normal(source.shape)
        forward = pyfftw.FFTW(source, spectrum, axes=(0, 1), threads=threads, flags=("FFTW_ESTIMATE",))
        inverse = pyfftw.FFTW(spectrum, target, axes=(0, 1), direction="FFTW_BACKWARD", threads=threads,
                              flags=("FFTW_ESTIMATE", "FFTW_DESTROY_INPUT"))
        return lambda: (forward.execute(), inverse.execute())

    if case == "convnet_l2_9x9":
        c = CONVNET_L2
        x = rng.standard_normal((c["N"], c["C"], c["H"], c["W"])).astype(np.float32)
        w = rng.standard_normal((c["K"], c["C"], c["R"], c["S"])).astype(np.float32)
        if library == "torch":
            import torch

            torch.set_num_threads(threads)
            tx, tw = torch.from_numpy(x), torch.from_numpy(w)
            return lambda: torch.nn.functional.conv2d(tx, tw)
        return _fastconv_call(x, w, library, padding=0)

    x = rng.standard_normal((1, 1, 2048, 2048)).astype(np.float32)
    size = {"random31": 31, "random101": 101, "gaussian31": 31}[case]
    kernel = _gaussian(size, np.float32) if case == "gaussian31" else rng.standard_normal((size, size)).astype(np.float32)
    if library in ("scipy_fftconvolve", "scipy_oaconvolve"):
        from scipy import signal

        flipped = np.ascontiguousarray(kernel[::-1, ::-1])
        convolve = signal.fftconvolve if library == "scipy_fftconvolve" else signal.oaconvolve
        return lambda: convolve(x[0, 0], flipped, mode="same")
    if library == "scipy_ndimage":
        from scipy import ndimage

        return lambda: ndimage.correlate(x[0, 0], kernel, mode="constant")
    return _fastconv_call(x, kernel[None, None], library, padding="same")


def _fastconv_call(x, w, library, padding):
    import fastconv

    if library == "fft_cold":  # new values every call: the spectrum cache never hits
        weights = [w * (1 + 1e-3 * i) for i in range(4)]
        counter = iter(range(10**9))
        return lambda: fastconv.conv2d(x, weights[next(counter) % 4], padding=padding, backend="fft")
    return lambda: fastconv.conv2d(x, w, padding=padding, backend=library)


def median_call_time(call, repeat: int) -> float:
    for _ in range(2):
        call()
    start = time.perf_counter()
    call()
    once = time.perf_counter() - start
    number = max(1, int(0.2 / max(once, 1e-6)))
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(number):
            call()
        best = min(best, (time.perf_counter() - start) / number)
    return best


def worker(case: str, library: str, threads: int, repeat: int) -> None:
    print(json.dumps({"seconds": median_call_time(make_call(case, library, threads), repeat)}))


def measure(case: str, library: str, threads: int, repeat: int) -> float:
    env = dict(os.environ, FASTCONV_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads))
    root = Path(__file__).resolve().parents[1]
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
    result = subprocess.run([sys.executable, __file__, "--worker", case, library, "--threads", str(threads),
                             "--repeat", str(repeat)], env=env, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])["seconds"]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker", nargs=2, metavar=("CASE", "LIBRARY"), help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--cases", nargs="*", default=list(CASES), choices=list(CASES))
    args = parser.parse_args(argv)
    if args.worker:
        worker(*args.worker, args.threads, args.repeat)
        return
    print(f"threads={args.threads}, best of {args.repeat} rounds; ratio = fastconv / peer (< 1: fastconv faster)")
    print(f"{'case':<16} {'fastconv':<12} {'ms':>9} {'peer':<18} {'ms':>9} {'ratio':>7}  target")
    for case in args.cases:
        ours, peers, target = CASES[case]
        peer_seconds = {peer: measure(case, peer, args.threads, args.repeat) for peer in peers}
        for library in ours:
            seconds = measure(case, library, args.threads, args.repeat)
            for index, peer in enumerate(peers):
                ratio = seconds / peer_seconds[peer]
                verdict = "" if target is None or index else (f"<= {target} " + ("met" if ratio <= target else "MISSED"))
                print(f"{case:<16} {library:<12} {seconds * 1e3:9.2f} {peer:<18} {peer_seconds[peer] * 1e3:9.2f} "
                      f"{ratio:7.3f}  {verdict}", flush=True)


if __name__ == "__main__":
    main()
