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
(``docs/performance.md``).

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

import bisect
import contextlib
import functools
import math
import operator
import os
from typing import NamedTuple

import dask
import dask.array as da
import numpy as np
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph

from fastconv import backends
from fastconv.dispatch import _as_numeric_array, _preferred_backend, use_backend
from fastconv.dispatch import conv2d as _conv2d_in_memory
from fastconv import signal as fastconv_signal
from fastconv.geometry import (_NUMPY_PAD_MODE, check_dtype, gathered_spec, make_spec, padded_source, read_positions,
                               resolve_dtypes, signal_geometry)

__all__ = ["conv2d", "convolve2d", "correlate2d", "NpyBlocks"]


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


def _pad(x, pad_width, mode):
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
    return da.pad(x, pad_width, mode=mode)


class AxisPlan(NamedTuple):
    """How one spatial axis is cut into blocks (see :func:`plan_axis`)."""

    source_chunks: tuple  # chunks of the unpadded source axis, one per block
    out_chunks: tuple  # outputs each block produces
    reads: tuple  # per block: (start, stop) rows of the source it reads, halo included
    padding: tuple  # per block: (before, after) zero rows the block adds itself (global padding only)


def plan_axis(chunks, pad_before, pad_after, extent, stride):
    """Cut one spatial axis into blocks that read their halo straight from the source chunks.

    The axis is thought of as zero-padded by ``pad_before`` and ``pad_after`` without ever
    being padded: :func:`stride_aligned_chunks` places the block boundaries on that padded
    axis, and each block then reads the source rows its outputs need (its own chunk plus the halo
    from its neighbours) and adds whatever global zero padding falls inside its window itself,
    which a backend does without copying.

    Examples
    --------
    Ten rows in chunks of 4, 4, 2, a 3-tap kernel with ``padding=1`` at stride 1: the first block
    reads rows 0-4 and pads one zero row above, the last reads rows 7-9 and pads one below.

    >>> plan = plan_axis((4, 4, 2), 1, 1, extent=3, stride=1)
    >>> plan.source_chunks, plan.out_chunks
    ((4, 4, 2), (4, 4, 2))
    >>> plan.reads, plan.padding
    (((0, 5), (3, 9), (7, 10)), ((1, 0), (0, 0), (0, 1)))
    """
    padded_chunks, out_chunks, (before, after) = stride_aligned_chunks(chunks, pad_before, pad_after, extent,
                                                                       stride)
    edges = np.cumsum((0,) + padded_chunks).tolist()
    first, last = pad_before, pad_before + sum(chunks)  # the source's rows on the padded axis
    source_edges = [min(max(edge, first), last) - first for edge in edges]
    reads, padding = [], []
    for k in range(len(padded_chunks)):
        window_start = edges[k] - (before if k > 0 else 0)
        window_stop = edges[k + 1] + (after if k < len(padded_chunks) - 1 else 0)
        start, stop = max(window_start, first), min(window_stop, last)
        if start < stop:
            reads.append((start - first, stop - first))
            padding.append((start - window_start, window_stop - stop))
        else:  # a window of padding only (a stride wider than the kernel can skip the whole source)
            reads.append((0, 0))
            padding.append((window_stop - window_start, 0))
    source_chunks = tuple(b - a for a, b in zip(source_edges, source_edges[1:]))
    return AxisPlan(source_chunks, out_chunks, tuple(reads), tuple(padding))


def _padded_once(x, padding, mode):
    """``x`` padded lazily on its last two axes, the padding joined to the edge chunks."""
    pad_width = ((0, 0),) * (x.ndim - 2) + tuple(padding)
    chunks = x.chunks[:-2] + tuple((c[0] + before,) + c[1:-1] + (c[-1] + after,) if len(c) > 1 else
                                   (c[0] + before + after,) for c, (before, after) in zip(x.chunks[-2:], padding))
    return _pad(x, pad_width, mode).rechunk(chunks)


def _pieces(chunk_edges, start, stop):
    """The (chunk index, slice within that chunk) pieces that cover source rows [start, stop)."""
    pieces = []
    # from the chunk holding `start` on, not from the first chunk: a scan per block made building
    # the graph quadratic in the number of chunks per axis
    for index in range(max(bisect.bisect_right(chunk_edges, start) - 1, 0), len(chunk_edges) - 1):
        low, high = chunk_edges[index], chunk_edges[index + 1]
        if low >= stop:
            break
        if high > start and high > low:
            pieces.append((index, slice(max(start, low) - low, min(stop, high) - low)))
    return pieces


