"""conv_transpose2d across its own backends (naive, col2im) and torch, on the canonical transposed
layers (DCGAN), a U-Net up-convolution and an autoencoder decoder layer.
"""

from fastconv.tools import bench

from .common import gflops, prepare, suite_cases

LAYERS = {case.name: case for case in suite_cases("transposed")}


class ConvTranspose2dLayers:
    params = [[*bench.op_backends("conv_transpose2d"), *bench.PEERS], list(LAYERS)]
    param_names = ["backend", "layer"]

    def setup(self, backend, layer):
        self.case = LAYERS[layer]
        self.call = prepare(self.case, backend)

    def time_conv_transpose2d(self, backend, layer):
        self.call()

    def track_gflops(self, backend, layer):
        return gflops(self.case, self.call)

    track_gflops.unit = "GFLOP/s"
