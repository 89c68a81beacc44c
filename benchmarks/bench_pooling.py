"""max_pool2d and avg_pool2d against torch: 64 channels, non-overlapping 2x2 windows and the
overlapping 3x3 stride-2 window of ResNet's stem (padding 1)."""

import importlib.util

import numpy as np

import fastconv

from .common import size


class Pool2d:
    params = [["fastconv", "torch"], ["max_pool2d", "avg_pool2d"], ["56x56", "112x112"], ["2x2/s2", "3x3/s2/p1"]]
    param_names = ["library", "function", "image", "window"]

    def setup(self, library, function, image, window):
        x = np.random.default_rng(0).standard_normal((1, 64, *size(image))).astype(np.float32)
        window, stride, padding = (window.split("/") + ["p0"])[:3]
        window, stride, padding = size(window), int(stride[1:]), int(padding[1:])
        if library == "torch":
            if importlib.util.find_spec("torch") is None:
                raise NotImplementedError("torch is not installed")
            import torch

            torch.set_num_threads(fastconv.config.threads)
            pool, x = getattr(torch.nn.functional, function), torch.from_numpy(x)
        else:
            pool = getattr(fastconv, function, None)
            if pool is None:
                raise NotImplementedError(f"fastconv.{function} is not in this version of fastconv")
        self.call = lambda: pool(x, window, stride, padding)
        self.call()  # JIT compilation happens here, not in the timing

    def time_pool(self, library, function, image, window):
        self.call()
