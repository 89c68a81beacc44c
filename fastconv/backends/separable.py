"""``separable``: low-rank kernels as sums of column-times-row filters.

A kernel of rank ``r`` is a sum of ``r`` outer products, ``w = sum_i col_i ⊗ row_i`` (the singular
value decomposition finds them, with the singular values split evenly between the factors).
Correlating with one outer product is a 1-D pass down the columns followed by a 1-D pass along the
rows, so an output costs ``r · (kh + kw)`` multiply-adds instead of ``kh · kw``: a 31×31 Gaussian
needs 62 instead of 961. Gaussian, box, Sobel, Prewitt and every other outer-product kernel are
rank 1 exactly; blurs with a rounded corner or differences of Gaussians are rank 2 or 3.

The backend factors every (k, c) kernel of the weight and declines, naming the rank it found,
when some kernel is not low-rank enough to pay off: ``rank · (kh + kw) >= kh · kw`` (1×k and k×1
kernels are 1-D already and always accepted; they run as a single pass). Ranks are counted
numerically: singular values below ``tol · s_max`` are dropped, with ``tol = max(kh, kw) · eps``
of the compute dtype by default (``numpy.linalg.matrix_rank``'s rule), so the error of the
dropped terms is at rounding level. Because that needs the weight values and not only the
:class:`~fastconv.geometry.ConvSpec`, the decision lives in the optional ``supports_weight`` hook
of the backend protocol (see :mod:`fastconv.backends`), which the dispatcher consults after
``supports``.

The numba kernel runs one output row per task, in parallel over (image, output channel, row): for
each input channel and rank term it forms the row's column pass into a private buffer (rows
``i * stride + u * dilation`` of the padded input, so stride and dilation cost nothing extra) and
adds the row pass of that buffer (columns ``j * stride + v * dilation``) into the output row. Both
inner loops run along contiguous memory and vectorise. The zero padding is never materialised:
rows outside the image are skipped and the buffer's border columns stay zero. (Except for a 1-D
kernel holding NaN or inf, whose taps must meet the padding too, 0·NaN being NaN as in torch: then
the input is padded explicitly. 2-D kernels holding them are declined: they have no factors.)

Examples
--------
>>> import numpy as np, fastconv
>>> g = np.exp(-np.linspace(-2, 2, 9) ** 2)
>>> cols, rows = fastconv.separate(np.outer(g, g))
>>> cols.shape, rows.shape          # rank 1: one column factor, one row factor
((1, 9), (1, 9))
>>> x = np.random.default_rng(0).standard_normal((1, 1, 32, 32))
>>> y = fastconv.separable_conv2d(x, g, g, padding="same")
>>> bool(np.allclose(y, fastconv.conv2d(x, np.outer(g, g)[None, None], padding="same")))
True
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from fastconv.thread_pools import ParallelKernel
from fastconv.backends._weight_cache import WeightCache
from fastconv.backends import FAST_MATH
from fastconv.backends.work import dtype_work, io_bytes
from fastconv.geometry import ConvSpec, pad_input

name = "separable"

__all__ = ["available", "supports", "supports_weight", "run", "clear_caches", "cost_terms", "factor_kernels",
           "default_tolerance"]


def available() -> str | None:
    return None


def supports(spec: ConvSpec) -> str | None:
    return None  # every geometry and dtype; the weight decides (supports_weight)


# --------------------------------------------------------------------------------------------
# the decomposition


def default_tolerance(kernel_shape, dtype) -> float:
    """Singular values below this, relative to the largest, are rounding noise (numpy's ``matrix_rank`` rule)."""
    return max(kernel_shape) * float(np.finfo(dtype).eps)


def factor_kernels(kernels: np.ndarray, tol: float):
    """SVD of a stack of kernels (..., kh, kw): column factors (..., kh, kh∧kw), row factors
    (..., kh∧kw, kw), each with sqrt(s) folded in, and the numerical rank of each kernel."""
    wide = np.complex128 if kernels.dtype.kind == "c" else np.float64
    if min(kernels.shape[-2:]) == 1:
        # A 1-D kernel is its own single factor, times 1: exact, NaN-proof, and no SVD (which took
        # 45 ms for 65,536 1×1 kernels). Its rank is 1 unless it is all zeros (tol < 1).
        kernels = kernels.astype(wide)
        ones = np.ones(kernels.shape[:-2] + (1, 1), dtype=wide)
        ranks = np.any(kernels != 0, axis=(-2, -1)).astype(np.int64)
        return (ones, kernels, ranks) if kernels.shape[-2] == 1 else (kernels, ones, ranks)
    u, s, vt = np.linalg.svd(kernels.astype(wide), full_matrices=False)  # vt is V^H: w = u s vt
    ranks = np.count_nonzero(s > tol * s[..., :1], axis=-1)
    root = np.sqrt(s)
    return u * root[..., None, :], vt * root[..., :, None], ranks


# --------------------------------------------------------------------------------------------
# the backend


def _pays_off(rank: int, kernel_h: int, kernel_w: int) -> bool:
    if kernel_h == 1 or kernel_w == 1:
        return True  # a 1-D kernel is one pass of min(kh, kw) == 1 term: never worse than direct
    return rank * (kernel_h + kernel_w) < kernel_h * kernel_w


# Factors of recently used weights (see _weight_cache: never stale, even after in-place updates).
_FACTOR_CACHE_BYTES = 64 << 20
_factors = WeightCache(max_entries=8, max_bytes=_FACTOR_CACHE_BYTES)

#: Seconds per unit of each cost term (fitted by ``fastconv tune --calibrate``; see
#: :mod:`fastconv.auto.constants` for where and how the shipped values were measured).
COST_CONSTANTS = {"byte": 2.65e-11, "call": 1.79e-05, "float64_factor": 1.59, "kernel": 1.07e-06, "mac": 3.08e-11,
                  "svd_entry": 1.18e-07, "svd_flop": 8.83e-11}

#: The resource each term's constant scales with where the term's name does not say (see
#: :func:`fastconv.auto.constants.term_resource`): the kernels are factored by LAPACK on one thread.
COST_RESOURCES = {"kernel": "serial_compute", "svd_entry": "serial_compute", "svd_flop": "serial_compute"}


def clear_caches() -> None:
    """Forget the cached factors of every weight."""
    _factors.clear()


def _weight_factors(weight: np.ndarray, spec: ConvSpec):
    """``_factor`` of every (k, c) kernel of ``weight``, computed once per weight content and
    shared by ``supports_weight`` and ``run``."""
    tol = default_tolerance((spec.kernel_height, spec.kernel_width), spec.dtype)
    return _factors.get((weight.shape, weight.dtype.str, tol), weight, lambda: factor_kernels(weight, tol))


def supports_weight(weight: np.ndarray, spec: ConvSpec) -> str | None:
    """``None`` when every (k, c) kernel of ``weight`` is low-rank enough to pay off, else why not."""
    kernel_h, kernel_w = spec.kernel_height, spec.kernel_width
    if kernel_h == 1 or kernel_w == 1:
        return None
    if not np.isfinite(weight).all():
        return "weight holds NaN or infinity, which has no low-rank factorisation"
    _, _, ranks = _weight_factors(weight, spec)
    worst = np.unravel_index(np.argmax(ranks), ranks.shape)
    rank = int(ranks[worst])
    if _pays_off(rank, kernel_h, kernel_w):
        return None
    most = (kernel_h * kernel_w - 1) // (kernel_h + kernel_w)
    return (f"weight[{worst[0]}, {worst[1]}] has numerical rank {rank}; separable pays off only when "
            f"rank·(kh+kw) < kh·kw, i.e. rank <= {most} for {kernel_h}×{kernel_w} kernels")


@ParallelKernel
@njit(cache=True, parallel=True, fastmath=FAST_MATH)
def _separable_conv2d(x, cols, rows, ranks, out, top, left, stride_h, stride_w, dilation_h, dilation_w, groups):
    """out[n, k] += sum over c and rank terms r of rowpass(colpass(x[n, c], cols[k, c, r]), rows[k, c, r]).

    ``x`` is unpadded: rows and columns outside it (the zero padding) are skipped, not read.
    cols (K, Cg, R, kh), rows (K, Cg, R, kw), ranks (K, Cg): terms beyond ranks[k, c] are unused.
    """
    batch, _, height, width = x.shape
    out_channels, channels_per_group, _, kernel_h = cols.shape
    kernel_w = rows.shape[3]
    out_h, out_w = out.shape[2], out.shape[3]
    outs_per_group = out_channels // groups
    used_w = (out_w - 1) * stride_w + (kernel_w - 1) * dilation_w + 1  # padded columns the row pass reads
    first_col = min(left, used_w)                  # padded columns [first_col, last_col) hold x
    last_col = max(min(left + width, used_w), first_col)
    for task in prange(batch * out_channels * out_h):
        n = task // (out_channels * out_h)
        k = (task // out_h) % out_channels
        i = task % out_h
        group = k // outs_per_group
        column_pass = np.zeros(used_w, dtype=out.dtype)
        for c in range(channels_per_group):
            channel = group * channels_per_group + c
            for r in range(ranks[k, c]):
                inside = column_pass[first_col:last_col]  # the columns that hold x, not padding
                inside[:] = 0
                for u in range(kernel_h):
                    source_row = i * stride_h + u * dilation_h - top
                    if 0 <= source_row < height:
                        tap = cols[k, c, r, u]
                        source = x[n, channel, source_row, first_col - left:]
                        for col in range(last_col - first_col):  # from 0: no negative-index checks
                            inside[col] += source[col] * tap
                target = out[n, k, i]
                for v in range(kernel_w):
                    tap = rows[k, c, r, v]
                    if stride_w == 1:  # contiguous: vectorises
                        shifted = column_pass[v * dilation_w:]
                        for j in range(out_w):
                            target[j] += shifted[j] * tap
                    else:
                        offset = v * dilation_w
                        for j in range(out_w):
                            target[j] += column_pass[j * stride_w + offset] * tap


def _run_factors(x, cols, rows, ranks, bias, spec):
    out = np.zeros(spec.out_shape, dtype=spec.dtype)
    if bias is not None:
        out += bias[None, :, None, None]
    (top, _), (left, _) = spec.padding
    _separable_conv2d(x, np.ascontiguousarray(cols, dtype=spec.dtype), np.ascontiguousarray(rows, dtype=spec.dtype),
                      ranks.astype(np.int64), out, top, left, *spec.stride, *spec.dilation, spec.groups)
    return out


def run(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, spec: ConvSpec) -> np.ndarray:
    with np.errstate(invalid="ignore", over="ignore"):
        weight_sum = weight.sum()
    if not np.isfinite(weight_sum):
        # Only 1-D kernels get here with NaN or inf (supports_weight declines the rest). The column
        # pass skips rows in the zero padding, exact for finite taps; a NaN or inf tap must meet
        # the padding too (0·NaN is NaN, as in torch), so the padding is materialised.
        x = pad_input(x, spec)
        spec = spec.zero_padded()
    cols, rows, ranks = _weight_factors(weight, spec)
    max_rank = max(int(ranks.max()), 1)
    # (K, Cg, kh, R) -> (K, Cg, R, kh): one contiguous column factor per rank term
    cols = cols[..., :max_rank].transpose(0, 1, 3, 2)
    rows = rows[..., :max_rank, :]
    return _run_factors(x, cols, rows, ranks, bias, spec)


def cost_terms(spec: ConvSpec, rank: int | None = None) -> dict[str, float]:
    """A rank-``r`` kernel is ``r`` column passes and ``r`` row passes, after an SVD of every kernel.

    ``r * (kh + kw)`` taps per output instead of ``kh * kw``. The rank comes from the weight
    values, not the spec (None: unknown, assume full rank).
    """
    if rank is None:
        rank = min(spec.kernel_height, spec.kernel_width)
    pairs = spec.batch * spec.out_channels * spec.in_channels_per_group * rank
    column_pass = pairs * spec.kernel_height * spec.out_height * spec.padded_width
    row_pass = pairs * spec.kernel_width * spec.out_height * spec.out_width
    intermediate = pairs * spec.out_height * spec.padded_width * spec.dtype.itemsize
    terms = {"call": 1.0, "mac": (column_pass + row_pass) * dtype_work(spec.dtype),
             "byte": io_bytes(spec) + intermediate}
    kernels = spec.out_channels * spec.in_channels_per_group
    entries = kernels * spec.kernel_height * spec.kernel_width
    smaller = min(spec.kernel_height, spec.kernel_width)
    if smaller == 1:
        return terms  # a 1-D kernel is its own factor: no SVD
    # float64 factors (kh x r, r x kw, rank) of every kernel, plus the cache's copy of the weight
    factor_bytes = 8 * kernels * (spec.kernel_height * smaller + smaller * spec.kernel_width + 1) \
        + entries * spec.dtype.itemsize
    if factor_bytes <= _FACTOR_CACHE_BYTES:
        return terms  # factored once per weight and cached: later calls (a loop) do not pay it
    # Otherwise every call factors each (k, c) kernel by a float64 SVD (LAPACK, one thread): a fixed
    # cost per kernel, plus n^3 flops, plus per-entry work that dominates up to n ~ 100 (a 31x31
    # kernel takes 0.1 ms here, a 63x63 one 0.5 ms, a 101x101 one 1.4 ms: n^2.4).
    return {**terms, "kernel": float(kernels), "svd_entry": float(entries), "svd_flop": float(entries * smaller)}
