"""fastconv.dask: the cost of blocking an in-memory image, and the memory of a disk-to-disk run.

A float32 single-channel image and a 7x7 kernel, ``padding="same"``. ``DaskConv2d`` times the
in-memory call next to the dask call on the same image cut into 1, 4 and 16 square chunks and 4
strips of full rows, the last also stored into a preallocated array instead of joined by
``.compute()`` (the ratio is the overhead of reading halos and joining blocks). ``DaskStoreNpy`` measures peak
memory of a convolution streamed from one ``.npy`` file into another in strips (see
``benchmarks/compare/dask_scale.py`` for the 4 GiB version).
"""

import os
import tempfile

import numpy as np

import fastconv
from fastconv import backends


try:
    import dask.array as da

    import fastconv.dask
except ImportError:  # the dask extra is not installed: every benchmark here is n/a
    da = None

BACKENDS = ["auto", *backends.backend_names()]
KERNEL = np.random.default_rng(7).standard_normal((7, 7)).astype(np.float32)


def _size(text):
    height, width = text.split("x")
    return int(height), int(width)


def _image(shape):
    return np.random.default_rng(0).standard_normal(shape, dtype=np.float32)


def _check(backend):
    if da is None:
        raise NotImplementedError("dask is not installed (pip install fastconv[dask])")
    if backend != "auto" and backends.unavailable_reason(backend) is not None:
        raise NotImplementedError(f"backend {backend} unavailable: {backends.unavailable_reason(backend)}")


class DaskConv2d:
    """In-memory fastconv.conv2d against fastconv.dask.conv2d on 1, 4, 16 chunks and 4 strips (threads)."""

    params = [BACKENDS, ["1024x1024", "4096x4096"],
              ["in-memory", "1 chunk", "4 chunks", "16 chunks", "4 strips", "4 strips, store"]]
    param_names = ["backend", "image", "layout"]

    def setup(self, backend, image, layout):
        _check(backend)
        x = _image(_size(image))
        if layout == "in-memory":
            x4, w4 = x[None, None], KERNEL[None, None]
            self.call = lambda: fastconv.conv2d(x4, w4, padding="same", backend=backend)
            return
        if layout.startswith("4 strips"):  # strips of full rows: halos lie beside each strip in memory
            chunks = (-(-x.shape[0] // 4), x.shape[1])
        else:
            per_side = {"1 chunk": 1, "4 chunks": 2, "16 chunks": 4}[layout]
            chunks = tuple(-(-s // per_side) for s in x.shape)
        y = fastconv.dask.conv2d(da.from_array(x, chunks=chunks), KERNEL, padding="same", backend=backend)
        if layout.endswith("store"):  # into a preallocated array: no final join of the blocks
            target = np.empty_like(x)
            self.call = lambda: da.store(y, target, lock=False, scheduler="threads")
        else:
            self.call = lambda: y.compute(scheduler="threads")
        self.call()  # JIT compilation, FFT plans

    def time_conv2d(self, backend, image, layout):
        self.call()


class DaskStoreNpy:
    """Peak memory of a 8192x8192 float32 image (256 MiB) convolved from one .npy file into another,
    in strips of 256 rows, against the 256 MiB that the image alone would take in memory."""

    params = [["auto"]]
    param_names = ["backend"]
    timeout = 300

    def setup(self, backend):
        _check(backend)
        self.directory = tempfile.TemporaryDirectory()
        self.source = os.path.join(self.directory.name, "image.npy")
        self.target = os.path.join(self.directory.name, "result.npy")
        image = fastconv.dask.NpyBlocks.create(self.source, (8192, 8192), np.float32)
        for top in range(0, 8192, 1024):
            image[top:top + 1024] = _image((1024, 8192))
        fastconv.conv2d(np.ones((1, 1, 16, 16), np.float32), KERNEL[None, None], backend=backend)

    def teardown(self, backend):
        self.directory.cleanup()

    def peakmem_store(self, backend):
        # one short-lived memory map per block: whole-file maps would count every touched page
        source = fastconv.dask.NpyBlocks(self.source)
        target = fastconv.dask.NpyBlocks.create(self.target, source.shape, np.float32)
        x = da.from_array(source, chunks=(256, -1), asarray=False, lock=False)
        da.store(fastconv.dask.conv2d(x, KERNEL, padding="same", backend=backend), target, lock=False)
