"""conv_transpose2d across backends on the canonical transposed layers (DCGAN) and a 2x upsampling.

Until ``fastconv.conv_transpose2d`` exists every fastconv row is n/a (setup raises
NotImplementedError) and only torch is timed.
"""

from .common import BACKENDS, gflops, prepare, suite_cases

LAYERS = {case.name: case for case in suite_cases("transposed")}


class ConvTranspose2dLayers:
    params = [BACKENDS, list(LAYERS)]
    param_names = ["backend", "layer"]

    def setup(self, backend, layer):
        self.case = LAYERS[layer]
        self.call = prepare(self.case, backend)

    def time_conv_transpose2d(self, backend, layer):
        self.call()

    def track_gflops(self, backend, layer):
        return gflops(self.case, self.call)

    track_gflops.unit = "GFLOP/s"
