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

(computed here as ``M[e]ᵀ (tiles × K) = V[e]ᵀ (tiles × C) · U[e]ᵀ (C × K)``, per group for
grouped convolution). So a layer costs: an input transform (numba), α² GEMMs (numpy ``matmul`` on
BLAS) and an output transform ``Aᵀ M A`` (numba), which also adds the bias and writes the output.

Scheduling (all measured, see docs/performance/winograd.md): the stages run on ``config.threads`` Python
threads that sleep when idle, with BLAS limited to one thread (threadpoolctl) and numba kernels
that release the GIL. Running the transforms in numba's OpenMP pool and the GEMMs in OpenBLAS's
pool instead made each pool's busy-waiting workers steal the cores from the other. When the
transformed filters are small (≤ 2 MiB), each thread runs the whole pipeline on its own blocks of
tiles, sized so that V and M stay in its L2 cache; larger filters would be streamed from memory
once per block, so those layers run stage by stage over chunks of tiles, each stage split across
the threads (the GEMMs by transform element). The transformed tiles stay within
``fastconv.config.workspace_bytes`` (the stage-by-stage schedule also keeps channels-last copies
of the whole input and output); the filter transform is cached (see
:func:`_cached_filter_transform`).

Where the matrices come from: F(m, 3) evaluates the product of the data and filter polynomials at
m + 2 points (the Toom–Cook / Chinese-remainder construction). F(2, 3) uses 0, 1, -1, ∞ and
F(4, 3) uses 0, 1, -1, 2, -2, ∞, the matrices of Lavin & Gray's paper (§4.1, §4.2). Larger tiles
need larger points and lose accuracy fast, which is why production libraries stop at F(4×4, 3×3)
for float32; ``tests/test_winograd.py`` checks ``Aᵀ[(G g) ⊙ (Bᵀ d)] = correlate(d, g)`` in
exact rational arithmetic for both.

Accuracy (measured by ``benchmarks/compare/compare_winograd.py``: relative error max|err| / max|ref|
against the float64 reference, standard-normal data, ResNet's 64-channel and VGG's 512-channel
3×3 layers): float32 F(2×2) 3e-7 to 6e-7, F(4×4) 6e-6 to 1e-5; float64 F(2×2) 2e-15 to 5e-15,
F(4×4) 1e-14 to 2e-14. F(4×4)'s points ±2 scale values by up to ~100 before they cancel, hence
its larger error. :func:`choose_tile` picks the faster of the two (see there); both are well
inside the test tolerances (1e-4 for float32, 1e-10 for float64).

