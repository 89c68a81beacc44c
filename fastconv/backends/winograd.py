"""``winograd``: 3×3 convolution by Winograd's minimal filtering, F(2×2,3×3) and F(4×4,3×3).

Direct convolution spends 9 multiplies per output value per (input, output) channel pair on a
3×3 kernel. Winograd's minimal filtering algorithm F(m, r) computes m outputs of an r-tap filter
with only m + r - 1 multiplies, and nesting it in two dimensions, F(m×m, r×r), computes an m×m
output tile with (m + 2)² multiplies instead of 9m²: 16 instead of 36 for F(2×2,3×3) (2.25×
fewer) and 36 instead of 144 for F(4×4,3×3) (4× fewer). Lavin & Gray, "Fast Algorithms for
Convolutional Neural Networks" (CVPR 2016, arXiv:1509.09308) showed that the multiplies of a CNN
layer become GEMMs; this is how oneDNN and NNPACK beat im2col on 3×3 layers.

For an input tile ``d`` (α×α, α = m + 2) and a filter ``g`` (3×3), the m×m output tile is::

    Y = Aᵀ [ (G g Gᵀ) ⊙ (Bᵀ d B) ] A

``G g Gᵀ`` (the filter transform) is done once per filter, ``Bᵀ d B`` (the input transform) once
per tile and input channel, and the elementwise product ⊙ summed over input channels is, for each
of the α² transform-domain positions ``e``, a matrix product::

    M[e] (K × tiles) = U[e] (K × C) · V[e] (C × tiles)

So a layer costs: an input transform (numba, parallel over rows of tiles), α² GEMMs (numpy
``matmul`` on BLAS), and an output transform ``Aᵀ M A`` (numba, parallel), which also adds the
bias and writes the output image. The image is processed in chunks of tile rows so that V and M
stay within ``fastconv.config.workspace_bytes``.

Where the matrices come from: F(m, 3) evaluates the product of the data and filter polynomials at
m + 2 points (the Toom–Cook / Chinese-remainder construction). F(2, 3) uses 0, 1, -1, ∞ and
F(4, 3) uses 0, 1, -1, 2, -2, ∞, the matrices of Lavin & Gray's paper (§4.1, §4.2). Larger tiles
need larger points and lose accuracy fast, which is why production libraries stop at F(4×4, 3×3)
for float32; ``tests/test_winograd.py`` checks ``Aᵀ[(G g) ⊙ (Bᵀ d)] = correlate(d, g)`` in
exact rational arithmetic for both.

Accuracy (measured, relative error max|err| / max|ref| against the float64 reference, 64 input
channels, standard-normal data; see docs/performance.md): float32 F(2×2) ≈ 4e-7, F(4×4) ≈ 2e-6;
float64 F(2×2) ≈ 7e-16, F(4×4) ≈ 3e-15. :func:`choose_tile` picks F(4×4) unless the output is
too small for 4×4 tiles to pay (fewer than 8 outputs along an axis, where most of each tile would
be wasted), see there.

Dilation by space-to-batch: a 3×3 convolution with dilation (dh, dw) reads rows ``i, i + dh,
i + 2dh`` of the padded input for output row ``i``. Output rows ``i ≡ r (mod dh)`` therefore
only read input rows ``≡ r (mod dh)``: they are an *undilated* 3×3 convolution of the sub-image
``x_pad[r::dh, s::dw]``, written to ``out[r::dh, s::dw]``. A dilated convolution is dh·dw
undilated ones on interleaved sub-images (DeepLab's "atrous" trick run backwards). Here no
sub-image is materialised: tiles simply step through the padded input by (dh, dw), and all tiles
of all sub-images share the same GEMMs.

Zero padding is not materialised either: the input transform reads zeros outside the image.

Declines: kernels other than 3×3 and strides other than 1 (the algorithm is specific to them),
complex dtypes, and depthwise convolution (one input channel per group turns each GEMM into an
elementwise product; the transforms then cost more than the 9 multiplies they save).

Examples
--------
>>> import numpy as np, fastconv
>>> x = np.arange(16.0).reshape(1, 1, 4, 4); w = np.ones((1, 1, 3, 3))
>>> fastconv.conv2d(x, w, backend="winograd")[0, 0]
array([[45., 54.],
       [81., 90.]])
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np
from numba import njit, prange

from fastconv import config
from fastconv.geometry import ConvSpec

name = "winograd"

__all__ = ["available", "choose_tile", "estimate_flops", "run", "supports", "transform_matrices"]

# --------------------------------------------------------------------------------------------
# The transform matrices (Lavin & Gray 2016). Bᵀ: input transform (α×α), G: filter transform
# (α×3), Aᵀ: output transform (m×α). Exact small rationals; float64 here, cast once to the
# compute dtype.

# F(2, 3): interpolation points 0, 1, -1, ∞.
_BT_F2 = np.array([
    [1, 0, -1, 0],
    [0, 1, 1, 0],
    [0, -1, 1, 0],
    [0, 1, 0, -1],
], dtype=np.float64)
_G_F2 = np.array([
    [1, 0, 0],
    [1 / 2, 1 / 2, 1 / 2],
    [1 / 2, -1 / 2, 1 / 2],
    [0, 0, 1],
], dtype=np.float64)
_AT_F2 = np.array([
    [1, 1, 1, 0],
    [0, 1, -1, -1],
], dtype=np.float64)

# F(4, 3): interpolation points 0, 1, -1, 2, -2, ∞.
_BT_F4 = np.array([
    [4, 0, -5, 0, 1, 0],
    [0, -4, -4, 1, 1, 0],
    [0, 4, -4, -1, 1, 0],
    [0, -2, -1, 2, 1, 0],
    [0, 2, -1, -2, 1, 0],
    [0, 4, 0, -5, 0, 1],
], dtype=np.float64)
_G_F4 = np.array([
    [1 / 4, 0, 0],
    [-1 / 6, -1 / 6, -1 / 6],
    [-1 / 6, 1 / 6, -1 / 6],
    [1 / 24, 1 / 12, 1 / 6],
    [1 / 24, -1 / 12, 1 / 6],
    [0, 0, 1],
], dtype=np.float64)
_AT_F4 = np.array([
    [1, 1, 1, 1, 1, 0],
    [0, 1, -1, 2, -2, 0],
    [0, 1, 1, 4, 4, 0],
    [0, 1, -1, 8, -8, 1],
], dtype=np.float64)

_MATRICES = {2: (_BT_F2, _G_F2, _AT_F2), 4: (_BT_F4, _G_F4, _AT_F4)}


def transform_matrices(tile: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(Bᵀ, G, Aᵀ)`` of F(tile, 3) as float64 arrays (copies).

    In one dimension, ``Aᵀ @ ((G @ g) * (Bᵀ @ d))`` is the valid cross-correlation of the
    ``tile + 2`` samples ``d`` with the 3-tap filter ``g``.

    >>> bt, g, at = transform_matrices(2)
    >>> d, taps = np.array([1.0, 2.0, 3.0, 4.0]), np.array([1.0, 0.0, -1.0])
    >>> at @ ((g @ taps) * (bt @ d))
    array([-2., -2.])
    """
    if tile not in _MATRICES:
        raise ValueError(f"tile must be 2 or 4 (F(2x2,3x3) or F(4x4,3x3)), got {tile!r}")
    return tuple(matrix.copy() for matrix in _MATRICES[tile])


