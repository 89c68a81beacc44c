"""conv2d across backends: image and kernel size, stride, dilation, groups, dtype, the canonical CNN
layers, the FFT-versus-direct crossover, separable versus full kernels, and the time per call of a
problem so small that it is all overhead."""

from fastconv.tools.bench import AUTO
from fastconv.tools.cases import call_overhead_case

from .common import BACKENDS, Case, canonical_layers, gflops, image_filter, prepare, size

LAYERS = {case.name: case for case in canonical_layers()}


class Conv2dImageKernel:
    """An 8-channel image, 8 filters, padding 'same': how time grows with image and kernel size."""

    params = [BACKENDS, ["64x64", "256x256"], ["3x3", "7x7", "15x15"], ["float32", "float64"]]
    param_names = ["backend", "image", "kernel", "dtype"]

    def setup(self, backend, image, kernel, dtype):
        case = Case(f"{image} {kernel}", (1, 8, *size(image)), (8, 8, *size(kernel)), padding="same", dtype=dtype)
        self.call = prepare(case, backend)

    def time_conv2d(self, backend, image, kernel, dtype):
        self.call()


class Conv2dCallOverhead:
    """A 1x1x8x8 input and a 3x3 kernel: the time of one call is what a loop over tiny problems
    pays in validation, the choice of backend and dispatch. ``auto`` is conv2d(backend="auto")."""

    params = [[AUTO, *BACKENDS]]
    param_names = ["backend"]

    def setup(self, backend):
        self.call = prepare(call_overhead_case(), backend)

    def time_conv2d(self, backend):
        self.call()


class Conv2dStrideDilation:
    """A 32-channel 3x3 layer on 64x64 with stride 1, 2, 4 and dilation 1, 2 (padding 'same')."""

    params = [BACKENDS, [1, 2, 4], [1, 2]]
    param_names = ["backend", "stride", "dilation"]

    def setup(self, backend, stride, dilation):
        case = Case("strided", (1, 32, 64, 64), (32, 32, 3, 3), stride=stride, dilation=dilation, padding="same")
        self.call = prepare(case, backend)

    def time_conv2d(self, backend, stride, dilation):
        self.call()


class Conv2dGroups:
    """64 channels at 56x56, 3x3: dense, grouped (ResNeXt-like) and depthwise (MobileNet-like)."""

    params = [BACKENDS, ["1", "4", "depthwise"]]
    param_names = ["backend", "groups"]

    def setup(self, backend, groups):
        count = 64 if groups == "depthwise" else int(groups)
        case = Case("grouped", (1, 64, 56, 56), (64, 64 // count, 3, 3), padding=1, groups=count)
        self.call = prepare(case, backend)

    def time_conv2d(self, backend, groups):
        self.call()


class Conv2dLayers:
    """The canonical layers of ResNet-50, VGG, MobileNetV2, DeepLabV3, DeepSpeech and large-kernel
    convnets (batch 1): time and achieved GFLOP/s."""

    params = [BACKENDS, list(LAYERS)]
    param_names = ["backend", "layer"]

    def setup(self, backend, layer):
        self.case = LAYERS[layer]
        self.call = prepare(self.case, backend)

    def time_conv2d(self, backend, layer):
        self.call()

    def track_gflops(self, backend, layer):
        return gflops(self.case, self.call)

    track_gflops.unit = "GFLOP/s"


class Conv2dPeakMemory:
    """Peak memory of the process on the layers whose lowering workspace is largest (im2col's
    column matrix grows with C * kh * kw * output pixels)."""

    params = [BACKENDS, ["resnet50_conv1", "vgg_conv2", "deeplabv3_aspp_d12", "convnet_l2_9x9"]]
    param_names = ["backend", "layer"]

    def setup(self, backend, layer):
        self.call = prepare(LAYERS[layer], backend)

    def peakmem_conv2d(self, backend, layer):
        self.call()


class FFTCrossover:
    """Single-channel filtering with a random kernel: where FFT overtakes direct convolution."""

    params = [BACKENDS, ["128x128", "512x512", "1024x1024"], ["3x3", "9x9", "31x31", "63x63"]]
    param_names = ["backend", "image", "kernel"]

    def setup(self, backend, image, kernel):
        self.call = prepare(image_filter(size(image)[0], size(kernel)[0]), backend)

    def time_conv2d(self, backend, image, kernel):
        self.call()


class SeparableVsFull:
    """A 512x512 image with a rank-1 Gaussian kernel or a full-rank random one of the same size."""

    params = [BACKENDS, ["gaussian", "random"], ["5x5", "15x15", "31x31"]]
    param_names = ["backend", "kernel", "kernel_size"]

    def setup(self, backend, kernel, kernel_size):
        self.call = prepare(image_filter(512, size(kernel_size)[0], kernel), backend)

    def time_conv2d(self, backend, kernel, kernel_size):
        self.call()


class ColourImageFilter:
    """A 3-channel float32 image, every channel filtered with one kernel, padding "same": to fastconv a
    batch of three single-channel images, to OpenCV one H×W×3 image (one call filters all channels)."""

    params = [BACKENDS, ["512x512", "2048x2048"], ["random 5", "gaussian 31"]]
    param_names = ["backend", "image", "kernel"]

    def setup(self, backend, image, kernel):
        kind, side = kernel.split()
        self.call = prepare(image_filter(size(image)[0], int(side), kind, planes=3), backend)

    def time_conv2d(self, backend, image, kernel):
        self.call()
