"""Convolution of dask arrays: images and batches larger than memory, or spread over a cluster.

``import fastconv`` does not import dask; import this module explicitly (``import fastconv.dask``)
after installing the extra (``pip install "fastconv[dask]"``). Every function returns a lazy dask
array holding the values the in-memory function gives, computed block by block with fastconv's
own backends; nothing runs until ``.compute()``, ``da.store`` or ``.to_zarr``.

How :func:`conv2d` maps a global convolution onto blocks
----------------------------------------------------------
1. **Pad once, at the array edges.** The global padding (any form, any ``padding_mode``) is
   applied lazily with :func:`dask.array.pad` using numpy's equivalent mode, so interior chunk
   boundaries never see padding.
2. **Give each output to one chunk.** Output ``i`` reads padded rows
   ``[i * stride, i * stride + extent)``, ``extent = dilation * (k - 1) + 1``, and belongs to the
   chunk holding its window's centre row. Chunk boundaries follow the caller's chunks, moved by
   less than a stride so that they sit the same distance past the stride grid
   (:func:`stride_aligned_chunks`; at stride 1 nothing moves). Block memory stays what the
   caller chose, and ``"same"`` padding at stride 1 keeps the input's chunks.
3. **Borrow a fixed halo.** Each block then needs the same rows from its neighbours: the window
   half before its first output's centre and the rest after its last
   (:func:`dask.array.map_overlap` with an asymmetric depth and no boundary, since the padding
   is already there). A valid, strided convolution of the block yields exactly its outputs.
   Chunks too small to lend the halo are merged with a neighbour automatically.
4. **Channels in one chunk, batches independent.** The channel axis is rechunked to a single chunk
   (every output channel needs all input channels of its group, and a sum across channel chunks
   would cost an extra pass over the output); batch chunks map independently. Size spatial chunks
   with all channels in mind.
5. **Weights travel once.** The weight and bias are single graph keys (:func:`dask.delayed`)
   that every block depends on, so a distributed scheduler ships them once per worker, not once
   per task.

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

import contextlib

import dask
import dask.array as da
import numpy as np

from fastconv import backends
from fastconv.dispatch import _as_numeric_array, _preferred_backend, use_backend
from fastconv.dispatch import conv2d as _conv2d_in_memory
from fastconv.geometry import _NUMPY_PAD_MODE, check_dtype, make_spec, resolve_dtypes

__all__ = ["conv2d", "convolve2d", "correlate2d"]


# --------------------------------------------------------------------------------------------
# planning


def stride_aligned_chunks(chunks, pad_before, pad_after, extent, stride):
    """Cut one padded spatial axis into blocks whose outputs tile the global stride grid.

    Output ``i`` reads padded rows ``[i * stride, i * stride + extent)`` and goes with the chunk
    holding its window's centre row, ``i * stride + centre`` with ``centre = (extent - 1) // 2``.
    Chunk boundaries therefore sit ``centre`` rows past a point of the stride grid, and every block
    borrows the same halo from its neighbours: ``centre`` rows before and
    ``max(extent - stride - centre, 0)`` after. At stride 1 the caller's boundaries already
    qualify and do not move.

    Parameters
    ----------
    chunks : tuple of int
        The input's chunks along the axis, before padding.
    pad_before, pad_after : int
        Global padding on each side of the axis.
    extent : int
        Dilated kernel extent along the axis, ``dilation * (k - 1) + 1``.
    stride : int
        Stride along the axis.

    Returns
    -------
    padded_chunks : tuple of int
        Chunks of the padded axis: the caller's boundaries shifted by the padding, moved up to the
        next qualifying row (less than ``stride`` away) and dropped where a chunk would be shorter
        than the halo or hold no output.
    out_chunks : tuple of int
        Number of outputs each chunk produces.
    halo : (int, int)
        Rows each block borrows from the chunk before it and from the chunk after it.

    Examples
    --------
    Sixteen rows in chunks of 4, a 3-tap kernel with ``padding=1``: the padding joins the edge
    chunks, and the output keeps the input's chunks.

    >>> stride_aligned_chunks((4, 4, 4, 4), 1, 1, extent=3, stride=1)
    ((5, 4, 4, 5), (4, 4, 4, 4), (1, 1))

    At stride 2 boundaries sit one row past an even row of the padded axis:

    >>> stride_aligned_chunks((4, 4, 2), 1, 1, extent=3, stride=2)
    ((5, 4, 3), (2, 2, 1), (1, 0))

    A chunk too small to lend the halo merges with its neighbour:

    >>> stride_aligned_chunks((3, 1, 4), 0, 0, extent=5, stride=1)
    ((3, 5), (1, 3), (2, 2))
    """
    padded_size = sum(chunks) + pad_before + pad_after
    out_size = (padded_size - extent) // stride + 1
    centre = (extent - 1) // 2
    # A block starting at grid row start * stride - and so `centre` rows before its chunk - ends
    # `after` rows past its chunk; when `after` would be negative the block keeps fewer than
    # `stride` spare rows at its end, which a valid strided convolution ignores.
    halo = (centre, max(extent - stride - centre, 0))
    starts, boundaries = [0], [0]  # first output of each chunk, first padded row of each chunk
    for edge in np.cumsum(chunks)[:-1] + pad_before:
        start = -(-(int(edge) - centre) // stride)
        boundary = start * stride + centre
        if start > starts[-1] and start < out_size and boundary - boundaries[-1] >= max(halo):
            starts.append(start)
            boundaries.append(boundary)
    boundaries.append(padded_size)
    starts.append(out_size)
    return (tuple(b - a for a, b in zip(boundaries, boundaries[1:])),
            tuple(b - a for a, b in zip(starts, starts[1:])), halo)


def _pad(x, pad_width, mode, constant_value=0):
    """Lazily pad ``x`` with numpy's ``mode``; ``wrap`` and ``symmetric`` may be wider than the axis.

    :func:`dask.array.pad` is right for widths up to the axis length (all that conv2d's padding
    modes allow) but not beyond, which scipy's boundaries need for kernels larger than the
    image. There the padded axis is cut from the periodic extension of ``x``: ``x`` itself for
    ``wrap``, ``x`` followed by its mirror image for ``symmetric``.
    """
    pad_width = [tuple(sides) for sides in pad_width]
    if mode in ("wrap", "symmetric"):
        for axis, (before, after) in enumerate(pad_width):
            size = x.shape[axis]
            if max(before, after) <= size:
                continue
            period = x if mode == "wrap" else da.concatenate([x, da.flip(x, axis)], axis=axis)
            first = -before % period.shape[axis]
            total = before + size + after
            repeats = -(-(first + total) // period.shape[axis])
            tiled = da.concatenate([period] * repeats, axis=axis)
            x = tiled[(slice(None),) * axis + (slice(first, first + total),)]
            pad_width[axis] = (0, 0)
    if not any(any(sides) for sides in pad_width):
        return x
    if mode == "constant":
        return da.pad(x, pad_width, mode=mode, constant_values=constant_value)
    return da.pad(x, pad_width, mode=mode)


def _conv2d_block(block, weight, bias, *, stride, dilation, groups, backend, preferred):
    """Valid, strided convolution of one block (already padded and carrying its halo)."""
    # use_backend lives in a context variable, which worker threads do not inherit: re-enter it
    with contextlib.nullcontext() if preferred is None else use_backend(preferred):
        return _conv2d_in_memory(block, weight, bias, stride=stride, dilation=dilation, groups=groups,
                                 backend=backend)


def _convolve_padded(padded, source_chunks, padding, weight, bias, spec, backend):
    """The lazy convolution of ``padded`` (N, C, Hp, Wp), padded globally already.

    ``source_chunks`` are the (H, W) chunks of the input before padding, ``padding`` the global
    ((top, bottom), (left, right)), ``spec`` the problem without padding left to apply.
    """
    if backend == "auto":
        preferred = _preferred_backend.get()
    else:
        preferred = None
        name = backends._check_name(backend)
        # Blocks differ from the whole only in size; backends decline on dtype, kernel, stride,
        # dilation or groups, so asking now turns a compute-time failure into a call-time one.
        reason = backends.get(name).supports(spec)  # get() raises when the backend is unavailable
        if reason is not None:
            raise ValueError(f"backend {name!r} cannot run this convolution: {reason}")
    rows = stride_aligned_chunks(source_chunks[0], *padding[0], spec.dilated_kernel[0], spec.stride[0])
    cols = stride_aligned_chunks(source_chunks[1], *padding[1], spec.dilated_kernel[1], spec.stride[1])
    padded = padded.rechunk((padded.chunks[0], (spec.in_channels,), rows[0], cols[0]))
    return da.map_overlap(
        _conv2d_block,
        padded,
        depth={2: rows[2], 3: cols[2]},
        boundary="none",
        trim=False,
        align_arrays=False,
        allow_rechunk=False,  # the chunks above already lend every halo; rechunking would break the grid
        chunks=(padded.chunks[0], (spec.out_channels,), rows[1], cols[1]),
        dtype=spec.out_dtype,
        meta=np.empty((0, 0, 0, 0), dtype=spec.out_dtype),
        token="fastconv-conv2d",
        weight=dask.delayed(weight, pure=True),  # one graph key, shipped once per worker
        bias=None if bias is None else dask.delayed(bias, pure=True),
        stride=spec.stride,
        dilation=spec.dilation,
        groups=spec.groups,
        backend=backend,
        preferred=preferred,
    )


def _as_dask_array(name, value):
    array = value if isinstance(value, da.Array) else da.asarray(_as_numeric_array(name, value))
    check_dtype(name, array.dtype)
    if any(np.isnan(size) for sizes in array.chunks for size in sizes):
        raise ValueError(
            f"{name} has unknown chunk sizes {array.chunks}; call {name}.compute_chunk_sizes() first"
        )
    return array


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
    x = _as_dask_array("x", x)
    weight = _as_numeric_array("weight", weight)
    image, unbatched = x.ndim == 2, x.ndim == 3
    if image:
        if weight.ndim != 2:
            raise ValueError(f"for a 2-D image x, weight must be a 2-D (kh, kw) kernel, got shape {weight.shape}")
        x, weight = x[None, None], weight[None, None]
        if bias is not None:
            bias = _as_numeric_array("bias", bias)
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
        bias = _as_numeric_array("bias", bias)
        if bias.shape != (weight.shape[0],):
            raise ValueError(f"bias must have shape ({weight.shape[0]},) to match weight {weight.shape}, "
                             f"got shape {bias.shape}")
        operand_dtypes.append(bias.dtype)
    compute_dtype, out_dtype = resolve_dtypes(*operand_dtypes)
    spec = make_spec(x.shape, weight.shape, stride=stride, padding=padding, dilation=dilation, groups=groups,
                     padding_mode=padding_mode, dtype=compute_dtype, out_dtype=out_dtype)
    padded = _pad(x, ((0, 0), (0, 0)) + spec.padding, _NUMPY_PAD_MODE[spec.padding_mode])
    out = _convolve_padded(padded, x.chunks[2:], spec.padding, weight, bias, spec.zero_padded(), backend)
    return out[0, 0] if image else out[0] if unbatched else out


# scipy.signal's boundary names, and numpy.pad's mode for each
_SCIPY_BOUNDARY = {"fill": "constant", "wrap": "wrap", "circular": "wrap", "symm": "symmetric",
                   "symmetric": "symmetric"}
_SCIPY_MODES = ("full", "same", "valid")


def _scipy_style(name, in1, in2, mode, boundary, fillvalue, backend, flip):
    """Shared body of :func:`convolve2d` (``flip=True``) and :func:`correlate2d`."""
    image = _as_dask_array("in1", in1)
    kernel = _as_numeric_array("in2", in2)
    if image.ndim != 2 or kernel.ndim != 2:
        raise ValueError(f"{name} inputs must both be 2-D arrays, got in1 shape {image.shape} and in2 shape "
                         f"{kernel.shape}")
    if mode not in _SCIPY_MODES:
        raise ValueError(f"mode must be one of {_SCIPY_MODES}, got {mode!r}")
    if boundary not in _SCIPY_BOUNDARY:
        raise ValueError(f"boundary must be one of {tuple(_SCIPY_BOUNDARY)}, got {boundary!r}")
    fill = np.asarray(fillvalue)
    if fill.size != 1 or fill.dtype.kind not in "biufc":
        raise ValueError(f"fillvalue must be a number (or an array with one element), got {fillvalue!r}")
    compute_dtype, block_dtype = resolve_dtypes(image.dtype, kernel.dtype)
    out_dtype = np.result_type(image.dtype, kernel.dtype)
    if out_dtype.kind not in "iu":  # scipy keeps integer dtypes; otherwise fastconv's rules
        out_dtype = block_dtype
    fill = fill.reshape(())[()]
    if np.iscomplexobj(fill) and compute_dtype.kind != "c" and fill.imag != 0:
        raise ValueError(f"fillvalue {fillvalue!r} is complex but the inputs are real ({compute_dtype})")

    (height, width), (kh, kw) = image.shape, kernel.shape
    if mode == "full":
        padding = ((kh - 1, kh - 1), (kw - 1, kw - 1))
    elif mode == "same":  # the middle of "full"; for an even kernel the extra row goes first when flipped
        padding = tuple((k // 2, (k - 1) // 2) if flip else ((k - 1) // 2, k // 2) for k in (kh, kw))
    else:
        if height < kh or width < kw:
            raise ValueError(
                f"in 'valid' mode fastconv.dask needs the image in1 {image.shape} to be at least as large as "
                f"in2 {kernel.shape} in every dimension (scipy would swap them; compute in1 and use scipy instead)"
            )
        padding = ((0, 0), (0, 0))
    # convolution is correlation with the kernel reversed; scipy's correlation conjugates in2
    weight = kernel[::-1, ::-1] if flip else np.conj(kernel)
    padded = _pad(image, padding, _SCIPY_BOUNDARY[boundary], constant_value=fill)
    spec = make_spec((1, 1) + padded.shape, (1, 1, kh, kw), dtype=compute_dtype, out_dtype=block_dtype)
    out = _convolve_padded(padded[None, None], image.chunks, padding, weight[None, None], None, spec, backend)
    return out[0, 0].astype(out_dtype)


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
        Lazy 2-D result; dtype as scipy's (integer inputs give integers), float16 as fastconv.

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
