"""asv benchmarks of the ``winograd`` backend on CNN 3×3 layers (shapes from shared/shapes.json).

``Winograd3x3`` times ``fastconv.conv2d`` per layer and backend (winograd against the other
fastconv backends that can run the layer); ``WinogradTiles`` times F(2×2) against F(4×4) on the
same layer and dtype. For the comparison with torch, which must run in its own process, see
``benchmarks/compare_winograd.py``.
"""

import numpy as np

import fastconv
from fastconv.backends import winograd
from fastconv.geometry import make_spec

# name: (input NCHW, output channels, padding = dilation)
LAYERS = {
    "resnet50_3x3_56": ((1, 64, 56, 56), 64, 1),
    "resnet50_3x3_56_batch8": ((8, 64, 56, 56), 64, 1),
    "vgg_conv2": ((1, 64, 112, 112), 128, 1),
    "vgg_conv5": ((1, 512, 14, 14), 512, 1),
    "deeplabv3_aspp_d12": ((1, 256, 65, 65), 256, 12),
}


def _layer(name, dtype):
    x_shape, out_channels, dilation = LAYERS[name]
    rng = np.random.default_rng(0)
    x = rng.standard_normal(x_shape).astype(dtype)
    w = rng.standard_normal((out_channels, x_shape[1], 3, 3)).astype(dtype)
    return x, w, dict(padding=dilation, dilation=dilation)


class Winograd3x3:
    params = [list(LAYERS), ["winograd", "im2col", "numba_cpu", "fft"]]
    param_names = ["layer", "backend"]

    def setup(self, layer, backend):
        names = [row.name for row in fastconv.list_backends() if row.available]
        if backend not in names:
            raise NotImplementedError(f"backend {backend} not registered or not available here")
        self.x, self.w, self.kwargs = _layer(layer, np.float32)
        spec = make_spec(self.x.shape, self.w.shape, dtype=np.float32, **self.kwargs)
        if fastconv.backends.get(backend).supports(spec) is not None:
            raise NotImplementedError(f"{backend} declines {layer}")
        self.backend = backend
        fastconv.conv2d(self.x, self.w, backend=backend, **self.kwargs)  # JIT compile, plans, caches

    def time_conv2d(self, layer, backend):
        fastconv.conv2d(self.x, self.w, backend=self.backend, **self.kwargs)


class WinogradTiles:
    params = [["resnet50_3x3_56", "vgg_conv5"], ["2x2", "4x4"], ["float32", "float64"]]
    param_names = ["layer", "tile", "dtype"]

    def setup(self, layer, tile, dtype):
        self.x, self.w, kwargs = _layer(layer, np.dtype(dtype))
        self.spec = make_spec(self.x.shape, self.w.shape, dtype=np.dtype(dtype), **kwargs)
        self.tile = int(tile[0])
        winograd.run(self.x, self.w, None, self.spec, tile=self.tile)

    def time_run(self, layer, tile, dtype):
        winograd.run(self.x, self.w, None, self.spec, tile=self.tile)
