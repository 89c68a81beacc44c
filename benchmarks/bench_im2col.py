"""asv benchmarks of im2col's bounded workspace: time and peak memory on an input whose full
column matrix would be 1.27 GB.

The layer: a 1×64×256×256 float32 input (16 MiB), 64 filters of 9×9 (valid padding), output
1×64×248×248 (15 MiB). Untiled im2col would allocate 64·81 × 248·248 floats = 1.27 GB; tiled, the
column buffer stays within the workspace limit. asv's ``peakmem_`` reports the process's peak RSS,
which also holds the interpreter, numpy/numba/OpenBLAS and the benchmark's arrays.

``benchmarks/compare/im2col_workspace.py`` measures it directly: the peak RSS of one call in a fresh
process per limit, against the baseline taken just before the call.
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

