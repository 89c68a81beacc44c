"""asv benchmarks of the ``winograd`` backend on CNN 3×3 layers (the canonical layers fastconv ships).

``Winograd3x3`` times ``fastconv.conv2d`` per layer and backend (winograd against the other
fastconv backends that can run the layer); ``WinogradTiles`` times F(2×2) against F(4×4) on the
same layer and dtype. For the comparison with torch, which must run in its own process, see
``benchmarks/compare/compare_winograd.py``.
"""

import dataclasses

from fastconv.backends import winograd

from .common import canonical_layers, make_inputs, prepare

_CANONICAL = {case.name: case for case in canonical_layers()}
_CANONICAL["resnet50_3x3_56_batch8"] = dataclasses.replace(
    _CANONICAL["resnet50_3x3_56"], name="resnet50_3x3_56_batch8", input_shape=(8, 64, 56, 56))
LAYERS = {name: _CANONICAL[name] for name in ("resnet50_3x3_56", "resnet50_3x3_56_batch8", "vgg_conv2", "vgg_conv5",
                                              "deeplabv3_aspp_d12")}


class Winograd3x3:
    params = [list(LAYERS), ["winograd", "im2col", "numba_cpu", "fft"]]
    param_names = ["layer", "backend"]

    def setup(self, layer, backend):
        self.call = prepare(LAYERS[layer], backend)  # JIT compiled, plans and caches made

    def time_conv2d(self, layer, backend):
        self.call()


class WinogradTiles:
    params = [["resnet50_3x3_56", "vgg_conv5"], ["2x2", "4x4"], ["float32", "float64"]]
    param_names = ["layer", "tile", "dtype"]

    def setup(self, layer, tile, dtype):
        case = dataclasses.replace(LAYERS[layer], dtype=dtype)
        self.x, self.w = make_inputs(case)
        self.spec = case.spec()
        self.tile = int(tile[0])
        winograd.run(self.x, self.w, None, self.spec, tile=self.tile)

    def time_run(self, layer, tile, dtype):
        winograd.run(self.x, self.w, None, self.spec, tile=self.tile)
