"""asv benchmarks of im2col's bounded workspace: time and peak memory on an input whose full
column matrix would be 1.27 GB.

The layer: a 1×64×256×256 float32 input (16 MiB), 64 filters of 9×9 (valid padding), output
1×64×248×248 (15 MiB). Untiled im2col would allocate 64·81 × 248·248 floats = 1.27 GB; tiled, the
column buffer stays within the workspace limit. asv's ``peakmem_`` reports the process's peak RSS,
which also holds the interpreter, numpy/numba/OpenBLAS and the benchmark's arrays.

Run as a script to measure it directly (peak RSS from ``resource.getrusage`` in a fresh
subprocess per limit, against the baseline taken just before the call)::

    python benchmarks/bench_im2col.py
"""

import numpy as np

import fastconv
from fastconv.backends import im2col
from fastconv.geometry import make_spec

INPUT_SHAPE = (1, 64, 256, 256)
WEIGHT_SHAPE = (64, 64, 9, 9)


def _arrays():
    rng = np.random.default_rng(0)
    return (rng.standard_normal(INPUT_SHAPE, dtype=np.float32),
            rng.standard_normal(WEIGHT_SHAPE, dtype=np.float32))


class Im2colWorkspace:
    """im2col under several workspace limits on a layer whose column matrix is over 1 GiB."""

    params = [["16MiB", "64MiB", "256MiB"]]
    param_names = ["workspace"]
    timeout = 300

    def setup(self, workspace):
        spec = make_spec(INPUT_SHAPE, WEIGHT_SHAPE, dtype=np.float32)
        assert im2col.column_bytes(spec) > 2**30
        self.x, self.weight = _arrays()
        self.saved = fastconv.config.workspace_bytes
        fastconv.config.set_workspace_bytes(int(workspace[:-3]) << 20)
        fastconv.conv2d(self.x[:, :, :16, :16], self.weight, backend="im2col")  # JIT warm-up

    def teardown(self, workspace):
        fastconv.config.set_workspace_bytes(self.saved)

    def time_conv2d(self, workspace):
        fastconv.conv2d(self.x, self.weight, backend="im2col")

    def peakmem_conv2d(self, workspace):
        fastconv.conv2d(self.x, self.weight, backend="im2col")


_MEASURE = """
import resource, sys, time
import numpy as np
import fastconv
sys.path.insert(0, {bench_dir!r})
from bench_im2col import _arrays
x, weight = _arrays()
fastconv.conv2d(x[:, :, :16, :16], weight, backend="im2col")  # compile, start BLAS threads
np.ones((512, 512), np.float32) @ np.ones((512, 512), np.float32)
baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
start = time.perf_counter()
out = fastconv.conv2d(x, weight, backend="im2col")
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(baseline, peak, out.nbytes, x.nbytes, seconds)
"""


def measure_peak_rss(limits_mib=(16, 64, 256)):
    """Print, per workspace limit, the peak RSS a fresh process reaches during one call."""
    import os
    import subprocess
    import sys

    spec = make_spec(INPUT_SHAPE, WEIGHT_SHAPE, dtype=np.float32)
    print(f"input {INPUT_SHAPE} float32, weight {WEIGHT_SHAPE}; untiled column matrix "
          f"{im2col.column_bytes(spec) / 2**30:.2f} GiB")
    print(f"{'limit MiB':>9s} {'baseline MiB':>12s} {'peak MiB':>9s} {'growth MiB':>10s} "
          f"{'limit+output MiB':>16s} {'seconds':>8s}")
    code = _MEASURE.format(bench_dir=os.path.dirname(os.path.abspath(__file__)))
    for limit in limits_mib:
        env = dict(os.environ, FASTCONV_WORKSPACE_MB=str(limit))
        done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        baseline, peak, out_bytes, in_bytes, seconds = (float(v) for v in done.stdout.split())
        mib = 2**20
        print(f"{limit:9d} {baseline / mib:12.1f} {peak / mib:9.1f} {(peak - baseline) / mib:10.1f} "
              f"{limit + out_bytes / mib:16.1f} {seconds:8.2f}")
    print("baseline = peak RSS before the call: interpreter, numpy, numba, OpenBLAS buffers, the compiled "
          "kernels and the input and weight arrays")


if __name__ == "__main__":
    measure_peak_rss()
