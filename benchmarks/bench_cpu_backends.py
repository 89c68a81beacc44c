"""asv benchmarks of the CPU backends ``im2col`` and ``numba_cpu`` on network layers and image filters.

Layers come from the shared ``shapes.json`` (plus the grouped and batched layers that
``compare_cpu.py`` adds); data are float32 from a fixed seed. For the comparison with torch and
scipy, each library in its own process, run ``benchmarks/compare_cpu.py``.
"""

import numpy as np

import fastconv

from .compare_cpu import case_arrays, load_cases

BACKENDS = ["im2col", "numba_cpu"]


def _cases(kind):
    return {case["name"]: case for case in load_cases() if case["kind"] == kind}


class _LayerBenchmark:
    kind = ""
    param_names = ["layer", "backend"]
    timeout = 300

    def setup(self, layer, backend):
        case = _cases(self.kind)[layer]
        self.x, self.weight, self.bias = case_arrays(case)
        self.kwargs = dict(stride=case["stride"], padding=case["pad"], dilation=case["dilation"],
                           groups=case["groups"], backend=backend)
        fastconv.conv2d(self.x, self.weight, self.bias, **self.kwargs)  # JIT warm-up

    def time_conv2d(self, layer, backend):
        fastconv.conv2d(self.x, self.weight, self.bias, **self.kwargs)


class CnnLayers(_LayerBenchmark):
    """ResNet/VGG-style layers: 3×3, 1×1, 7×7 stride 2, dilated, grouped, batched."""

    kind = "cnn"
    params = [sorted(_cases("cnn")), BACKENDS]


class DepthwiseLayers(_LayerBenchmark):
    """MobileNetV2 depthwise layers (groups == channels)."""

    kind = "depthwise"
    params = [sorted(_cases("depthwise")), BACKENDS]


class ImageFilter:
    """A single-channel float32 image filtered with a k×k kernel, padding "same"."""

    params = [["256x256", "2048x2048"], [3, 5, 7, 9], BACKENDS]
    param_names = ["size", "kernel", "backend"]

    def setup(self, size, kernel, backend):
        height, width = (int(side) for side in size.split("x"))
        rng = np.random.default_rng(0)
        self.image = rng.standard_normal((1, 1, height, width), dtype=np.float32)
        self.weight = rng.standard_normal((1, 1, kernel, kernel), dtype=np.float32)
        self.backend = backend
        self.time_conv2d(size, kernel, backend)  # JIT warm-up

    def time_conv2d(self, size, kernel, backend):
        fastconv.conv2d(self.image, self.weight, padding="same", backend=self.backend)
