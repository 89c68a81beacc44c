"""Convolution of dask arrays: images and batches larger than memory, or spread over a cluster.

``import fastconv`` does not import dask; import this module explicitly (``import fastconv.dask``)
after installing the extra (``pip install "fastconv[dask]"``). Every function returns a lazy dask
array holding the values the in-memory function gives, computed block by block with fastconv's
own backends; nothing runs until ``.compute()``, ``da.store`` or ``.to_zarr``.

How :func:`conv2d` maps a global convolution onto blocks
----------------------------------------------------------
1. **Give each output to one chunk.** Think of the input as padded (never padding it). Output
   ``i`` reads padded rows ``[i * stride, i * stride + extent)``, ``extent = dilation * (k - 1)
   + 1``, and belongs to the chunk holding its window's centre row. Chunk boundaries follow the
   caller's chunks, moved by less than a stride so that they sit the same distance past the
   stride grid (:func:`stride_aligned_chunks`; at stride 1 nothing moves). Block memory stays
   what the caller chose, and ``"same"`` padding at stride 1 keeps the input's chunks.
2. **Read a fixed halo, in one task per block.** Each block's window reaches the same number of
   rows into its neighbours (:func:`plan_axis`). Its task receives its own chunk and slices of
   its neighbours (small separate tasks, so a distributed scheduler moves only the halo), joins
   them (one copy, or none when they already lie side by side in memory, as strips of full rows
   of an in-memory single-channel image of the compute dtype do: with several images or channels
   per chunk the joined view is not contiguous, and :func:`fastconv.conv2d` copies it) and runs
   one valid, strided convolution that yields exactly the block's outputs. Chunks too small to
   lend the halo are merged with a neighbour automatically.
3. **Pad only at the edges, and only where it is needed.** Zero padding is left to the edge
   blocks' backend, which skips the zeros without copying (``naive`` pads a copy); a constant
   fill is written around the joined block. ``reflect``, ``replicate`` and ``circular`` padding need pixels from the image,
   and are added once, lazily, at the array edges (:func:`dask.array.pad`), costing one extra
   pass over the edge chunks. Interior chunk boundaries never see padding.

Compared with :func:`dask.array.map_overlap` (pad, then concatenate each block with its halo,
then convolve), this saves a pass over the whole image, which matters once the backend is fast:
at 8192x8192 with a 7x7 kernel a copy of the image costs most of a convolution
(``docs/performance/dask.md``).

4. **Channels in one chunk, batches independent.** The channel axis is rechunked to a single chunk
   (every output channel needs all input channels of its group, and a sum across channel chunks
   would cost an extra pass over the output); batch chunks map independently. Size spatial chunks
   with all channels in mind.
5. **Weights travel once.** The weight and bias are single graph keys (:func:`dask.delayed`)
   that every block depends on, so a distributed scheduler ships them once per worker, not once
   per task.

Files larger than memory: read and write ``.npy`` files through :class:`NpyBlocks`, which maps
the file only while one block is read or written (``da.from_array`` copies a whole
``np.memmap`` into memory first).

Examples
--------
>>> import numpy as np, dask.array as da, fastconv, fastconv.dask
>>> x = da.from_array(np.arange(100.0).reshape(10, 10), chunks=4)
>>> w = np.ones((3, 3))
>>> y = fastconv.dask.conv2d(x, w, padding="same", padding_mode="reflect")
>>> y.chunks
((4, 4, 2), (4, 4, 2))
>>> bool(np.allclose(y.compute(), fastconv.conv2d(x.compute()[None], w[None, None], padding="same",
...                                          padding_mode="reflect")[0]))
True
"""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np

from fastconv.dask.blocks import (as_dask_array, blocked_conv2d, check_chunks, padded_once, plan_axis,
                                  stride_aligned_chunks)
