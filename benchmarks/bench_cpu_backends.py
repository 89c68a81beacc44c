"""asv benchmarks of the CPU backends ``im2col`` and ``numba_cpu`` on network layers and image filters.

Layers are the canonical conv2d layers fastconv ships (``canonical_layers``) plus a ResNeXt grouped
layer and a batched ResNet layer, as ``benchmarks/compare/compare_cpu.py`` times them; data are
float32 from a fixed seed. For the comparison with torch and scipy, each library in its own
process, run that script.
"""

from .common import Case, canonical_layers, image_filter, prepare, size

BACKENDS = ["im2col", "numba_cpu"]

# The canonical set has no grouped (non-depthwise) or batched layer.
EXTRA_LAYERS = [
    Case("resnext50_3x3_g32", (1, 128, 56, 56), (128, 4, 3, 3), padding=1, groups=32),
    Case("resnet50_3x3_28_batch8", (8, 128, 28, 28), (128, 128, 3, 3), padding=1),
]


def _is_depthwise(case):
    return case.groups == case.input_shape[1] and case.groups > 1


LAYERS = {case.name: case for case in canonical_layers() + EXTRA_LAYERS}
CNN = sorted(name for name, case in LAYERS.items() if not _is_depthwise(case))
DEPTHWISE = sorted(name for name, case in LAYERS.items() if _is_depthwise(case))


class _LayerBenchmark:
    param_names = ["layer", "backend"]
    timeout = 300

    def setup(self, layer, backend):
        self.call = prepare(LAYERS[layer], backend)  # warmed up: JIT compiled

    def time_conv2d(self, layer, backend):
        self.call()


class CnnLayers(_LayerBenchmark):
    """ResNet/VGG-style layers: 3×3, 1×1, 7×7 stride 2, dilated, grouped, batched."""

    params = [CNN, BACKENDS]


class DepthwiseLayers(_LayerBenchmark):
    """MobileNetV2 depthwise layers (groups == channels)."""

    params = [DEPTHWISE, BACKENDS]


class ImageFilter:
    """A single-channel float32 image filtered with a k×k kernel, padding "same" (OpenCV's
    ``filter2D`` beside the backends)."""

    params = [["256x256", "2048x2048"], [3, 5, 7, 9], [*BACKENDS, "opencv"]]
    param_names = ["size", "kernel", "backend"]

    def setup(self, image, kernel, backend):
        self.call = prepare(image_filter(size(image)[0], kernel), backend)

    def time_conv2d(self, image, kernel, backend):
        self.call()

