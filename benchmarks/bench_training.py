"""Training: the forward pass and conv2d's two backward passes (gradient with respect to the input,
and to the weight) on the canonical layers, each fastconv backend that runs the pass and torch's
autograd (``torch.autograd.grad`` of a recorded forward call, on the CPU) as the peer."""

from fastconv.tools import bench
from fastconv.tools.cases import PASSES, pass_cases

from .common import canonical_layers, gflops, prepare

LAYERS = {case.name: case for case in canonical_layers()}
BACKENDS = list(dict.fromkeys([*bench.op_backends("conv2d_input"), *bench.op_backends("conv2d"), "torch"]))


class Conv2dTraining:
    """Time and achieved GFLOP/s (the forward's direct-convolution flops, which each pass repeats)."""

    params = [BACKENDS, list(PASSES), list(LAYERS)]
    param_names = ["backend", "pass", "layer"]

    def setup(self, backend, pass_, layer):
        self.case = pass_cases([LAYERS[layer]], pass_)[0]
        if backend != "torch" and backend not in bench.op_backends(self.case.op):
            raise NotImplementedError(f"{backend} does not run {self.case.op}")
        self.call = prepare(self.case, backend)

    def time_pass(self, backend, pass_, layer):
        self.call()

    def track_gflops(self, backend, pass_, layer):
        return gflops(self.case, self.call)

    track_gflops.unit = "GFLOP/s"
