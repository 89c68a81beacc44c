"""asv benchmarks for the cuda backend against torch's CUDA convolution (cuDNN), on a real GPU.

Every case skips (NotImplementedError in setup) without a CUDA GPU — including under the CUDA
simulator, whose timings mean nothing. Operands live on the GPU before the clock starts, and each
timed call synchronises the device before it returns, since kernel launches are asynchronous.
Run on a GPU machine with ``asv run --bench Conv2dCuda`` or, without asv::

    python -c "from benchmarks.bench_cuda import Conv2dCuda as B; b = B(); b.setup('resnet50_3x3_56', 'float32', 'fastconv'); b.time_conv2d('resnet50_3x3_56', 'float32', 'fastconv')"
"""

import dataclasses

from fastconv.tools.cases import canonical_layers, make_inputs

_CANONICAL = {case.name: case for case in canonical_layers()}
# Canonical layers: dense 3x3, a wide 3x3, depthwise and 1x1.
LAYERS = {name: _CANONICAL[name]
          for name in ("resnet50_3x3_56", "vgg_conv5", "mobilenetv2_dw_56", "resnet50_1x1_expand")}


def _gpu_or_skip():
    from numba import config

    if config.ENABLE_CUDASIM:
        raise NotImplementedError("the CUDA simulator is on: GPU timings would be meaningless")
    from numba import cuda

    if not cuda.is_available():
        raise NotImplementedError("no CUDA GPU")
    return cuda


class Conv2dCuda:
    """conv2d on operands already on the GPU: fastconv's kernels vs torch (cuDNN)."""

    params = [list(LAYERS), ["float32", "float64"], ["fastconv", "torch"]]
    param_names = ["layer", "dtype", "library"]
    timeout = 120

    def setup(self, layer, dtype, library):
        cuda = _gpu_or_skip()
        case = dataclasses.replace(LAYERS[layer], dtype=dtype)
        x, weight = make_inputs(case)
        geometry = case.conv_kwargs()
        if library == "fastconv":
            import fastconv

            d_x, d_w = cuda.to_device(x), cuda.to_device(weight)
            self.call = lambda: fastconv.conv2d(d_x, d_w, backend="cuda", **geometry)
            self.synchronize = cuda.synchronize
        else:
            try:
                import torch
            except ImportError:
                raise NotImplementedError("torch is not installed") from None
            if not torch.cuda.is_available():
                raise NotImplementedError("torch has no CUDA support here")
            t_x, t_w = torch.from_numpy(x).cuda(), torch.from_numpy(weight).cuda()
            self.call = lambda: torch.nn.functional.conv2d(t_x, t_w, **geometry)
            self.synchronize = torch.cuda.synchronize
        self.call()  # JIT compilation / cuDNN algorithm choice, outside the timing
        self.synchronize()

    def time_conv2d(self, layer, dtype, library):
        self.call()
        self.synchronize()