def _joined_view(pieces):
    """The grid of ``pieces`` as one array without copying, or None where they are not adjacent.

    Chunks of an in-memory array are views of it: strips of full rows, with their neighbours'
    halo rows, are then one contiguous stretch of memory, which a backend reads in place. The
    view is built only when every piece has the same strides and starts exactly where the grid
    puts it, so each element of the view is an element of one of the pieces.
    """
    first = pieces[0][0]
    start = first.__array_interface__["data"][0]
    width = sum(piece.shape[3] for piece in pieces[0])
    row = 0
    for row_pieces in pieces:
        col = 0
        for piece in row_pieces:
            address = start + row * first.strides[2] + col * first.strides[3]
            if (piece.strides != first.strides or piece.__array_interface__["data"][0] != address
                    or piece.shape[:3] != first.shape[:2] + (row_pieces[0].shape[2],)):
                return None
            col += piece.shape[3]
        if col != width:  # a ragged grid: the view's rectangle would reach past some pieces
            return None
        row += row_pieces[0].shape[2]
    return np.lib.stride_tricks.as_strided(first, shape=first.shape[:2] + (row, width), strides=first.strides,
                                           writeable=False)


def _check_pieces(pieces, shape, spans):
    """Raise ValueError unless every piece has the shape the graph declared for it.

    A source whose blocks differ from its declared chunks (a ``map_blocks`` function returning
    fewer rows than it promised, a custom array source) would otherwise leave part of the joined
    block unwritten, or the block reading past its neighbour: results from uninitialised memory.
    """
    row_spans, col_spans = spans
    for piece_row, (row_start, row_stop) in zip(pieces, row_spans):
        for piece, (col_start, col_stop) in zip(piece_row, col_spans):
            expected = shape[:2] + (row_stop - row_start, col_stop - col_start)
            if getattr(piece, "shape", None) != expected:
                raise ValueError(
                    f"fastconv.dask: the input's block holding rows {row_start}:{row_stop} and columns "
                    f"{col_start}:{col_stop} (of its last two axes) has shape {getattr(piece, 'shape', None)} "
                    f"where its chunks {expected} were declared; the dask array's chunks do not match the blocks "
                    f"its tasks return (check the map_blocks function or array source that made it)")


def _convolve_block(pieces, weight, bias, padding, shape, spans, out_shape, *, dtype, out_dtype, fill, stride,
                    dilation, groups, backend, preferred):
    """Join one block's pieces (its chunk and its neighbours' halos) and convolve them.

    ``pieces`` is a grid (rows of columns) of (N, C, h, w) arrays covering the (N, C, H, W)
    ``shape`` the block reads from the source; ``spans`` holds the source rows and columns
    ``(start, stop)`` of each piece row and column, and ``out_shape`` the shape of the block's
    result, both as the graph declared them: a piece or result of another shape is an error.
    The join is the block's one copy, made in the compute ``dtype`` and skipped when the pieces
    already lie side by side in memory (strips of full rows of one in-memory array). Zero padding is left to the backend, which skips it
    without copying; a constant ``fill``, or a block that reads nothing but padding (strides
    larger than the kernel can do that), gets its padding written around the joined block
    instead. An integer or long-double ``out_dtype`` (scipy-style functions only) is computed
    exactly, as scipy does, by :mod:`fastconv.signal`'s shift-and-add path.
    """
    _check_pieces(pieces, shape, spans)
    out = _convolve_joined(pieces, weight, bias, padding, shape, dtype=dtype, out_dtype=out_dtype, fill=fill,
                           stride=stride, dilation=dilation, groups=groups, backend=backend, preferred=preferred)
    if out.shape != tuple(out_shape):
        raise ValueError(f"fastconv.dask: a block's convolution returned shape {out.shape} where the graph declared "
                         f"{tuple(out_shape)} (backend {backend!r}); the result would not fit its chunks")
    return out


def _convolve_joined(pieces, weight, bias, padding, shape, *, dtype, out_dtype, fill, stride, dilation, groups,
                     backend, preferred):
    """The body of :func:`_convolve_block`: the join, then one in-memory convolution."""
    exact = fastconv_signal._computed_exactly(out_dtype)
    explicit = fill is not None or exact or 0 in shape[2:]
    joined = None if explicit else _joined_view(pieces)
    if joined is not None:
        block = joined
    else:
        (top, bottom), (left, right) = padding if explicit else ((0, 0), (0, 0))
        padded_shape = shape[:2] + (top + shape[2] + bottom, left + shape[3] + right)
        block = np.full(padded_shape, 0 if fill is None else fill, dtype=dtype) if explicit else np.empty(
            padded_shape, dtype=dtype)
        row = top
        for row_pieces in pieces if shape[3] else ():  # no columns read: no pieces to place
            col = left
            for piece in row_pieces:
                block[:, :, row:row + piece.shape[2], col:col + piece.shape[3]] = piece
                col += piece.shape[3]
            row += row_pieces[0].shape[2]
        if explicit:
            padding = ((0, 0), (0, 0))
    if exact:  # float64 would round integers past 2**53 and saturate instead of wrapping
        return fastconv_signal._correlate_padded(block[0, 0], weight[0, 0], backend)[None, None].astype(
            out_dtype, copy=False)
    # use_backend lives in a context variable, which worker threads do not inherit: re-enter it
    with contextlib.nullcontext() if preferred is None else use_backend(preferred):
        out = _conv2d_in_memory(block, weight, bias, stride=stride, padding=padding, dilation=dilation,
                                groups=groups, backend=backend)
    # a block joined in the compute dtype (float32 for float16 inputs) returns it: give back the
    # dtype every other block has
    return out.astype(out_dtype, copy=False)


