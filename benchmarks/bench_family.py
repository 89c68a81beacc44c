"""asv benchmarks for the convolution family: transposed convolution, pooling, scipy-style
convolve2d, local and tiled convolution (float32 unless said otherwise, data from a fixed seed).

Comparisons with torch, each library in its own process, are in ``compare_family.py``.
"""

import numpy as np

import fastconv

# name: (N, C, H, W, K, k, stride, padding, output_padding); the DCGAN layer is shapes.json's
TRANSPOSED_LAYERS = {
    "dcgan_4x4_s2_4x512x4x4": (4, 512, 4, 4, 256, 4, 2, 1, 0),
    "unet_2x2_s2_1x256x32x32": (1, 256, 32, 32, 128, 2, 2, 0, 0),
    "autoenc_3x3_s2_1x64x56x56": (1, 64, 56, 56, 32, 3, 2, 1, 1),
}


def _rng():
    return np.random.default_rng(0)


class ConvTranspose2d:
    params = [list(TRANSPOSED_LAYERS), ["col2im", "naive"]]
    param_names = ["layer", "backend"]
    timeout = 120

    def setup(self, layer, backend):
        n, c, h, w, k, size, stride, padding, output_padding = TRANSPOSED_LAYERS[layer]
        if backend == "naive" and layer != "dcgan_4x4_s2_4x512x4x4":
            raise NotImplementedError("naive loops only on the smallest layer")
        rng = _rng()
        self.x = rng.standard_normal((n, c, h, w), dtype=np.float32)
        self.weight = rng.standard_normal((c, k, size, size), dtype=np.float32)
        self.kwargs = dict(stride=stride, padding=padding, output_padding=output_padding, backend=backend)
        fastconv.conv_transpose2d(self.x, self.weight, **self.kwargs)  # JIT warm-up

    def time_conv_transpose2d(self, layer, backend):
        fastconv.conv_transpose2d(self.x, self.weight, **self.kwargs)


class Pool2d:
    params = [["max", "avg"], ["1x64x112x112", "8x64x56x56"], [(3, 2, 1), (2, 2, 0)]]
    param_names = ["kind", "size", "kernel_stride_padding"]

    def setup(self, kind, size, kernel_stride_padding):
        self.x = _rng().standard_normal(tuple(int(s) for s in size.split("x")), dtype=np.float32)
        self.pool = fastconv.max_pool2d if kind == "max" else fastconv.avg_pool2d
        self.args = kernel_stride_padding
        self.pool(self.x, *self.args)

    def time_pool2d(self, kind, size, kernel_stride_padding):
        self.pool(self.x, *self.args)


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