# --------------------------------------------------------------------------------------------
# backend protocol


def available() -> str | None:
    return None


def supports(spec: ConvSpec) -> str | None:
    if spec.dtype.kind == "c":
        return f"complex dtype {spec.dtype} is not supported (the transforms are real; use fft or im2col)"
    if (spec.kernel_height, spec.kernel_width) != (3, 3):
        return (f"Winograd F(m×m, 3×3) needs a 3×3 kernel, got {spec.kernel_height}×{spec.kernel_width} "
                f"(use im2col, fft or numba_cpu)")
    if spec.stride != (1, 1):
        return f"Winograd needs stride 1, got stride {spec.stride} (strided tiles would overlap nothing to reuse)"
    if spec.is_depthwise:
        return ("depthwise convolution (groups == in_channels) does not pay: with one input channel per "
                "group the GEMMs become elementwise products and the transforms cost more than the "
                "multiplies saved (use numba_cpu)")
    return None


def choose_tile(spec: ConvSpec) -> int:
    """The output tile side m of F(m×m, 3×3) used for ``spec``: 4, or 2 for small outputs.

    F(4×4) does 1.8× fewer multiplies than F(2×2) and its rounding error is still small: about
    5× that of F(2×2) (2e-6 relative in float32, 3e-15 in float64, see the module docstring), well
    inside 1e-4 and 1e-10 respectively. It loses where the output (of each dilation sub-image) is
    narrower than 8 along an axis: a 4×4 tile on a 5-wide output computes 8 columns for 5, and
    the smaller transforms of F(2×2) are cheaper per tile.

    >>> from fastconv.geometry import make_spec
    >>> choose_tile(make_spec((1, 64, 56, 56), (64, 64, 3, 3), padding=1, dtype=np.float32))
    4
    >>> choose_tile(make_spec((1, 64, 6, 6), (64, 64, 3, 3), padding=1, dtype=np.float32))
    2
    """
    sub_height = -(-spec.out_height // spec.dilation[0])
    sub_width = -(-spec.out_width // spec.dilation[1])
    return 4 if min(sub_height, sub_width) >= 8 else 2


def estimate_flops(spec: ConvSpec, tile: int | None = None) -> dict[str, int]:
    """Floating-point operations of each Winograd stage for ``spec``, for a cost model.

    Counts a multiply-add as 2 flops and counts only the nonzero, non-±1 entries of the
    transforms as multiplies (additions of the two-pass transforms are counted in full).
    ``direct`` is ``spec.flops`` (what direct convolution would do), for comparison.

    Returns
    -------
    dict
        ``input_transform``, ``gemm``, ``output_transform``, ``filter_transform``, ``total``
        (the sum of the four) and ``direct``, all ints, plus ``tile`` (the m used).

    >>> from fastconv.geometry import make_spec
    >>> costs = estimate_flops(make_spec((1, 64, 56, 56), (64, 64, 3, 3), padding=1))
    >>> costs["tile"], round(costs["direct"] / costs["total"], 1)
    (4, 3.2)
    """
    m = choose_tile(spec) if tile is None else tile
    bt, g, at = _MATRICES[m]
    alpha = m + 2
    tiles = spec.batch * _tile_count(spec, m)

    def two_pass(matrix, width):  # Mᵀ·X·M for X of (matrix columns × width), both passes
        nonzero = np.count_nonzero(matrix)
        return 2 * nonzero * width + nonzero * matrix.shape[0]

    input_per_tile = two_pass(bt, alpha)
    output_per_tile = two_pass(at, alpha)
    filter_per_kernel = two_pass(g, 3)
    cg, kg = spec.in_channels_per_group, spec.out_channels_per_group
    costs = {
        "input_transform": input_per_tile * tiles * spec.in_channels,
        "gemm": 2 * alpha * alpha * spec.groups * kg * cg * tiles,
        "output_transform": output_per_tile * tiles * spec.out_channels,
        "filter_transform": filter_per_kernel * spec.out_channels * cg,
    }
    costs["total"] = sum(costs.values())
    costs["direct"] = spec.flops
    costs["tile"] = m
    return costs


# --------------------------------------------------------------------------------------------
# tiles


def _sub_image_sizes(spec: ConvSpec):
    """Per dilation sub-image (r, s): its output height and width (space-to-batch)."""
    (dh, dw), (ho, wo) = spec.dilation, (spec.out_height, spec.out_width)
    heights = [-(-(ho - r) // dh) for r in range(min(dh, ho))]
    widths = [-(-(wo - s) // dw) for s in range(min(dw, wo))]
    return heights, widths


def _tile_count(spec: ConvSpec, m: int) -> int:
    heights, widths = _sub_image_sizes(spec)
    return sum(-(-h // m) for h in heights) * sum(-(-w // m) for w in widths)


def _tile_rows(spec: ConvSpec, m: int) -> np.ndarray:
    """One row per band of tiles: (image n, first output row, first output column, tiles in band).

    A band is one row of m×m tiles of one dilation sub-image; its tiles step through the output by
    (m·dh) rows and (m·dw) columns. Bands of the same image are consecutive, which keeps the
    input transform of a chunk reading nearby memory.
    """
    heights, widths = _sub_image_sizes(spec)
    dh = spec.dilation[0]
    rows = []
    for n in range(spec.batch):
        for r, height in enumerate(heights):
            for band in range(-(-height // m)):
                for s, width in enumerate(widths):
                    rows.append((n, r + dh * m * band, s, -(-width // m)))
    return np.array(rows, dtype=np.int64).reshape(-1, 4)


# --------------------------------------------------------------------------------------------
# numba kernels. Both work on a band of `tiles` tiles at a time with the tile index innermost, so
# the transforms are loops of scalar × vector multiply-adds over contiguous memory (vectorised by
# LLVM); zero entries of the transform matrices are skipped outside those loops.


@njit(cache=True, parallel=True, fastmath=True)
def _input_transform(x, bands, band_start, pad_top, pad_left, dil_h, dil_w, bt, v):
    """V[e, c, t] = (Bᵀ d B)[e] for every tile t of the bands and every input channel c.

    ``d`` is the α×α patch of the zero-padded input whose top-left corner, in output coordinates,
    is the tile's first output; rows and columns step by the dilation. Reads outside ``x`` are the
    zero padding.
    """
    alpha = bt.shape[0]
    m = alpha - 2
    channels, height, width = x.shape[1], x.shape[2], x.shape[3]
    band_count = bands.shape[0]
    for job in prange(band_count * channels):
        band, c = job // channels, job % channels
        n, row0, col0, tiles = bands[band, 0], bands[band, 1], bands[band, 2], bands[band, 3]
        t0 = band_start[band]
        line = np.empty(m * tiles + 2, dtype=v.dtype)
        patch = np.empty((alpha, alpha, tiles), dtype=v.dtype)  # d[i, j, tile]
        half = np.zeros((alpha, alpha, tiles), dtype=v.dtype)   # (Bᵀ d)[i', j, tile]
        for i in range(alpha):
            row = row0 + dil_h * i - pad_top
            if 0 <= row < height:
                for q in range(m * tiles + 2):
                    col = col0 + dil_w * q - pad_left
                    line[q] = x[n, c, row, col] if 0 <= col < width else 0.0
            else:
                line[:] = 0.0
            for j in range(alpha):
                for t in range(tiles):
                    patch[i, j, t] = line[m * t + j]
        for i2 in range(alpha):
            for i in range(alpha):
                coefficient = bt[i2, i]
                if coefficient != 0.0:
                    for j in range(alpha):
                        for t in range(tiles):
                            half[i2, j, t] += coefficient * patch[i, j, t]
        for i2 in range(alpha):
            for j2 in range(alpha):
                out = v[i2 * alpha + j2, c, t0:t0 + tiles]
                out[:] = 0.0
                for j in range(alpha):
                    coefficient = bt[j2, j]
                    if coefficient != 0.0:
                        for t in range(tiles):
                            out[t] += coefficient * half[i2, j, t]


@njit(cache=True, parallel=True, fastmath=True)
def _output_transform(products, bands, band_start, dil_h, dil_w, at, bias, out):
    """out[n, k, tile outputs] = bias[k] + (Aᵀ M A) for every tile of the bands and channel k."""
    m, alpha = at.shape
    out_channels, out_height, out_width = out.shape[1], out.shape[2], out.shape[3]
    band_count = bands.shape[0]
    for job in prange(band_count * out_channels):
        band, k = job // out_channels, job % out_channels
        n, row0, col0, tiles = bands[band, 0], bands[band, 1], bands[band, 2], bands[band, 3]
        t0 = band_start[band]
        half = np.zeros((m, alpha, tiles), dtype=out.dtype)  # (Aᵀ M)[i, j', tile]
        for i in range(m):
            for i2 in range(alpha):
                coefficient = at[i, i2]
                if coefficient != 0.0:
                    for j2 in range(alpha):
                        source = products[i2 * alpha + j2, k, t0:t0 + tiles]
                        for t in range(tiles):
                            half[i, j2, t] += coefficient * source[t]
        tile_out = np.empty(tiles, dtype=out.dtype)
        for i in range(m):
            row = row0 + dil_h * i
            if row >= out_height:
                break
            for j in range(m):
                tile_out[:] = bias[k]
                for j2 in range(alpha):
                    coefficient = at[j, j2]
                    if coefficient != 0.0:
                        for t in range(tiles):
                            tile_out[t] += coefficient * half[i, j2, t]
                for t in range(tiles):
                    col = col0 + dil_w * (m * t + j)
                    if col < out_width:
                        out[n, k, row, col] = tile_out[t]


# --------------------------------------------------------------------------------------------
# filter transform, cached


_FILTER_CACHE_ENTRIES = 16
_FILTER_CACHE_BYTES = 256 << 20
_filter_cache: OrderedDict = OrderedDict()  # key -> (copy of the weight, transformed weight)
_filter_cache_lock = threading.Lock()


def _transform_filters(weight: np.ndarray, m: int) -> np.ndarray:
    """U[e, k, c] = (G g Gᵀ)[e] for filter g = weight[k, c], computed in float64."""
    g = _MATRICES[m][1]
    out_channels, channels_per_group = weight.shape[:2]
    transformed = np.einsum("ai,kcij,bj->abkc", g, weight.astype(np.float64, copy=False), g, optimize=True)
    return np.ascontiguousarray(transformed.reshape((m + 2) ** 2, out_channels, channels_per_group),
                                dtype=weight.dtype)


def _cached_filter_transform(weight: np.ndarray, m: int) -> np.ndarray:
    """The transformed filters of ``weight``, reused while the weight's values are unchanged.

    Keyed by the identity of the array (plus shape, dtype and tile); a hit is only used when a
    stored copy still equals ``weight``, so an in-place change of the weight is never served
    stale. That comparison reads the weight once more, far less than the transform writes
    ((m+2)²/9 times the weight). Bounded by entries and bytes; safe to call from many threads.
    """
    key = (id(weight), weight.shape, weight.dtype.str, m)
    with _filter_cache_lock:
        entry = _filter_cache.get(key)
        if entry is not None:
            _filter_cache.move_to_end(key)
    if entry is not None and np.array_equal(entry[0], weight):
        return entry[1]
    transformed = _transform_filters(weight, m)
    size = weight.nbytes + transformed.nbytes
    if size <= _FILTER_CACHE_BYTES // 4:
        with _filter_cache_lock:
            _filter_cache[key] = (weight.copy(), transformed)
            total = sum(a.nbytes + b.nbytes for a, b in _filter_cache.values())
            while len(_filter_cache) > _FILTER_CACHE_ENTRIES or total > _FILTER_CACHE_BYTES:
                _, (old_weight, old_transformed) = _filter_cache.popitem(last=False)
                total -= old_weight.nbytes + old_transformed.nbytes
    return transformed


# --------------------------------------------------------------------------------------------
# BLAS threads

_threadpool_controller = None


def _blas_threads(count: int):
    """A context manager limiting BLAS to ``count`` threads (the controller is built once: cheap)."""
    global _threadpool_controller
    if _threadpool_controller is None:
        from threadpoolctl import ThreadpoolController

        _threadpool_controller = ThreadpoolController()
    return _threadpool_controller.limit(limits=count, user_api="blas")


# --------------------------------------------------------------------------------------------
# the pipeline


def _chunks(bands: np.ndarray, tiles_per_chunk: int):
    """Split the bands into consecutive runs of at most ``tiles_per_chunk`` tiles (at least one band)."""
    start, count = 0, 0
    for index, tiles in enumerate(bands[:, 3]):
        if count and count + tiles > tiles_per_chunk:
            yield start, index
            start, count = index, 0
        count += tiles
    yield start, len(bands)


def run(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, spec: ConvSpec,
        tile: int | None = None) -> np.ndarray:
    m = choose_tile(spec) if tile is None else tile
    bt, _, at = (matrix.astype(spec.dtype) for matrix in _MATRICES[m])
    alpha = m + 2
    groups, cg, kg = spec.groups, spec.in_channels_per_group, spec.out_channels_per_group
    channels, out_channels = spec.in_channels, spec.out_channels

    filters = _cached_filter_transform(weight, m)                    # (α², K, Cg)
    filters_by_group = filters.reshape(alpha * alpha, groups, kg, cg).transpose(1, 0, 2, 3)
    out = np.empty(spec.out_shape, dtype=spec.dtype)
    bias = np.zeros(out_channels, dtype=spec.dtype) if bias is None else bias

    bands = _tile_rows(spec, m)
    itemsize = spec.dtype.itemsize
    tiles_per_chunk = max(1, config.workspace_bytes // (alpha * alpha * (channels + out_channels) * itemsize))
    (pad_top, _), (pad_left, _) = spec.padding
    dil_h, dil_w = spec.dilation

    import numba

    numba.set_num_threads(min(config.threads, numba.config.NUMBA_NUM_THREADS))
    with _blas_threads(config.threads):
        for first, last in _chunks(bands, tiles_per_chunk):
            chunk = bands[first:last]
            band_start = np.concatenate(([0], np.cumsum(chunk[:, 3])))
            tiles = int(band_start[-1])
            inputs = np.empty((alpha * alpha, channels, tiles), dtype=spec.dtype)
            _input_transform(x, chunk, band_start, pad_top, pad_left, dil_h, dil_w, bt, inputs)
            products = np.empty((alpha * alpha, out_channels, tiles), dtype=spec.dtype)
            if groups == 1:
                np.matmul(filters, inputs, out=products)
            else:  # groups as a batch dimension: (G, α², Kg, Cg) · (G, α², Cg, tiles)
                np.matmul(filters_by_group,
                          inputs.reshape(alpha * alpha, groups, cg, tiles).transpose(1, 0, 2, 3),
                          out=products.reshape(alpha * alpha, groups, kg, tiles).transpose(1, 0, 2, 3))
            _output_transform(products, chunk, band_start, dil_h, dil_w, at, bias, out)
    return out