def _check_backend(backend, spec):
    """The preferred backend to re-enter in workers (auto), after checking an explicit one now."""
    if backend == "auto":
        return _preferred_backend.get()
    name = backends._check_name(backend)
    if fastconv_signal._computed_exactly(spec.out_dtype):  # integers and long doubles never reach a backend
        return None
    # Blocks differ from the whole only in size; backends decline on dtype, kernel, stride,
    # dilation or groups, so asking now turns a compute-time failure into a call-time one.
    reason = backends.get(name).supports(spec)  # get() raises when the backend is unavailable
    if reason is not None:
        raise ValueError(f"backend {name!r} cannot run this convolution: {reason}")
    return None


def _blocked_conv2d(source, padding, weight, bias, spec, backend, fill=None):
    """The lazy convolution of ``source`` (N, C, H, W) with ``spec``, one task per output block.

    ``padding`` is the global ((top, bottom), (left, right)) padding, never materialised: zeros
    (``fill=None``) are added by each edge block's backend, a constant ``fill`` by the block's
    join. Every task reads its own chunk and slices of its neighbours (separate small tasks, so a
    distributed scheduler moves only the halo) and runs one in-memory convolution; there is no
    padding pass, no halo concatenation pass and no trimming pass.
    """
    preferred = _check_backend(backend, spec)
    rows = plan_axis(source.chunks[2], *padding[0], spec.dilated_kernel[0], spec.stride[0])
    cols = plan_axis(source.chunks[3], *padding[1], spec.dilated_kernel[1], spec.stride[1])
    source = source.rechunk((source.chunks[0], (spec.in_channels,), rows.source_chunks, cols.source_chunks))
    row_edges = np.cumsum((0,) + rows.source_chunks).tolist()
    col_edges = np.cumsum((0,) + cols.source_chunks).tolist()
    # one graph key each, shipped once per worker; copies, because the keys name the values they
    # hold now, and the caller's arrays may change before the graph runs
    weight_key = dask.delayed(np.array(weight), pure=True)
    bias_key = None if bias is None else dask.delayed(np.array(bias), pure=True)
    # integers and long doubles are joined in their own dtype (their exact path widens integers); the
    # rest in the compute dtype
    join_dtype = spec.out_dtype if fastconv_signal._computed_exactly(spec.out_dtype) else spec.dtype
    convolve = functools.partial(_convolve_block, dtype=join_dtype, out_dtype=spec.out_dtype, fill=fill,
                                 stride=spec.stride, dilation=spec.dilation, groups=spec.groups, backend=backend,
                                 preferred=preferred)
    token = tokenize(source, padding, weight_key, bias_key, spec, backend, fill, preferred)
    name, halo_name = f"fastconv-conv2d-{token}", f"fastconv-conv2d-halo-{token}"
    graph = {}

    def piece_key(n, row_piece, col_piece):
        (i, row_slice), (j, col_slice) = row_piece, col_piece
        key = (source.name, n, 0, i, j)
        if (row_slice.stop - row_slice.start, col_slice.stop - col_slice.start) == (
                source.chunks[2][i], source.chunks[3][j]):
            return key  # the whole chunk: no task needed
        halo_key = (halo_name, n, i, j, row_slice.start, row_slice.stop, col_slice.start, col_slice.stop)
        graph[halo_key] = (operator.getitem, key, (slice(None), slice(None), row_slice, col_slice))
        return halo_key

    def spans(edges, pieces):  # the source rows (start, stop) of each piece
        return tuple((edges[index] + part.start, edges[index] + part.stop) for index, part in pieces)

    row_pieces_of = [_pieces(row_edges, *read) for read in rows.reads]
    col_pieces_of = [_pieces(col_edges, *read) for read in cols.reads]
    for n in range(source.numblocks[0]):
        for i, (row_read, row_padding, row_pieces) in enumerate(zip(rows.reads, rows.padding, row_pieces_of)):
            for j, (col_read, col_padding, col_pieces) in enumerate(zip(cols.reads, cols.padding, col_pieces_of)):
                grid = [[piece_key(n, r, c) for c in col_pieces] for r in row_pieces]
                shape = (source.chunks[0][n], spec.in_channels, row_read[1] - row_read[0], col_read[1] - col_read[0])
                out_shape = (source.chunks[0][n], spec.out_channels, rows.out_chunks[i], cols.out_chunks[j])
                graph[(name, n, 0, i, j)] = (convolve, grid, weight_key.key, None if bias_key is None else bias_key.key,
                                             (row_padding, col_padding), shape,
                                             (spans(row_edges, row_pieces), spans(col_edges, col_pieces)), out_shape)
    dependencies = [source, weight_key] + ([] if bias_key is None else [bias_key])
    return da.Array(HighLevelGraph.from_collections(name, graph, dependencies=dependencies), name,
                    chunks=(source.chunks[0], (spec.out_channels,), rows.out_chunks, cols.out_chunks),
                    meta=np.empty((0, 0, 0, 0), dtype=spec.out_dtype))


