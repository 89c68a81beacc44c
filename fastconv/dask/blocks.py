"""How a convolution of a dask array becomes one task per block (see :mod:`fastconv.dask`).

Planning (:func:`stride_aligned_chunks`, :func:`plan_axis`) gives each output to one chunk and
each block a fixed halo; the block tasks join a chunk with its neighbours' halo slices and run
one valid, strided :func:`fastconv.conv2d`, checking every piece and result against the graph's
shapes.
"""

from __future__ import annotations

import bisect
import contextlib
import functools
import operator
from typing import NamedTuple

import dask
import dask.array as da
import numpy as np
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph

from fastconv import backends
from fastconv.geometry import check_dtype
from fastconv.ops import signal as fastconv_signal
from fastconv.ops.operands import as_numeric_array
from fastconv.ops.conv2d import conv2d as conv2d_in_memory
from fastconv.ops.conv2d import preferred_backend, use_backend

__all__ = ["AxisPlan", "as_dask_array", "blocked_conv2d", "check_backend", "check_chunks", "padded_once", "plan_axis",
           "stride_aligned_chunks"]


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


def padded_once(x, padding, mode):
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
    exact = fastconv_signal.computed_exactly(out_dtype)
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
        return fastconv_signal.correlate_padded(block[0, 0], weight[0, 0], backend)[None, None].astype(
            out_dtype, copy=False)
    # use_backend lives in a context variable, which worker threads do not inherit: re-enter it
    with contextlib.nullcontext() if preferred is None else use_backend(preferred):
        out = conv2d_in_memory(block, weight, bias, stride=stride, padding=padding, dilation=dilation,
                                groups=groups, backend=backend)
    # a block joined in the compute dtype (float32 for float16 inputs) returns it: give back the
    # dtype every other block has
    return out.astype(out_dtype, copy=False)


def check_backend(backend, spec):
    """The preferred backend to re-enter in workers (auto), after checking an explicit one now."""
    if backend == "auto":
        return preferred_backend()
    name = backends.check_name(backend)
    if fastconv_signal.computed_exactly(spec.out_dtype):  # integers and long doubles never reach a backend
        return None
    # Blocks differ from the whole only in size; backends decline on dtype, kernel, stride,
    # dilation or groups, so asking now turns a compute-time failure into a call-time one.
    reason = backends.get(name).supports(spec)  # get() raises when the backend is unavailable
    if reason is not None:
        raise ValueError(f"backend {name!r} cannot run this convolution: {reason}")
    return None


def blocked_conv2d(source, padding, weight, bias, spec, backend, fill=None):
    """The lazy convolution of ``source`` (N, C, H, W) with ``spec``, one task per output block.

    ``padding`` is the global ((top, bottom), (left, right)) padding, never materialised: zeros
    (``fill=None``) are added by each edge block's backend, a constant ``fill`` by the block's
    join. Every task reads its own chunk and slices of its neighbours (separate small tasks, so a
    distributed scheduler moves only the halo) and runs one in-memory convolution; there is no
    padding pass, no halo concatenation pass and no trimming pass.
    """
    preferred = check_backend(backend, spec)
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
    join_dtype = spec.out_dtype if fastconv_signal.computed_exactly(spec.out_dtype) else spec.dtype
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


def as_dask_array(name, value):
    array = value if isinstance(value, da.Array) else da.asarray(as_numeric_array(name, value))
    check_dtype(name, array.dtype)
    check_chunks(name, array)
    return array


def check_chunks(name, array):
    """Blocks must be numpy arrays of known sizes: the blocks' backends and joins take numpy only."""
    if not isinstance(array._meta, np.ndarray):
        raise TypeError(f"{name} has chunks of type {type(array._meta).__module__}.{type(array._meta).__name__}; "
                        f"fastconv.dask takes dask arrays of numpy chunks (map_blocks(numpy.asarray) converts them)")
    if any(np.isnan(size) for sizes in array.chunks for size in sizes):
        raise ValueError(
            f"{name} has unknown chunk sizes {array.chunks}; call {name}.compute_chunk_sizes() first"
        )