from fastconv.dask.npy import NpyBlocks
from fastconv.geometry import (NUMPY_PAD_MODE, gathered_spec, make_spec, padded_source, read_positions,
                               resolve_dtypes, signal_geometry)
from fastconv.ops import signal as fastconv_signal
from fastconv.ops.operands import as_numeric_array

__all__ = ["conv2d", "convolve2d", "correlate2d", "NpyBlocks", "plan_axis", "stride_aligned_chunks"]


# --------------------------------------------------------------------------------------------
# public functions


def conv2d(x, weight, bias=None, *, stride=1, padding=0, dilation=1, groups=1, padding_mode="zeros",
           backend="auto"):
    """Lazy 2-D convolution of a dask array, with the semantics of :func:`fastconv.conv2d`.

    Parameters
    ----------
    x : dask.array.Array, shape (N, C, H, W), (C, H, W) or (H, W)
        Input. (H, W) is a single-channel image; it takes a 2-D (kh, kw) ``weight`` and gives a
        2-D result. Other arrays are wrapped with :func:`dask.array.asarray`.
    weight : array_like, shape (K, C // groups, kh, kw), or (kh, kw) for a 2-D ``x``
        Filters, held in memory (not flipped: cross-correlation, as :func:`fastconv.conv2d`).
    bias : array_like, shape (K,), or a scalar for a 2-D ``x``, optional
    stride, padding, dilation, groups, padding_mode
        As for :func:`fastconv.conv2d`; the padding is applied once, at the edges of ``x``.
    backend : str
        The backend each block runs (``"auto"``, the default, chooses per block and honours
        :func:`fastconv.use_backend` around this call).

    Returns
    -------
    dask.array.Array
        Lazy result with the shape and dtype of ``fastconv.conv2d(x.compute(), ...)``. Batch
        chunks are those of ``x``; channels form one chunk; spatial chunks follow ``x``'s, moved
        onto the stride grid (and merged where a chunk is smaller than the kernel's halo).

    Raises
    ------
    TypeError, ValueError
        As :func:`fastconv.conv2d`, at call time (not at compute time).

    Examples
    --------
    >>> import numpy as np, dask.array as da, fastconv.dask
    >>> x = da.ones((2, 3, 64, 64), chunks=(1, 3, 32, 32))
    >>> y = fastconv.dask.conv2d(x, np.ones((4, 3, 3, 3)), stride=2, padding=1)
    >>> y.shape, y.chunks[2]
    ((2, 4, 32, 32), (16, 16))
    >>> float(y[0, 0, 5, 5].compute())
    27.0
    """
    x = as_dask_array("x", x)
    weight = as_numeric_array("weight", weight)
    image, unbatched = x.ndim == 2, x.ndim == 3
    if image:
        if weight.ndim != 2:
            raise ValueError(f"for a 2-D image x, weight must be a 2-D (kh, kw) kernel, got shape {weight.shape}")
        x, weight = x[None, None], weight[None, None]
        if bias is not None:
            bias = as_numeric_array("bias", bias)
            if bias.size != 1:
                raise ValueError(f"for a 2-D image x, bias must be a scalar, got shape {bias.shape}")
            bias = bias.reshape(1)
    elif x.ndim == 3:
        x = x[None]
    elif x.ndim != 4:
        raise ValueError(f"x must have shape (N, C, H, W), (C, H, W) or (H, W), got shape {x.shape}")
    if weight.ndim != 4:
        raise ValueError(f"weight must have shape (K, C // groups, kh, kw), got shape {weight.shape}")
    operand_dtypes = [x.dtype, weight.dtype]
    if bias is not None:
        bias = as_numeric_array("bias", bias)
        if bias.shape != (weight.shape[0],):
            raise ValueError(f"bias must have shape ({weight.shape[0]},) to match weight {weight.shape}, "
                             f"got shape {bias.shape}")
        operand_dtypes.append(bias.dtype)
    compute_dtype, out_dtype = resolve_dtypes(*operand_dtypes)
    # block by block: only each block's call must fit in memory (it checks itself)
    spec = make_spec(x.shape, weight.shape, stride=stride, padding=padding, dilation=dilation, groups=groups,
                     padding_mode=padding_mode, dtype=compute_dtype, out_dtype=out_dtype, in_memory=False)
    if any(positions is not None for positions in read_positions(spec)):
        x, spec = _gathered(x, spec)
    if spec.padding_mode == "zeros":
        out = blocked_conv2d(x, spec.padding, weight, bias, spec, backend)
    else:  # the padding needs values from the image: add it once, lazily, at the array edges
        padded = padded_once(x, spec.padding, NUMPY_PAD_MODE[spec.padding_mode])
        out = blocked_conv2d(padded, ((0, 0), (0, 0)), weight, bias, spec.zero_padded(), backend)
    return out[0, 0] if image else out[0] if unbatched else out