Dilation by space-to-batch: a 3×3 convolution with dilation (dh, dw) reads rows ``i, i + dh,
i + 2dh`` of the padded input for output row ``i``. Output rows ``i ≡ r (mod dh)`` therefore
only read input rows ``≡ r (mod dh)``: they are an *undilated* 3×3 convolution of the sub-image
``x_pad[r::dh, s::dw]``, written to ``out[r::dh, s::dw]``. A dilated convolution is dh·dw
undilated ones on interleaved sub-images (DeepLab's "atrous" trick run backwards). Here no
sub-image is materialised: tiles simply step through the padded input by (dh, dw), and all tiles
of all sub-images share the same GEMMs.

Layout: the transforms run with channels innermost (whole AVX vectors), so the NCHW input is
copied into a zero-padded channels-last buffer (the padding is materialised there, which removes
all bounds checks from the transform) and the output is written channels-last and copied back.
In the fused schedule each thread does these copies for its own block of tile rows, while the
data is in its cache.

Non-finite values: the transforms add and subtract the values of a tile, so an inf would turn into
NaN (inf - inf) where direct convolution gives ±inf, and with F(4×4) it could spread to outputs of
the same tiles that do not read it; values near the dtype's limit can overflow in the transforms
(F(4×4) scales by up to ~100) where direct sums do not. Any of these leaves a non-finite output,
so each thread checks the outputs it has just written (``np.isfinite`` on data still in its
cache) and, when one is not finite, the call is redone by direct summation (the ``im2col``
backend), which puts NaN and inf where torch does.

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

import contextlib
import os
import threading
from collections import OrderedDict

import numpy as np
from numba import njit

from fastconv import config
from fastconv.thread_pools import blas_threads, reinitialise_after_fork
from fastconv.backends import FAST_MATH
from fastconv.backends.work import dtype_work, io_bytes
from fastconv.geometry import ConvSpec

name = "winograd"
thread_pool = "python"  # see fastconv.backends: what auto charges for switching pools

__all__ = ["available", "choose_tile", "estimate_flops", "run", "stages", "supports", "transform_matrices"]

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
        return (f"Winograd needs stride 1, got stride {spec.stride} (its tiles compute every output of a "
                f"window; use im2col or numba_cpu)")
    if spec.is_depthwise:
        return ("depthwise convolution (groups == in_channels) does not pay: with one input channel per "
                "group the GEMMs become elementwise products and the transforms cost more than the "
                "multiplies saved (use numba_cpu)")
    return None


# Rates for choose_tile's cost model, measured on the development machine (2 cores, float32,
# benchmarks/compare/compare_winograd.py): GEMM flops of this pipeline, and the bandwidth at which its
# GEMMs stream the transformed filters when few tiles share them. Only their ratio matters.
#: Seconds per unit of each cost term (fitted by ``fastconv tune --calibrate``; see
#: :mod:`fastconv.auto.constants` for where and how the shipped values were measured).
COST_CONSTANTS = {"byte": 2.45e-10, "call": 0.000125, "float64_factor": 0.5, "gemm_flop": 1.97e-12,
                  "piece": 7.14e-06, "transform_flop": 7.81e-19}

#: The resource each term's constant scales with where the term's name does not say (see
#: :func:`fastconv.auto.constants.term_resource`): ``piece`` is a fixed cost per dilation sub-image.
COST_RESOURCES = {"piece": "call"}

# Rates (measured once, not per machine) that decide F(2x2) against F(4x4) in choose_tile.
_GEMM_FLOPS_PER_SECOND = 2.0e11
_FILTER_BYTES_PER_SECOND = 1.7e10


def choose_tile(spec: ConvSpec) -> int:
    """The output tile side m of F(m×m, 3×3) used for ``spec``: 2 or 4, whichever costs less.

    F(4×4) does 1.8× fewer multiplies per output than F(2×2), and its rounding error is still
    small (float32 ≤ 1e-5 relative, float64 ≈ 2e-14 on 512-channel layers; F(2×2): 6e-7, 5e-15),
    so accuracy does not decide here. Two things make F(2×2) cheaper: outputs (of each dilation
    sub-image) so small that 4×4 tiles are mostly padding, and layers with few tiles and many
    channels (VGG's 14×14×512), where the GEMMs are bound by reading the transformed filters,
    (m+2)²·C·K values, 2.25× more for F(4×4). The estimate counts flops (:func:`estimate_flops`)
    at a GEMM rate plus filter bytes at a memory rate, both measured.

    >>> from fastconv.geometry import make_spec
    >>> choose_tile(make_spec((1, 64, 56, 56), (64, 64, 3, 3), padding=1, dtype=np.float32))
    4
    >>> choose_tile(make_spec((1, 512, 14, 14), (512, 512, 3, 3), padding=1, dtype=np.float32))
    2
    """
    def seconds(m):
        flops = estimate_flops(spec, m)["total"]
        filter_bytes = (m + 2) ** 2 * spec.in_channels_per_group * spec.out_channels * spec.dtype.itemsize
        return flops / _GEMM_FLOPS_PER_SECOND + filter_bytes / _FILTER_BYTES_PER_SECOND

    return 4 if seconds(4) <= seconds(2) else 2


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
    (4, 3.4)
    """
    m = choose_tile(spec) if tile is None else tile
    bt, g, at = _MATRICES[m]
    alpha = m + 2
    tiles = spec.batch * _tile_count(spec, m)

    def two_pass(matrix, width):  # Mᵀ·X·M for X of (matrix columns × width), both passes
        nonzero = int(np.count_nonzero(matrix))
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


def cost_terms(spec: ConvSpec, rank: int | None = None) -> dict[str, float]:
    """Input and output transforms per tile, and (m+2)² GEMMs of (K × C/groups) by (C/groups × tiles).

    ``(m+2)² / (9 m²)`` of direct convolution's multiplies; the flops are :func:`estimate_flops`'s
    (filters are transformed once and cached, not per call). A dilated 3×3 runs as
    ``dilation_h * dilation_w`` undilated ones on interleaved sub-images ("pieces").
    """
    work = dtype_work(spec.dtype)
    flops = estimate_flops(spec)
    tile = 4 if spec.dtype == np.float32 else 2  # (the byte count's tile, as the shipped constants were fitted)
    alpha = tile + 2
    tiles = spec.batch * -(-spec.out_height // tile) * -(-spec.out_width // tile)
    return {
        "call": 1.0,
        "piece": float(spec.batch * spec.dilation[0] * spec.dilation[1]),
        "transform_flop": float(flops["total"] - flops["gemm"] - flops["filter_transform"]) * work,
        "gemm_flop": float(flops["gemm"]) * work,
        "byte": io_bytes(spec) + alpha * alpha * tiles * (spec.in_channels + spec.out_channels) * spec.dtype.itemsize,
    }


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


def _tile_origins(spec: ConvSpec, m: int) -> np.ndarray:
    """(tiles, 3) int64: image n, output row and output column of each tile's first output.

    Tile (a, b) of dilation sub-image (r, s) covers outputs ``r + dh·(m·a + i)``,
    ``s + dw·(m·b + j)`` for i, j < m, and reads the padded input at ``r + dh·(m·a + i)``,
    ``s + dw·(m·b + j)`` for i, j < m + 2. Tiles are ordered image by image, row of tiles by row
    of tiles, so that consecutive tiles read neighbouring memory.
    """
    heights, widths = _sub_image_sizes(spec)
    dh, dw = spec.dilation
    rows = np.concatenate([r + dh * m * np.arange(-(-h // m)) for r, h in enumerate(heights)])
    cols = np.concatenate([s + dw * m * np.arange(-(-w // m)) for s, w in enumerate(widths)])
    n, row, col = np.meshgrid(np.arange(spec.batch), rows, cols, indexing="ij")
    return np.stack([n.ravel(), row.ravel(), col.ravel()], axis=1).astype(np.int64)


# --------------------------------------------------------------------------------------------
# the transforms (numba). Vectors run over channels, contiguous in the channels-last input and
# output copies and in the workspace layouts (α², G, tiles, Cg) and (α², G, tiles, Kg); Bᵀ and
# Aᵀ are written out as sums, so every line is whole-vector register arithmetic that LLVM
# vectorises. Each call does a range of tiles; each thread gets its own range (disjoint writes).


@njit(cache=True, nogil=True)
def _transpose(source, target):
    """target[j, i] = source[i, j] (both 2-D), the copy between NCHW and channels-last rows.

    In 16×16 blocks, so that both the reads and the writes stay within a few cache lines;
    numpy's strided copy of the same transposition is ~10× slower.
    """
    rows, cols = source.shape
    for i0 in range(0, rows, 16):
        i1 = min(rows, i0 + 16)
        for j0 in range(0, cols, 16):
            j1 = min(cols, j0 + 16)
            for j in range(j0, j1):
                for i in range(i0, i1):
                    target[j, i] = source[i, j]


@njit(cache=True, nogil=True)
def _unpack_channels_first(out_pad, out, first, last):
    """out[n, :, row, :] from out_pad[n, row] for rows ``first`` to ``last`` (``index = n·Ho + row``)."""
    height = out.shape[2]
    for index in range(first, last):
        n, row = index // height, index % height
        _transpose(out_pad[n, row, :out.shape[3]], out[n, :, row, :])


@njit(cache=True, nogil=True)
def _pack_band(x, n, first_row, pad_top, pad_left, band):
    """band[r, pad_left + col, :] = x[n, :, first_row + r - pad_top, col], zero elsewhere.

    A band of rows of the zero-padded input of image ``n``, channels-last: one block of tiles'
    rows in the fused schedule (it stays in the thread's cache for the input transform), or all
    rows in the stage-by-stage one.
    """
    height, width = x.shape[2], x.shape[3]
    for r in range(band.shape[0]):
        row = first_row + r - pad_top
        if row < 0 or row >= height:
            band[r, :, :] = 0.0
            continue
        band[r, :pad_left, :] = 0.0
        band[r, pad_left + width:, :] = 0.0
        _transpose(x[n, :, row, :], band[r, pad_left:pad_left + width])


@njit(cache=True, nogil=True)
def _unpack_band(band, first_row, row_starts, dil_h, tile, n, out):
    """out[n, :, row, :] = band[row - first_row, :, :]ᵀ for the output rows of the given tile rows.

    ``row_starts`` holds the first output row of each row of tiles in the block; its tiles wrote
    rows ``row0 + dil_h·i`` (i < tile) of the band, and only those are copied (with dilation the
    band's other rows belong to other sub-images).
    """
    height = out.shape[2]
    for row0 in row_starts:
        for i in range(tile):
            row = row0 + dil_h * i
            if row >= height:
                break
            _transpose(band[row - first_row, :out.shape[3]], out[n, :, row, :])


@njit(cache=True, nogil=True, fastmath=FAST_MATH)
def _input_transform(x_pad, origins, dil_h, dil_w, inputs, first, last):
    """inputs[e, g, t, :] = (Bᵀ d B)[e] for tile t, d its α×α patch of the padded input.

    ``x_pad`` is the zero-padded input channels-last, (N, rows, cols, C), large enough for the
    last tiles' overhang (no bounds checks here: run() sizes it from the tile origins). The
    patch of a tile starting at output (row0, col0) is ``x_pad`` at rows ``row0 + dil_h·i`` and
    columns ``col0 + dil_w·j``. ``inputs`` is (α², G, tiles, Cg), α = 4 or 6 (F(2×2) or
    F(4×4)); tiles ``first`` to ``last`` are done.

    Bᵀ is written out as the sums of its rows (Lavin & Gray's matrices above) with the loop
    over channels innermost: each line is then whole-vector arithmetic on registers, about 4×
    faster than multiplying by Bᵀ's entries in a loop, which reloads and stores an accumulator
    vector per entry.
    """
    alpha = 6 if inputs.shape[0] == 36 else 4
    groups, per_group = inputs.shape[1], inputs.shape[3]
    channels = x_pad.shape[3]
    half = np.empty((alpha, alpha, channels), dtype=x_pad.dtype)   # half[j, i', c] = (Bᵀ d)[i', j]
    for t in range(first, last):
        n, row0, col0 = origins[t, 0], origins[t, 1], origins[t, 2]
        for j in range(alpha):  # columns of the patch: Bᵀ d
            col = col0 + dil_w * j
            if alpha == 6:
                for c in range(channels):
                    d0, d1, d2 = x_pad[n, row0, col, c], x_pad[n, row0 + dil_h, col, c], x_pad[n, row0 + 2 * dil_h, col, c]
                    d3, d4 = x_pad[n, row0 + 3 * dil_h, col, c], x_pad[n, row0 + 4 * dil_h, col, c]
                    d5 = x_pad[n, row0 + 5 * dil_h, col, c]
                    half[j, 0, c] = 4 * d0 - 5 * d2 + d4
                    half[j, 1, c] = d3 + d4 - 4 * (d1 + d2)
                    half[j, 2, c] = d4 - d3 + 4 * (d1 - d2)
                    half[j, 3, c] = d4 - d2 + 2 * (d3 - d1)
                    half[j, 4, c] = d4 - d2 - 2 * (d3 - d1)
                    half[j, 5, c] = 4 * d1 - 5 * d3 + d5
            else:
                for c in range(channels):
                    d0, d1 = x_pad[n, row0, col, c], x_pad[n, row0 + dil_h, col, c]
                    d2, d3 = x_pad[n, row0 + 2 * dil_h, col, c], x_pad[n, row0 + 3 * dil_h, col, c]
                    half[j, 0, c] = d0 - d2
                    half[j, 1, c] = d1 + d2
                    half[j, 2, c] = d2 - d1
                    half[j, 3, c] = d1 - d3
        for i2 in range(alpha):  # rows of Bᵀ d: (Bᵀ d) B
            e = i2 * alpha
            for g in range(groups):
                base = g * per_group
                if alpha == 6:
                    for c in range(per_group):
                        d0, d1, d2 = half[0, i2, base + c], half[1, i2, base + c], half[2, i2, base + c]
                        d3, d4, d5 = half[3, i2, base + c], half[4, i2, base + c], half[5, i2, base + c]
                        inputs[e, g, t, c] = 4 * d0 - 5 * d2 + d4
                        inputs[e + 1, g, t, c] = d3 + d4 - 4 * (d1 + d2)
                        inputs[e + 2, g, t, c] = d4 - d3 + 4 * (d1 - d2)
                        inputs[e + 3, g, t, c] = d4 - d2 + 2 * (d3 - d1)
                        inputs[e + 4, g, t, c] = d4 - d2 - 2 * (d3 - d1)
                        inputs[e + 5, g, t, c] = 4 * d1 - 5 * d3 + d5
                else:
                    for c in range(per_group):
                        d0, d1 = half[0, i2, base + c], half[1, i2, base + c]
                        d2, d3 = half[2, i2, base + c], half[3, i2, base + c]
                        inputs[e, g, t, c] = d0 - d2
                        inputs[e + 1, g, t, c] = d1 + d2
                        inputs[e + 2, g, t, c] = d2 - d1
                        inputs[e + 3, g, t, c] = d1 - d3


@njit(cache=True, nogil=True, fastmath=FAST_MATH)
def _output_transform(products, origins, dil_h, dil_w, bias, out_pad, first, last):
    """out_pad[n, tile's outputs, :] = bias + (Aᵀ M A) for every tile t, M = products[:, :, t, :].

    ``out_pad`` is the output channels-last, (N, rows, cols, K), with room for the last tiles'
    overhang (run() copies out the valid part). Aᵀ is written out as in :func:`_input_transform`.
    Tiles ``first`` to ``last`` are done.
    """
    alpha = 6 if products.shape[0] == 36 else 4
    m = alpha - 2
    groups, per_group = products.shape[1], products.shape[3]
    out_channels = out_pad.shape[3]
    half = np.empty((alpha, m, out_channels), dtype=out_pad.dtype)  # half[j', i, k] = (Aᵀ M)[i, j']
    for t in range(first, last):
        n, row0, col0 = origins[t, 0], origins[t, 1], origins[t, 2]
        for j2 in range(alpha):  # columns of M: Aᵀ M
            for g in range(groups):
                base = g * per_group
                if alpha == 6:
                    for k in range(per_group):
                        m0, m1, m2 = products[j2, g, t, k], products[6 + j2, g, t, k], products[12 + j2, g, t, k]
                        m3, m4, m5 = products[18 + j2, g, t, k], products[24 + j2, g, t, k], products[30 + j2, g, t, k]
                        half[j2, 0, base + k] = m0 + m1 + m2 + m3 + m4
                        half[j2, 1, base + k] = m1 - m2 + 2 * (m3 - m4)
                        half[j2, 2, base + k] = m1 + m2 + 4 * (m3 + m4)
                        half[j2, 3, base + k] = m1 - m2 + 8 * (m3 - m4) + m5
                else:
                    for k in range(per_group):
                        m0, m1 = products[j2, g, t, k], products[4 + j2, g, t, k]
                        m2, m3 = products[8 + j2, g, t, k], products[12 + j2, g, t, k]
                        half[j2, 0, base + k] = m0 + m1 + m2
                        half[j2, 1, base + k] = m1 - m2 - m3
        for i in range(m):  # rows of Aᵀ M: (Aᵀ M) A, plus the bias
            row = row0 + dil_h * i
            if alpha == 6:
                for k in range(out_channels):
                    m0, m1, m2 = half[0, i, k], half[1, i, k], half[2, i, k]
                    m3, m4, m5 = half[3, i, k], half[4, i, k], half[5, i, k]
                    out_pad[n, row, col0, k] = bias[k] + m0 + m1 + m2 + m3 + m4
                    out_pad[n, row, col0 + dil_w, k] = bias[k] + m1 - m2 + 2 * (m3 - m4)
                    out_pad[n, row, col0 + 2 * dil_w, k] = bias[k] + m1 + m2 + 4 * (m3 + m4)
                    out_pad[n, row, col0 + 3 * dil_w, k] = bias[k] + m1 - m2 + 8 * (m3 - m4) + m5
            else:
                for k in range(out_channels):
                    m0, m1, m2, m3 = half[0, i, k], half[1, i, k], half[2, i, k], half[3, i, k]
                    out_pad[n, row, col0, k] = bias[k] + m0 + m1 + m2
                    out_pad[n, row, col0 + dil_w, k] = bias[k] + m1 - m2 - m3


# --------------------------------------------------------------------------------------------
# filter transform, cached


_FILTER_CACHE_ENTRIES = 16
_FILTER_CACHE_BYTES = 256 << 20
_filter_cache: OrderedDict = OrderedDict()  # key -> (copy of the weight, transformed filters)
_filter_cache_lock = reinitialise_after_fork(threading.Lock())


@njit(cache=True, nogil=True)
def _filter_transform_kernel(weight, g, groups, transformed, first, last):
    """transformed[e, group, c, k] = (G w[group·Kg + k, c] Gᵀ)[e] for channels c in [first, last).

    Computed in float64, rounded once to the weight's dtype.
    """
    alpha = g.shape[0]
    out_channels = weight.shape[0]
    out_per_group = out_channels // groups
    for c in range(first, last):  # k innermost: the writes run along transformed's last axis
        half = np.empty((alpha, 3))
        for kk in range(out_channels):
            group, k = kk // out_per_group, kk % out_per_group
            for a in range(alpha):                                # G w
                for j in range(3):
                    half[a, j] = g[a, 0] * weight[kk, c, 0, j] + g[a, 1] * weight[kk, c, 1, j] + g[a, 2] * weight[kk, c, 2, j]
            for a in range(alpha):                                # (G w) Gᵀ
                for b in range(alpha):
                    transformed[a * alpha + b, group, c, k] = half[a, 0] * g[b, 0] + half[a, 1] * g[b, 1] + half[a, 2] * g[b, 2]


def _transform_filters(weight: np.ndarray, m: int, groups: int) -> np.ndarray:
    """U[e, g, c, k] = (G w[g·Kg + k, c] Gᵀ)[e], computed in float64, stored in the weight's dtype."""
    out_channels, channels_per_group = weight.shape[:2]
    transformed = np.empty(((m + 2) ** 2, groups, channels_per_group, out_channels // groups), dtype=weight.dtype)
    _in_parallel(config.threads, channels_per_group, lambda first, last: _filter_transform_kernel(
        weight, _MATRICES[m][1], groups, transformed, first, last))
    return transformed


def _cached_filter_transform(weight: np.ndarray, m: int, groups: int) -> np.ndarray:
    """The transformed filters of ``weight``, reused while the weight's values are unchanged.

    Keyed by the identity of the array (with shape, dtype, tile and groups); a hit is only used
    when a stored copy still equals ``weight``, so an in-place change of the weight is never
    served stale. The comparison reads the weight once more, less than the transform writes
    ((m+2)²/9 times the weight). Bounded by entries and bytes; safe to call from many threads.
    """
    key = (id(weight), weight.shape, weight.dtype.str, m, groups)
    with _filter_cache_lock:
        entry = _filter_cache.get(key)
        if entry is not None:
            _filter_cache.move_to_end(key)
    if entry is not None and np.array_equal(entry[0], weight):
        return entry[1]
    transformed = _transform_filters(weight, m, groups)
    if weight.nbytes + transformed.nbytes <= _FILTER_CACHE_BYTES:
        with _filter_cache_lock:
            _filter_cache[key] = (weight.copy(), transformed)
            _filter_cache.move_to_end(key)
            total = sum(a.nbytes + b.nbytes for a, b in _filter_cache.values())
            while len(_filter_cache) > _FILTER_CACHE_ENTRIES or total > _FILTER_CACHE_BYTES:
                _, (old_weight, old_transformed) = _filter_cache.popitem(last=False)
                total -= old_weight.nbytes + old_transformed.nbytes
    return transformed


# --------------------------------------------------------------------------------------------
# the GEMMs and the pipeline

_pool = None
_pool_pid = None
_pool_lock = reinitialise_after_fork(threading.Lock())


def _thread_pool(threads: int):
    """The pool that runs the stages, one task per thread; idle workers sleep (no spinning).

    Rebuilt in a forked child, whose copy of the pool has no threads behind it.
    """
    global _pool, _pool_pid
    with _pool_lock:
        if _pool is None or _pool._max_workers < threads or _pool_pid != os.getpid():
            from concurrent.futures import ThreadPoolExecutor

            _pool = ThreadPoolExecutor(threads, thread_name_prefix="fastconv-winograd")
            _pool_pid = os.getpid()
        return _pool


def _in_parallel(threads: int, count: int, task) -> None:
    """Run ``task(first, last)`` on ``threads`` threads over even shares of ``range(count)``."""
    threads = min(threads, count)
    bounds = [count * part // threads for part in range(threads + 1)]
    if threads == 1:
        task(0, count)
        return
    pool = _thread_pool(threads)
    for future in [pool.submit(task, first, last) for first, last in zip(bounds[:-1], bounds[1:])]:
        future.result()


@np.errstate(invalid="ignore", over="ignore")  # inf/NaN inputs are expected (see Non-finite values above)
def _matmul(inputs, filters, out) -> None:
    np.matmul(inputs, filters, out=out)


def _batched_gemm(inputs, filters, products, threads: int) -> None:
    """products[e, g] = inputs[e, g] · filters[e, g] for all α²·G GEMMs, on ``threads`` threads."""
    count = inputs.shape[0] * inputs.shape[1]
    flat = (inputs.reshape(count, *inputs.shape[2:]), filters.reshape(count, *filters.shape[2:]),
            products.reshape(count, *products.shape[2:]))
    _in_parallel(threads, count, lambda first, last: _matmul(
        flat[0][first:last], flat[1][first:last], out=flat[2][first:last]))


_workspaces = threading.local()


def _workspace(role: str, size: int, dtype: np.dtype) -> np.ndarray:
    """A scratch array of ``size`` elements, kept per thread and reused by the next call.

    Fresh multi-megabyte arrays come from ``mmap`` and are page-faulted in on every call, which
    costs as much as a transform; reusing them avoids that. At most one buffer per role and
    thread, each within ``config.workspace_bytes``.
    """
    buffer = getattr(_workspaces, role, None)
    if buffer is None or buffer.dtype != dtype or buffer.size < size:
        buffer = np.empty(size, dtype=dtype)
        setattr(_workspaces, role, buffer)
    return buffer[:size]


# Filters up to this size stay in a core's L2 cache next to a block's V and M: then each thread
# runs the whole pipeline on its own blocks of tiles (no hand-offs between stages, V and M never
# leave L2). Larger filters would be streamed from memory once per block, so those layers run
# stage by stage on all tiles instead, each stage split across the threads.
_FUSED_FILTER_BYTES = 2 << 20
_FUSED_BLOCK_BYTES = 1 << 20


def _tiles_per_row(origins: np.ndarray) -> int:
    """How many tiles share the first tile's image and row (all rows of tiles have as many)."""
    return int(np.count_nonzero((origins[:, 0] == origins[0, 0]) & (origins[:, 1] == origins[0, 1])))


def _all_finite(values: np.ndarray) -> bool:
    """Whether every value is finite: the check of Non-finite values above, on data in cache."""
    return bool(np.isfinite(values).all())


def _run_fused(x, origins, filters, bias, out, spec, m):
    """Each thread runs all stages on its own blocks of whole rows of tiles of one image.

    Per block: the input rows it reads are packed channels-last into a band (zero-padded), the
    tiles are transformed, multiplied and transformed back into an output band, which is copied
    into ``out``. Everything between reading ``x`` and writing ``out`` stays in the thread's L2.
    The blocks' bookkeeping is computed here, vectorised, so that the threads run little Python
    (which holds the GIL) per block.
    """
    alpha2, groups, cg, kg = filters.shape
    (dh, dw), alpha = spec.dilation, m + 2
    (pad_top, _), (pad_left, _) = spec.padding
    per_tile = alpha2 * (spec.in_channels + spec.out_channels) * spec.dtype.itemsize
    per_row = _tiles_per_row(origins)
    row_origins = np.ascontiguousarray(origins[::per_row])  # (n, row0, col0) of each row of tiles
    rows_per_image = len(row_origins) // spec.batch
    block_rows = max(1, _fused_block_bytes() // (per_tile * per_row))
    starts = np.concatenate([np.arange(n * rows_per_image, (n + 1) * rows_per_image, block_rows)
                             for n in range(spec.batch)])
    stops = np.minimum(starts + block_rows, (starts // rows_per_image + 1) * rows_per_image)
    lows = np.minimum.reduceat(row_origins[:, 1], starts)
    highs = np.maximum.reduceat(row_origins[:, 1], starts)
    local = origins.copy()  # tile origins within their block's bands
    local[:, 0] = 0
    local[:, 1] -= np.repeat(lows, (stops - starts) * per_row)
    band_cols = int(origins[:, 2].max()) + dw * (alpha - 1) + 1
    out_cols = int(origins[:, 2].max()) + dw * (m - 1) + 1
    band_size = (int((highs - lows).max()) + dh * (alpha - 1) + 1) * band_cols * spec.in_channels
    out_band_size = (int((highs - lows).max()) + dh * (m - 1) + 1) * out_cols * spec.out_channels
    blocks = [(int(row_origins[a, 0]), int(a), int(b), int(low), int(high))
              for a, b, low, high in zip(starts, stops, lows, highs)]

    def share(first, last):  # blocks first..last
        inputs_buffer = _workspace("fused_inputs", alpha2 * spec.in_channels * block_rows * per_row, spec.dtype)
        products_buffer = _workspace("fused_products", alpha2 * spec.out_channels * block_rows * per_row, spec.dtype)
        band_buffer = _workspace("fused_band", band_size, spec.dtype)
        out_band_buffer = _workspace("fused_out_band", out_band_size, spec.dtype)
        for n, start, stop, low, high in blocks[first:last]:
            count = (stop - start) * per_row
            tiles = local[start * per_row:stop * per_row]
            band_rows, out_rows = high - low + dh * (alpha - 1) + 1, high - low + dh * (m - 1) + 1
            band = band_buffer[:band_rows * band_cols * spec.in_channels].reshape(band_rows, band_cols, spec.in_channels)
            out_band = out_band_buffer[:out_rows * out_cols * spec.out_channels].reshape(1, out_rows, out_cols, spec.out_channels)
            inputs = inputs_buffer[:alpha2 * spec.in_channels * count].reshape(alpha2, groups, count, cg)
            products = products_buffer[:alpha2 * spec.out_channels * count].reshape(alpha2, groups, count, kg)
            _pack_band(x, n, low, pad_top, pad_left, band)
            _input_transform(band.reshape(1, *band.shape), tiles, dh, dw, inputs, 0, count)
            _matmul(inputs, filters, out=products)
            _output_transform(products, tiles, dh, dw, bias, out_band, 0, count)
            if dh == dw == 1:  # the block's tiles wrote all of the band, which is in this thread's cache
                finite.append(_all_finite(out_band))
            _unpack_band(out_band[0], low, row_origins[start:stop, 1], dh, m, n, out)
            if dh > 1 or dw > 1:  # parts of the band belong to no tile here (stale): check what was copied
                rows = (row_origins[start:stop, 1, None] + dh * np.arange(m)).ravel()
                finite.append(_all_finite(out[n][:, rows[rows < out.shape[2]]]))

    finite = []  # one per block (list.append is atomic)
    _in_parallel(config.threads, len(blocks), share)
    return all(finite)


def _fused_block_bytes() -> int:
    return min(_FUSED_BLOCK_BYTES, config.workspace_bytes // config.threads)


def _channels_last_buffers(x, spec, origins, m):
    """The zero-padded input and the output, channels-last, with room for the tiles' overhang.

    The input is copied in once (NCHW → NHWC, by row bands on the threads), so that the input
    transform reads whole channel vectors and needs no bounds checks; the padding ring and the
    overhang are rewritten with zeros on every call (the buffers are reused workspaces).
    """
    (dh, dw), alpha = spec.dilation, m + 2
    (pad_top, _), (pad_left, _) = spec.padding
    batch, channels, height, width = x.shape
    rows = max(int(origins[:, 1].max()) + dh * (alpha - 1) + 1, pad_top + height)
    cols = max(int(origins[:, 2].max()) + dw * (alpha - 1) + 1, pad_left + width)
    x_pad = _workspace("x_pad", batch * rows * cols * channels, spec.dtype).reshape(batch, rows, cols, channels)

    def pack(first, last):
        for n in range(batch):
            _pack_band(x, n, first, pad_top, pad_left, x_pad[n, first:last])

    _in_parallel(config.threads, rows, pack)
    out_rows = int(origins[:, 1].max()) + dh * (m - 1) + 1
    out_cols = int(origins[:, 2].max()) + dw * (m - 1) + 1
    out_pad = _workspace("out_pad", batch * out_rows * out_cols * spec.out_channels, spec.dtype).reshape(
        batch, out_rows, out_cols, spec.out_channels)
    return x_pad, out_pad


def _run_staged(x, origins, filters, bias, out, spec, m):
    """Stage by stage over chunks of tiles (within ``config.workspace_bytes``), each stage split
    across the threads (the GEMMs by transform element), on channels-last copies of the input
    and output."""
    alpha2, groups, cg, kg = filters.shape
    per_tile = alpha2 * (spec.in_channels + spec.out_channels) * spec.dtype.itemsize
    tiles_per_chunk = max(1, config.workspace_bytes // per_tile)
    chunk_tiles = min(tiles_per_chunk, len(origins))
    x_pad, out_pad = _channels_last_buffers(x, spec, origins, m)
    inputs_buffer = _workspace("inputs", alpha2 * spec.in_channels * chunk_tiles, spec.dtype)
    products_buffer = _workspace("products", alpha2 * spec.out_channels * chunk_tiles, spec.dtype)
    for start in range(0, len(origins), tiles_per_chunk):
        chunk = origins[start:start + tiles_per_chunk]
        tiles = len(chunk)
        inputs = inputs_buffer[:alpha2 * spec.in_channels * tiles].reshape(alpha2, groups, tiles, cg)
        products = products_buffer[:alpha2 * spec.out_channels * tiles].reshape(alpha2, groups, tiles, kg)
        _in_parallel(config.threads, tiles, lambda first, last: _input_transform(
            x_pad, chunk, *spec.dilation, inputs, first, last))
        _batched_gemm(inputs, filters, products, config.threads)
        _in_parallel(config.threads, tiles, lambda first, last: _output_transform(
            products, chunk, *spec.dilation, bias, out_pad, first, last))
    finite = []  # one per share of the copy (list.append is atomic)

    def unpack(first, last):  # output rows n·Ho + row for first <= index < last
        _unpack_channels_first(out_pad, out, first, last)
        height, width = spec.out_height, spec.out_width
        for n in range(first // height, (last - 1) // height + 1):  # the rows just copied, in cache
            finite.append(_all_finite(out_pad[n, max(first - n * height, 0):min(last - n * height, height), :width]))

    _in_parallel(config.threads, spec.batch * spec.out_height, unpack)
    return all(finite)


def run(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, spec: ConvSpec,
        tile: int | None = None) -> np.ndarray:
    if spec.batch == 0:  # an empty batch: no tiles, so no chunk size to divide the work by
        return np.empty(spec.out_shape, dtype=spec.dtype)
    m = choose_tile(spec) if tile is None else tile
    filters = _cached_filter_transform(weight, m, spec.groups)        # (α², G, Cg, Kg)
    out = np.empty(spec.out_shape, dtype=spec.dtype)
    if out.size == 0:
        return out
    bias = np.zeros(spec.out_channels, dtype=spec.dtype) if bias is None else bias
    origins = _tile_origins(spec, m)
    per_tile = (m + 2) ** 2 * (spec.in_channels + spec.out_channels) * spec.dtype.itemsize
    with blas_threads(1):
        if filters.nbytes <= _FUSED_FILTER_BYTES and _tiles_per_row(origins) * per_tile <= _fused_block_bytes():
            finite = _run_fused(x, origins, filters, bias, out, spec, m)
        else:
            finite = _run_staged(x, origins, filters, bias, out, spec, m)
    if not finite:
        # A NaN or inf in x, the weight or the bias (or a transform that overflowed) reached the
        # output, where the transforms may have put NaN for inf or spread it over a tile: direct
        # summation puts them where torch does.
        from fastconv.backends import im2col

        return im2col.run(x, weight, bias, spec)
    return out


@contextlib.contextmanager
def stages(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, spec: ConvSpec, tile: int | None = None):
    """The stages of the pipeline as separate zero-argument callables, for timing where a call's
    time goes (``benchmarks/compare/compare_winograd.py`` times them).

    Within the ``with`` block BLAS is limited to one thread, as :func:`run` limits it, and each
    callable runs one stage of the stage-by-stage schedule on all tiles of the problem at once,
    on buffers prepared on entry:

    ``input_transform``
        the zero-padded channels-last copy of ``x`` and the transform of every tile, ``Bᵀ d B``;
    ``gemm``
        the (m+2)² GEMMs per group;
    ``output_transform``
        ``Aᵀ M A`` of every tile, plus the bias, and the copy back to NCHW (it returns the output:
        after the two stages before it, the convolution :func:`run` computes);
    ``filter_transform``
        ``G g Gᵀ`` of every filter (:func:`run` caches it per weight; timed here uncached).

    ``tile`` is the m of F(m×m, 3×3) (default: :func:`choose_tile`'s). A call of :func:`run` may
    take less than the sum of the stages: small filters run the stages fused, block by block in
    each core's cache.

    >>> from fastconv.geometry import make_spec
    >>> x, w = np.ones((1, 4, 8, 8), np.float32), np.ones((4, 4, 3, 3), np.float32)
    >>> with stages(x, w, None, make_spec(x.shape, w.shape, dtype=np.float32)) as calls:
    ...     sorted(calls)
    ['filter_transform', 'gemm', 'input_transform', 'output_transform']
    """
    reason = supports(spec)
    if reason is not None:
        raise ValueError(f"winograd cannot run this problem: {reason}")
    if spec.batch == 0 or 0 in spec.out_shape:
        raise ValueError(f"the problem has no outputs (output shape {spec.out_shape}): no stages to run")
    m = choose_tile(spec) if tile is None else tile
    if m not in _MATRICES:
        raise ValueError(f"tile must be 2 or 4 (F(2x2,3x3) or F(4x4,3x3)), got {tile!r}")
    filters = _transform_filters(weight, m, spec.groups)
    alpha2, groups, cg, kg = filters.shape
    origins = _tile_origins(spec, m)
    tiles = len(origins)
    inputs = np.zeros((alpha2, groups, tiles, cg), spec.dtype)
    products = np.zeros((alpha2, groups, tiles, kg), spec.dtype)
    out = np.empty(spec.out_shape, spec.dtype)
    bias = np.zeros(spec.out_channels, spec.dtype) if bias is None else bias
    with blas_threads(1):
        _, out_pad = _channels_last_buffers(x, spec, origins, m)

        def input_transform():
            x_pad, _ = _channels_last_buffers(x, spec, origins, m)
            _in_parallel(config.threads, tiles, lambda first, last: _input_transform(
                x_pad, origins, *spec.dilation, inputs, first, last))

        def output_transform():
            _in_parallel(config.threads, tiles, lambda first, last: _output_transform(
                products, origins, *spec.dilation, bias, out_pad, first, last))
            _in_parallel(config.threads, spec.batch * spec.out_height, lambda first, last: _unpack_channels_first(
                out_pad, out, first, last))
            return out

        yield {
            "input_transform": input_transform,
            "gemm": lambda: _batched_gemm(inputs, filters, products, config.threads),
            "output_transform": output_transform,
            "filter_transform": lambda: _transform_filters(weight, m, spec.groups),
        }
