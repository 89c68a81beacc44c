"""asv benchmarks of the ``fft`` and ``separable`` backends and their peers.

asv runs every benchmark in its own process, so each library is timed alone. Peers: scipy's
``fftconvolve`` and ``oaconvolve`` (kernel flipped: they convolve, we correlate),
``scipy.ndimage.correlate``, torch's ``conv2d`` and OpenCV's ``filter2D`` (random kernels) and
``sepFilter2D`` (Gaussians, handed their 1-D factors), zero border; a peer not installed is n/a. For ratios printed side by side, run
``benchmarks/compare/compare_fft_separable.py``.
"""

import numpy as np

try:
    import fastconv
except ImportError:  # asv imports benchmarks before the package is installed to discover them
    fastconv = None


def _image(side):
    return np.random.default_rng(0).standard_normal((1, 1, side, side)).astype(np.float32)


def _gaussian_1d(size):
    t = np.arange(size) - (size - 1) / 2
    g = np.exp(-t**2 / (2 * (size / 6) ** 2))
    return (g / g.sum()).astype(np.float32)


def _gaussian(size):
    return np.outer(_gaussian_1d(size), _gaussian_1d(size))


def _side(size):
    return int(size.split("x")[0])


def _opencv():
    """cv2 with fastconv's thread count, or NotImplementedError (asv: n/a) when it is not installed."""
    try:
        import cv2
    except ImportError:
        raise NotImplementedError("OpenCV (cv2) is not installed") from None
    cv2.setNumThreads(fastconv.config.threads)
    return cv2


class FFTImageFilter:
    """One large image, a random kernel, padding "same": FFT convolution's home ground."""

    params = [["1024x1024", "2048x2048"], [31, 101],
              ["fft", "fft_cold", "scipy_fftconvolve", "scipy_oaconvolve", "opencv"]]
    param_names = ["image", "kernel", "library"]

    def setup(self, image, kernel, library):
        self.x = _image(_side(image))
        self.w = np.random.default_rng(1).standard_normal((1, 1, kernel, kernel)).astype(np.float32)
        self.flipped = np.ascontiguousarray(self.w[0, 0, ::-1, ::-1])
        self.weights = [self.w * (1 + 1e-3 * i) for i in range(2)]  # fft_cold: new values every call
        self.calls = 0
        if library == "opencv":
            self.cv2 = _opencv()
        self.time_filter(image, kernel, library)  # plans, caches

    def time_filter(self, image, kernel, library):
        if library == "fft":
            fastconv.conv2d(self.x, self.w, padding="same", backend="fft")
        elif library == "fft_cold":
            self.calls += 1
            fastconv.conv2d(self.x, self.weights[self.calls % 2], padding="same", backend="fft")
        elif library == "opencv":  # odd kernels: the default anchor is the centre, as "same" puts it
            self.cv2.filter2D(self.x[0, 0], -1, self.w[0, 0], borderType=self.cv2.BORDER_CONSTANT)
        else:
            from scipy import signal

            convolve = signal.fftconvolve if library == "scipy_fftconvolve" else signal.oaconvolve
            convolve(self.x[0, 0], self.flipped, mode="same")


class SeparableImageFilter:
    """One large image, a Gaussian (rank-1) kernel, padding "same"."""

    params = [["1024x1024", "2048x2048"], [9, 31], ["separable", "fft", "scipy_ndimage", "opencv"]]
    param_names = ["image", "kernel", "library"]
    timeout = 120

    def setup(self, image, kernel, library):
        self.x = _image(_side(image))
        self.kernel = _gaussian(kernel)
        if library == "opencv":
            self.cv2, self.factor = _opencv(), _gaussian_1d(kernel)
        self.time_filter(image, kernel, library)  # numba compilation, plans

    def time_filter(self, image, kernel, library):
        if library == "scipy_ndimage":
            from scipy import ndimage

            ndimage.correlate(self.x[0, 0], self.kernel, mode="constant")
        elif library == "opencv":
            self.cv2.sepFilter2D(self.x[0, 0], -1, self.factor, self.factor, borderType=self.cv2.BORDER_CONSTANT)
        else:
            fastconv.conv2d(self.x, self.kernel[None, None], padding="same", backend=library)


class FFTConvLayer:
    """Multi-channel large-kernel CNN layers (canonical layers), ``fft`` against torch."""

    params = [["convnet_l1_11x11", "convnet_l2_9x9"], ["fft", "torch"]]
    param_names = ["layer", "library"]

    def setup(self, layer, library):
        from .common import canonical_layers, prepare

        self.call = prepare({case.name: case for case in canonical_layers()}[layer], library)

    def time_layer(self, layer, library):
        self.call()