def _gathered(x, spec):
    """Lazily, the rows of each axis that :func:`fastconv.geometry.gathered_spec` gathers, and that spec.

    As in memory: an axis whose padding dwarfs what its outputs read (huge padding with a larger
    stride, or a huge dilation) is read as the few rows its outputs' taps touch, padding included,
    instead of being planned over an enormous padded span.
    """
    for axis, positions in enumerate(read_positions(spec)):
        if positions is None:
            continue
        rows, outside = padded_source(positions, x.shape[axis + 2], spec.padding_mode)
        kernel = (spec.kernel_height, spec.kernel_width)[axis]
        windows_per_chunk = max(1, max(x.chunks[axis + 2]) // kernel)  # about the caller's chunk size
        x = da.take(x, rows, axis=axis + 2).rechunk({axis + 2: windows_per_chunk * kernel})
        if outside is not None:
            where = outside.reshape((1,) * (axis + 2) + (-1,) + (1,) * (x.ndim - axis - 3))
            x = da.where(where, np.zeros((), dtype=x.dtype), x)  # selected, not multiplied: inf * 0 is NaN
    return x, gathered_spec(spec)


def _scipy_style(name, in1, in2, mode, boundary, fillvalue, backend, flip):
    """Shared body of :func:`convolve2d` (``flip=True``) and :func:`correlate2d`."""
    image = in1 if isinstance(in1, da.Array) else np.asarray(in1)
    kernel = np.asarray(in2)
    if image.ndim != 2 or kernel.ndim != 2:
        raise ValueError(f"{name} inputs must both be 2-D arrays, got in1 shape {image.shape} and in2 shape "
                         f"{kernel.shape}")
    pad_mode = fastconv_signal.pad_mode(boundary, name)
    # the in-memory function's dtype rules, which are scipy's: integers stay integers and, like long
    # doubles, are computed exactly; float16 and bool are refused
    out_dtype = fastconv_signal.result_dtype(image, kernel, name)
    image = image if isinstance(image, da.Array) else da.asarray(image)  # dask refuses object dtypes
    check_chunks("in1", image)
    # cast as scipy casts it: to the result dtype (300 stays 300 for int8 * int64, 0.5 is 0 for
    # integers), not to the image's dtype
    fill = fastconv_signal.fill_value(fillvalue, out_dtype) if pad_mode == "constant" else 0

    swap, padding, out_shape = signal_geometry(image.shape, kernel.shape, mode, flip=flip, op=name)
    if swap:
        # scipy's "valid" rule: the kernel is the larger operand, so the image is the smaller, in
        # memory already; the (small) result is one in-memory call
        in_memory = fastconv_signal.convolve2d if flip else fastconv_signal.correlate2d
        # a copy of the kernel, as in blocked_conv2d: the caller's array may change before compute
        result = dask.delayed(in_memory, pure=True)(image, np.array(kernel), mode, boundary, fillvalue, backend)
        return da.from_delayed(result, shape=out_shape, dtype=out_dtype)
    # convolution is correlation with the kernel reversed; scipy's correlation conjugates in2
    weight = (kernel[::-1, ::-1] if flip else np.conj(kernel))[None, None]
    # exact dtypes (integers, long doubles) never reach a backend; float64 stands in for them in the spec
    compute_dtype = np.dtype(np.float64) if fastconv_signal.computed_exactly(out_dtype) else out_dtype
    spec = make_spec((1, 1) + image.shape, weight.shape, padding=padding, dtype=compute_dtype, out_dtype=out_dtype,
                     in_memory=False)
    if pad_mode == "constant":
        out = blocked_conv2d(image[None, None], padding, weight, None, spec, backend,
                              fill=None if fill == 0 else fill)
    else:
        padded = padded_once(image, padding, pad_mode)[None, None]
        out = blocked_conv2d(padded, ((0, 0), (0, 0)), weight, None, spec.zero_padded(), backend)
    return out[0, 0]


def convolve2d(in1, in2, mode="full", boundary="fill", fillvalue=0, backend="auto"):
    """Lazy 2-D convolution of a dask image, with the semantics of :func:`scipy.signal.convolve2d`.

    Parameters
    ----------
    in1 : dask.array.Array, shape (H, W)
        The image (other arrays are wrapped with :func:`dask.array.asarray`).
    in2 : array_like, shape (kh, kw)
        The kernel, held in memory. It is flipped: this is true convolution.
    mode : {"full", "same", "valid"}
        Output size: every overlap (H + kh - 1), the size of ``in1`` centred on "full", or only
        positions where the kernel lies inside the image (H - kh + 1; the image must be at least
        as large as the kernel).
    boundary : {"fill", "wrap", "symm"}
        What lies outside the image: ``fillvalue``, the image repeated, or the image mirrored
        (edge pixel repeated). ``"circular"`` and ``"symmetric"`` are accepted aliases.
    fillvalue : scalar
        The value outside the image for ``boundary="fill"``.
    backend : str
        The fastconv backend each block runs.

    Returns
    -------
    dask.array.Array
        Lazy 2-D result in scipy's dtype: integers stay integers and, like long doubles, are
        computed exactly; float16 and bool inputs are refused, as scipy and
        :func:`fastconv.convolve2d` refuse them.

    Examples
    --------
    >>> import numpy as np, dask.array as da, fastconv.dask
    >>> from scipy import signal
    >>> image = np.arange(36.0).reshape(6, 6)
    >>> kernel = np.array([[1.0, 2.0], [3.0, 4.0]])
    >>> y = fastconv.dask.convolve2d(da.from_array(image, chunks=3), kernel, mode="same", boundary="symm")
    >>> bool(np.allclose(y.compute(), signal.convolve2d(image, kernel, mode="same", boundary="symm")))
    True
    """
    return _scipy_style("convolve2d", in1, in2, mode, boundary, fillvalue, backend, flip=True)


def correlate2d(in1, in2, mode="full", boundary="fill", fillvalue=0, backend="auto"):
    """Lazy 2-D cross-correlation of a dask image, as :func:`scipy.signal.correlate2d`.

    Takes the arguments of :func:`convolve2d`; the kernel is not flipped, and is conjugated when
    complex (as scipy does).

    Examples
    --------
    >>> import numpy as np, dask.array as da, fastconv.dask
    >>> from scipy import signal
    >>> image = np.arange(30.0).reshape(5, 6)
    >>> kernel = np.array([[1.0, 0.0, -1.0]])
    >>> y = fastconv.dask.correlate2d(da.from_array(image, chunks=2), kernel, boundary="wrap")
    >>> bool(np.allclose(y.compute(), signal.correlate2d(image, kernel, boundary="wrap")))
    True
    """
    return _scipy_style("correlate2d", in1, in2, mode, boundary, fillvalue, backend, flip=False)