def _as_dask_array(name, value):
    array = value if isinstance(value, da.Array) else da.asarray(_as_numeric_array(name, value))
    check_dtype(name, array.dtype)
    _check_chunks(name, array)
    return array


def _check_chunks(name, array):
    """Blocks must be numpy arrays of known sizes: the blocks' backends and joins take numpy only."""
    if not isinstance(array._meta, np.ndarray):
        raise TypeError(f"{name} has chunks of type {type(array._meta).__module__}.{type(array._meta).__name__}; "
                        f"fastconv.dask takes dask arrays of numpy chunks (map_blocks(numpy.asarray) converts them)")
    if any(np.isnan(size) for sizes in array.chunks for size in sizes):
        raise ValueError(
            f"{name} has unknown chunk sizes {array.chunks}; call {name}.compute_chunk_sizes() first"
        )


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
    # block by block: only each block's call must fit in memory (it checks itself)
    spec = make_spec(x.shape, weight.shape, stride=stride, padding=padding, dilation=dilation, groups=groups,
                     padding_mode=padding_mode, dtype=compute_dtype, out_dtype=out_dtype, in_memory=False)
    if any(positions is not None for positions in read_positions(spec)):
        x, spec = _gathered(x, spec)
    if spec.padding_mode == "zeros":
        out = _blocked_conv2d(x, spec.padding, weight, bias, spec, backend)
    else:  # the padding needs values from the image: add it once, lazily, at the array edges
        padded = _padded_once(x, spec.padding, _NUMPY_PAD_MODE[spec.padding_mode])
        out = _blocked_conv2d(padded, ((0, 0), (0, 0)), weight, bias, spec.zero_padded(), backend)
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
    pad_mode = fastconv_signal._pad_mode(boundary, name)
    # the in-memory function's dtype rules, which are scipy's: integers stay integers and, like long
    # doubles, are computed exactly; float16 and bool are refused
    out_dtype = fastconv_signal._result_dtype(image, kernel, name)
    image = image if isinstance(image, da.Array) else da.asarray(image)  # dask refuses object dtypes
    _check_chunks("in1", image)
    # cast as scipy casts it: to the result dtype (300 stays 300 for int8 * int64, 0.5 is 0 for
    # integers), not to the image's dtype
    fill = fastconv_signal._fill_value(fillvalue, out_dtype) if pad_mode == "constant" else 0

    swap, padding, out_shape = signal_geometry(image.shape, kernel.shape, mode, flip=flip, op=name)
    if swap:
        # scipy's "valid" rule: the kernel is the larger operand, so the image is the smaller, in
        # memory already; the (small) result is one in-memory call
        in_memory = fastconv_signal.convolve2d if flip else fastconv_signal.correlate2d
        # a copy of the kernel, as in _blocked_conv2d: the caller's array may change before compute
        result = dask.delayed(in_memory, pure=True)(image, np.array(kernel), mode, boundary, fillvalue, backend)
        return da.from_delayed(result, shape=out_shape, dtype=out_dtype)
    # convolution is correlation with the kernel reversed; scipy's correlation conjugates in2
    weight = (kernel[::-1, ::-1] if flip else np.conj(kernel))[None, None]
    # exact dtypes (integers, long doubles) never reach a backend; float64 stands in for them in the spec
    compute_dtype = np.dtype(np.float64) if fastconv_signal._computed_exactly(out_dtype) else out_dtype
    spec = make_spec((1, 1) + image.shape, weight.shape, padding=padding, dtype=compute_dtype, out_dtype=out_dtype,
                     in_memory=False)
    if pad_mode == "constant":
        out = _blocked_conv2d(image[None, None], padding, weight, None, spec, backend,
                              fill=None if fill == 0 else fill)
    else:
        padded = _padded_once(image, padding, pad_mode)[None, None]
        out = _blocked_conv2d(padded, ((0, 0), (0, 0)), weight, None, spec.zero_padded(), backend)
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


# --------------------------------------------------------------------------------------------
# .npy files, one block at a time


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
