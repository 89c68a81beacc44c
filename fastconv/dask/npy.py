"""``.npy`` files read and written one block at a time: out-of-core input and output for fastconv.dask."""

from __future__ import annotations

import math
import os

import numpy as np

__all__ = ["NpyBlocks"]

_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGIC = b"PK\x03\x04"  # .npz archives are zip files


def _npy_header(path: str) -> tuple[tuple, np.dtype]:
    """Shape and dtype of the ``.npy`` file at ``path``; ValueError, naming it and why, unless it is valid.

    Read from the header alone, then checked against the file's size, so that a damaged file
    fails here with a message rather than in a worker ("mmap length is greater than file size",
    "contains pickled (object) data", an ``AttributeError`` for an ``.npz``, an ``EOFError``).
    """
    if os.path.isdir(path):
        raise IsADirectoryError(f"NpyBlocks: {path!r} is a directory, not a .npy file")
    if not os.path.exists(path):
        raise FileNotFoundError(f"NpyBlocks: no file at {path!r}")

    def invalid(why):
        return ValueError(f"NpyBlocks: {path!r} is not a valid .npy file: {why}")

    size = os.path.getsize(path)
    with open(path, "rb") as file:
        start = file.read(len(_NPY_MAGIC))
        if not start:
            raise invalid("the file is empty")
        if start.startswith(_ZIP_MAGIC):
            raise invalid("it is a zip archive (an .npz holding several arrays: load it with numpy.load and "
                          "pass one of its arrays, or save that array with numpy.save)")
        if start != _NPY_MAGIC:
            raise invalid(f"it does not start with the .npy format's magic bytes (it begins with {start!r}: a "
                          f"text file, a pickle or another format)")
        file.seek(0)
        try:
            version = np.lib.format.read_magic(file)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(file)
            else:
                shape, _, dtype = np.lib.format.read_array_header_2_0(file)
        except (ValueError, OSError, EOFError, SyntaxError) as error:  # what numpy raises for a damaged header
            raise invalid(f"its header cannot be read ({error})") from None
        data_start = file.tell()
    if dtype.hasobject:
        raise invalid(f"it holds Python objects (dtype {dtype}), which are pickled and cannot be read block "
                      f"by block")
    needed = data_start + math.prod(shape) * dtype.itemsize
    if size < needed:
        raise invalid(f"it is truncated: its header declares shape {shape} of {dtype}, {needed} bytes with the "
                      f"header, but the file has {size}")
    return tuple(shape), dtype


class NpyBlocks:
    """A ``.npy`` file as an array that memory-maps the file only for the block being read or written.

    Give it to :func:`dask.array.from_array` as the source and to :func:`dask.array.store` as the
    target, instead of ``np.load(path, mmap_mode="r")`` and ``np.lib.format.open_memmap``:

    - ``da.from_array`` copies any array that has a ``copy`` method before it builds the graph
      (dask 2026.8.0 does: a 4 GiB ``np.memmap`` became 4 GiB of process memory and took 8.6 s
      before any task ran). ``NpyBlocks`` has no ``copy``; each task reads only its block.
    - Pages of a live memory map count as resident memory while the map lives, so whole-file
      maps of a 4 GiB source and a 4 GiB result show 8 GiB resident (reclaimable page cache, but
      an RSS limit sees it). Here each read or write maps the file, copies one block and unmaps
      it: the resident set holds only the blocks in flight.

    Workers of a distributed cluster open the file by its path, so it must be on storage they
    share. dask names the array after the file's path, size and modification time.

    Parameters
    ----------
    path : str or os.PathLike
        An existing ``.npy`` file (use :meth:`create` for a new one).

    Raises
    ------
    FileNotFoundError, IsADirectoryError
        When ``path`` names no file, or a directory.
    ValueError
        When the file is not a valid ``.npy`` file: empty, not in the ``.npy`` format (a text
        file, a pickle), an ``.npz`` archive, truncated (shorter than its header declares), or
        holding Python objects (which cannot be read block by block). The message names the file.

    Examples
    --------
    >>> import os, tempfile, numpy as np, dask.array as da, fastconv, fastconv.dask
    >>> folder = tempfile.mkdtemp()
    >>> np.save(os.path.join(folder, "image.npy"), np.arange(64.0).reshape(8, 8))
    >>> source = fastconv.dask.NpyBlocks(os.path.join(folder, "image.npy"))
    >>> y = fastconv.dask.conv2d(da.from_array(source, chunks=(4, 8)), np.ones((3, 3)), padding="same")
    >>> target = fastconv.dask.NpyBlocks.create(os.path.join(folder, "smooth.npy"), y.shape, y.dtype)
    >>> da.store(y, target)
    >>> float(np.load(os.path.join(folder, "smooth.npy"))[3, 3])
    243.0
    """

    def __init__(self, path):
        self.path = os.path.abspath(path)  # tasks may run where the working directory differs
        self.shape, self.dtype = _npy_header(self.path)
        self.ndim = len(self.shape)

    @classmethod
    def create(cls, path, shape, dtype):
        """A new ``.npy`` file of ``shape`` and ``dtype`` (sparse until written), ready to be a target."""
        shape = (shape,) if isinstance(shape, (int, np.integer)) else tuple(shape)  # as numpy takes shapes
        np.lib.format.open_memmap(os.fspath(path), mode="w+", dtype=dtype, shape=shape).flush()
        return cls(path)

    def __getitem__(self, index):
        mapped = np.load(self.path, mmap_mode="r")
        block = np.array(mapped[index])  # a copy: the map closes when this returns
        del mapped
        return block

    def __setitem__(self, index, value):
        mapped = np.load(self.path, mmap_mode="r+")
        mapped[index] = value
        del mapped

    def __len__(self):
        if not self.shape:
            raise TypeError("len() of a 0-d NpyBlocks")
        return self.shape[0]

    def __repr__(self):
        return f"NpyBlocks({self.path!r}, shape={self.shape}, dtype={self.dtype})"

    def __dask_tokenize__(self):
        status = os.stat(self.path)
        return "NpyBlocks", self.path, status.st_size, status.st_mtime_ns, self.shape, self.dtype.str
