"""asv benchmarks for the convolution family: scipy-style convolve2d, local and tiled convolution,
depthwise-separable blocks (float32 unless said otherwise, data from a fixed seed). Transposed
convolution and pooling, with torch as a baseline, are in ``bench_conv_transpose2d.py`` and
``bench_pooling.py``.

Comparisons with torch, each library in its own process, are in
``benchmarks/compare/compare_family.py``.
"""

import numpy as np

import fastconv


def _rng():
    return np.random.default_rng(0)


class Convolve2d:
    params = [["256x256", "1024x1024"], [3, 9], ["full", "same", "valid"], ["fill", "wrap", "symm"]]
    param_names = ["image", "kernel", "mode", "boundary"]
    timeout = 120

    def setup(self, image, kernel, mode, boundary):
        side = int(image.split("x")[0])
        rng = _rng()
        self.image = rng.standard_normal((side, side))
        self.kernel = rng.standard_normal((kernel, kernel))
        self.kwargs = dict(mode=mode, boundary=boundary)
        fastconv.convolve2d(self.image[:8, :8], self.kernel, **self.kwargs)

    def time_convolve2d(self, image, kernel, mode, boundary):
        fastconv.convolve2d(self.image, self.kernel, **self.kwargs)


class LocalConv2d:
    params = [[1, 2, 4, "local"]]
    param_names = ["tile"]

    def setup(self, tile):
        rng = _rng()
        self.x = rng.standard_normal((4, 16, 16, 16), dtype=np.float32)
        out = 14  # 3x3 valid
        t = out if tile == "local" else tile
        self.weight = rng.standard_normal((t, t, 32, 16, 3, 3), dtype=np.float32)
        self.function = fastconv.local_conv2d if tile == "local" else fastconv.tiled_conv2d
        self.function(self.x, self.weight)

    def time_local_or_tiled(self, tile):
        self.function(self.x, self.weight)


class DepthwiseSeparable:
    params = [["1x32x112x112", "1x144x56x56"]]
    param_names = ["size"]

    def setup(self, size):
        n, c, h, w = (int(s) for s in size.split("x"))
        rng = _rng()
        self.x = rng.standard_normal((n, c, h, w), dtype=np.float32)
        self.depthwise = rng.standard_normal((c, 1, 3, 3), dtype=np.float32)
        self.pointwise = rng.standard_normal((2 * c, c, 1, 1), dtype=np.float32)
        fastconv.depthwise_separable_conv2d(self.x, self.depthwise, self.pointwise, padding=1)

    def time_depthwise_separable(self, size):
        fastconv.depthwise_separable_conv2d(self.x, self.depthwise, self.pointwise, padding=1)
