"""max_pool2d and avg_pool2d against torch: 64 channels, non-overlapping windows (stride = window).

Until ``fastconv.max_pool2d``/``avg_pool2d`` exist the fastconv rows are n/a (setup raises
NotImplementedError).
"""

import importlib.util

import numpy as np

import fastconv

from .common import size


class Pool2d:
    params = [["fastconv", "torch"], ["max_pool2d", "avg_pool2d"], ["56x56", "112x112"], ["2x2", "3x3"]]
    param_names = ["library", "function", "image", "window"]

    def setup(self, library, function, image, window):
        x = np.random.default_rng(0).standard_normal((1, 64, *size(image))).astype(np.float32)
        window = size(window)
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
        self.call = lambda: pool(x, window, window)
        self.call()  # JIT compilation happens here, not in the timing

    def time_pool(self, library, function, image, window):
        self.call()
