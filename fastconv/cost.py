"""The cost model behind ``backend="auto"``: how long each backend should take on a problem.

Each backend's time is modelled as a sum of *work terms*, each a count derived from the
:class:`~fastconv.geometry.ConvSpec` alone, times a constant measured on the machine::

    seconds = sum(constant[backend][term] * count[term])

The counts say how the algorithms trade off, and are worth reading as such:

``direct`` (``naive``, ``numba_cpu``)
    one multiply-add per kernel tap per output value: ``outputs * C/groups * kh * kw``. ``naive``
    runs them as scalar loops; ``numba_cpu`` vectorised, at one rate on its plane kernel
    (depthwise and single-channel: memory-bound) and another on its channel-blocked kernel, each
    slower for kernel widths it does not specialise and for strided output columns.
``im2col``
    unfold every receptive field into a column matrix (``N * C * kh * kw * H_out * W_out`` values
    copied), then one GEMM at BLAS speed. A 1×1 stride-1 layer needs no unfolding: it *is* a
    GEMM. Thin GEMMs (depthwise: one output channel per group) are limited by the bytes they move,
    not their flops, hence a GEMM-bytes term.
``fft``
    transform every input and output channel (``~2.5 P log2 P`` flops each over the ``P`` points
    of the padded image, or of each overlap-save tile of a large one; filter spectra are cached),
    then multiply spectra bin by bin and sum over channels (``N * K * C/groups`` complex products
    per bin). The kernel size does not appear at all —
    which is why FFT wins for large kernels — and neither does the stride (the stride-1 result
    is computed and sampled).
``separable``
    a rank-``r`` kernel is ``r`` column passes and ``r`` row passes: ``r * (kh + kw)`` taps per
    output instead of ``kh * kw``, after an SVD of every kernel. The rank comes from the weight
    values, not the spec.
``winograd``
    F(m×m, 3×3) on tiles of (m+2)²: input and output transforms per tile, then (m+2)² GEMMs of
    (K × C/groups) by (C/groups × tiles), ``(m+2)² / (9 m²)`` of direct convolution's flops.

A backend module may refine its own entry: ``cost_terms(spec) -> dict`` replaces the formula
here, ``estimate_flops(spec) -> float`` replaces its flop count, and a backend this module does
not model at all may give ``estimate_seconds(spec) -> float`` (else auto ranks it last). Constants come from
``fastconv tune --calibrate`` (fitted on this machine, stored in :data:`fastconv.config.cache_dir`)
or else from :data:`DEFAULT_CONSTANTS` shipped with the package.

Examples
--------
>>> from fastconv.geometry import make_spec
>>> spec = make_spec((1, 1, 512, 512), (1, 1, 31, 31), padding="same", dtype="float32")
>>> terms = work_terms("fft", spec)
>>> sorted(terms)
['bin_flop', 'byte', 'call', 'fft_flop', 'tile']
>>> strided = make_spec((1, 1, 512, 512), (1, 1, 31, 31), padding="same", stride=2, dtype="float32")
>>> work_terms("fft", strided)["fft_flop"] == terms["fft_flop"]  # FFT gains nothing from stride
True
>>> estimate_seconds("naive", spec) > estimate_seconds("fft", spec)
True
"""

from __future__ import annotations

import dataclasses
import math
import os
import warnings

import numpy as np

from fastconv import config
from fastconv.geometry import ConvSpec, interior_range

__all__ = ["DEFAULT_CONSTANTS", "work_terms", "estimate_seconds", "load_constants", "save_constants",
           "fit_constants", "machine_key"]

CONSTANTS_FILE = "cost-constants.json"
_FORMAT = "fastconv-cost-constants"
_FORMAT_VERSION = 1

# Seconds per unit of each work term (``float64_factor``: how much more a float64 problem's work
# costs than a float32 one's). Fitted with `fastconv tune --calibrate` (the grid of
# fastconv.tuning._calibration_grid, 59 problems, each backend timed in two passes, 2 threads) on
# the development machine: 2-core Intel Xeon (Cascade Lake, AVX-512), numpy 2.4 / OpenBLAS,
# numba 0.68, pyFFTW 0.15, on 2026-11-22 at 03:52 UTC (2.6 min), under an exclusive CPU lock with
# OPENBLAS_CORETYPE/OPENBLAS_L2_SIZE unset, with main's backends as of 03:50 UTC (numba_cpu's
# 3x3 depthwise kernel, the vectorised Winograd, separable's factor cache, fft's space-to-batch);
# see docs/performance.md, "Automatic backend choice". Refit (and paste here) whenever a
# backend's speed changes.
DEFAULT_CONSTANTS: dict[str, dict[str, float]] = {
    "naive": {"call": 1.65e-06, "float64_factor": 1.18, "mac": 9.02e-10},
    "numba_cpu": {"byte": 2.05e-11, "call": 5.81e-06, "float64_factor": 1.07, "mac": 4.87e-11, "mac_depthwise3x3": 1.87e-20, "mac_edge": 6.59e-11, "mac_plane": 1.36e-11, "mac_runtime_width": 6.8e-11, "mac_strided": 8.63e-11, "row_pass": 1.58e-08},
    "im2col": {"byte": 2.35e-19, "call": 1.44e-05, "float64_factor": 0.964, "gemm_byte": 3.98e-11, "gemm_call": 7.65e-07, "gemm_flop": 3.52e-12, "unfold_byte": 1.24e-10},
    "fft": {"bin_flop": 1.35e-17, "bin_gemm": 7.42e-08, "bin_gemm_flop": 6.15e-11, "byte": 5.95e-11, "call": 4.03e-05, "fft_flop": 4.51e-11, "filter_spectrum_byte": 7.07e-12, "float64_factor": 1.44, "tile": 8.96e-13},
    "separable": {"byte": 3.17e-11, "call": 1.02e-05, "float64_factor": 1.17, "kernel": 5.54e-07, "mac": 2.77e-11, "svd_entry": 8.38e-08, "svd_flop": 8.75e-10},
    "winograd": {"byte": 1.62e-10, "call": 9.68e-05, "float64_factor": 0.731, "gemm_flop": 1.55e-20, "piece": 8.89e-06, "transform_flop": 5.44e-11},
}

# Threads the constants were measured with: compute terms scale with min(threads, this) / this.
DEFAULT_THREADS = 2


def _dtype_work(dtype: np.dtype) -> float:
    """Real multiply-adds per multiply-add of ``dtype``: 4 for complex, 1 for real dtypes. (What a
    float64 costs over a float32 differs by backend, so that is a fitted ``float64_factor``.)"""
    return 4.0 if np.dtype(dtype).kind == "c" else 1.0


def _is_double(dtype: np.dtype) -> bool:
    dtype = np.dtype(dtype)
    return (dtype.itemsize // 2 if dtype.kind == "c" else dtype.itemsize) == 8


# Terms whose cost depends neither on the compute dtype nor on the thread count: the per-call
# overhead, and separable's kernel factorisation (a float64 LAPACK SVD whatever the dtype).
UNSCALED_TERMS = frozenset({"call", "kernel", "svd_entry", "svd_flop"})


def _predict(table: dict, terms: dict, double: bool, speedup: float = 1.0) -> float:
    """Seconds from work counts: the unscaled terms, plus the rest scaled for float64 and threads."""
    scale = (table.get("float64_factor", 2.0) if double else 1.0) / speedup
    return sum(table[term] * count * (1.0 if term in UNSCALED_TERMS else scale)
               for term, count in terms.items() if term in table)


def _fast_even(n: int) -> int:
    """The next 2^a 3^b 5^c 7^d size >= n that is even (an odd last axis is slow for r2c FFTs)."""
    best = 2 * n + 2
    power7 = 1
    while power7 < best:
        power5 = power7
        while power5 < best:
            power3 = power5
            while power3 < best:
                size = power3
                while size < n:
                    size *= 2
                if size % 2:
                    size *= 2
                best = min(best, size)
                power3 *= 3
            power5 *= 5
        power7 *= 7
    return best


def _macs(spec: ConvSpec) -> int:
    """Multiply-adds of direct convolution: one per kernel tap per output value."""
    outputs = spec.batch * spec.out_channels * spec.out_height * spec.out_width
    return outputs * spec.in_channels_per_group * spec.kernel_height * spec.kernel_width


def _io_bytes(spec: ConvSpec) -> float:
    values = (spec.batch * spec.in_channels * spec.in_height * spec.in_width
              + spec.batch * spec.out_channels * spec.out_height * spec.out_width
              + spec.out_channels * spec.in_channels_per_group * spec.kernel_height * spec.kernel_width)
    return float(values * spec.dtype.itemsize)


def _naive(spec, work, rank, module):
    return {"call": 1.0, "mac": float(_macs(spec))}  # scalar loops: no SIMD width to lose to float64


def _interior_width(spec: ConvSpec) -> int:
    """Output columns whose every kernel tap lies inside the image (not in the zero padding)."""
    lo, hi = interior_range(spec.out_width, spec.in_width, spec.kernel_width, spec.stride[1], spec.dilation[1],
                            spec.padding[1][0])
    return hi - lo


def _numba_cpu(spec, work, rank, module):
    # Three kernels, each at its own rate per multiply-add: the plane kernel (depthwise and
    # single-channel: one memory-bound pass per output plane), its 3x3 specialisation (nine
    # weights in registers, one store per output), and the general kernel, which register-blocks
    # output channels (zero filters pad a partial block). In the plane and general kernels each
    # (output row, input channel, kernel row) is one pass along the row: the interior columns in
    # a vectorised loop, the columns whose taps reach into the padding in a short scalar loop
    # with bounds checks, plus the pass's fixed set-up. On narrow images (14-32 columns) the
    # edges and set-up outweigh the interior. Kernel widths the kernels do not specialise, and
    # strided or dilated rows (no longer contiguous loads: scalar code), cost extra per
    # multiply-add.
    plane = (module.uses_plane_kernel(spec) if hasattr(module, "uses_plane_kernel")
             else spec.in_channels_per_group == 1 and spec.out_channels_per_group < 4)
    depthwise3x3 = plane and getattr(module, "uses_depthwise3x3", lambda spec: False)(spec)
    block = 1 if plane else getattr(module, "CHANNEL_BLOCK", 1)
    per_group = spec.out_channels_per_group
    padded_outs = spec.groups * -(-per_group // block) * block  # output channels computed
    taps = spec.in_channels_per_group * spec.kernel_height * spec.kernel_width
    outputs = spec.batch * padded_outs * spec.out_height * spec.out_width
    if depthwise3x3:
        return {"call": 1.0, "mac_depthwise3x3": float(outputs * taps * work), "byte": _io_bytes(spec)}
    interior = _interior_width(spec)
    row_outputs = spec.batch * padded_outs * spec.out_height
    macs = row_outputs * interior * taps * work
    terms = {"call": 1.0, "mac_plane" if plane else "mac": float(macs),
             "mac_edge": float(row_outputs * (spec.out_width - interior) * taps * work),
             # passes along a row: one per (output row, channel block, input channel, kernel row)
             "row_pass": float(row_outputs / block * spec.in_channels_per_group * spec.kernel_height),
             "byte": _io_bytes(spec)}
    if spec.kernel_width not in getattr(module, "SPECIALISED_WIDTHS", (1, 3, 5, 7)):
        terms["mac_runtime_width"] = float(macs)
    if spec.stride[1] > 1 or (spec.dilation[1] > 1 and spec.kernel_width > 1):
        terms["mac_strided"] = float(macs)
    return terms


def _im2col(spec, work, rank, module):
    size = spec.dtype.itemsize
    rows = spec.in_channels_per_group * spec.kernel_height * spec.kernel_width  # GEMM inner dimension
    pixels = spec.batch * spec.out_height * spec.out_width
    plain_gemm = (spec.kernel_height == spec.kernel_width == 1 and spec.stride == (1, 1)
                  and spec.padding == ((0, 0), (0, 0)))
    unfold_values = 0 if plain_gemm else spec.in_channels * spec.kernel_height * spec.kernel_width * pixels
    k_per_group = spec.out_channels_per_group
    tiles = 1 if plain_gemm or not hasattr(module, "plan_tiles") else len(module.plan_tiles(spec))
    return {
        "call": 1.0,
        "unfold_byte": float(unfold_values * size),
        "gemm_flop": 2.0 * spec.groups * k_per_group * rows * pixels * work,
        # operands and result of each group's GEMM: what bounds thin (depthwise) products
        "gemm_byte": float(spec.groups * (k_per_group * rows + rows * pixels + k_per_group * pixels) * size),
        "gemm_call": float(spec.groups * tiles),
        "byte": _io_bytes(spec),
    }


def _fft_tiles(spec: ConvSpec, transforms_per_tile: int, products_per_bin: int):
    """The overlap-save tiling with the least work: ((tile_h, tile_w), tile count).

    One tile covering the whole image is a candidate; so are powers of two from 64 up that leave
    room for at least 4 kernel extents of valid output (smaller tiles waste most of each transform
    on the overlap).
    """
    (extent_h, extent_w), (stride_h, stride_w) = spec.dilated_kernel, spec.stride
    whole_h = _fast_even((spec.out_height - 1) * stride_h + extent_h)
    whole_w = _fast_even((spec.out_width - 1) * stride_w + extent_w)

    def axis_options(whole, extent, stride, out):
        options = [(whole, 1)]
        size = 64
        while size < whole:
            if size >= 4 * extent + stride:
                per_tile = (size - extent) // stride + 1
                options.append((size, -(-out // per_tile)))
            size *= 2
        return options

    best = None
    for tile_h, count_h in axis_options(whole_h, extent_h, stride_h, spec.out_height):
        for tile_w, count_w in axis_options(whole_w, extent_w, stride_w, spec.out_width):
            points = tile_h * tile_w
            work = count_h * count_w * (points * math.log2(points) * transforms_per_tile
                                        + 4 * tile_h * (tile_w // 2 + 1) * products_per_bin)
            if best is None or work < best[0]:
                best = (work, (tile_h, tile_w), count_h * count_w)
    return best[1], best[2]


def _fft(spec, work, rank, module):
    phases = getattr(module, "_dilation_phases", lambda spec: (1, 1))(spec)
    if phases != (1, 1):
        # space-to-batch: phases_h * phases_w undilated convolutions of the interleaved sub-images,
        # plus cutting them out of a padded copy of the input and interleaving the outputs back
        rows, cols = -(-spec.padded_height // phases[0]), -(-spec.padded_width // phases[1])
        split = dataclasses.replace(
            spec, batch=spec.batch * phases[0] * phases[1], in_height=rows, in_width=cols,
            padding=((0, 0), (0, 0)), dilation=tuple(1 if count > 1 else dilation
                                                      for count, dilation in zip(phases, spec.dilation)))
        terms = _fft(split, work, rank, module)
        terms["byte"] += 2.0 * (split.batch * spec.in_channels * rows * cols
                                + spec.batch * spec.out_channels * spec.out_height * spec.out_width) \
            * spec.dtype.itemsize
        return terms
    # per tile: transform each input channel and each output channel (filter spectra are cached
    # between calls, so their transforms are not paid per call); multiply spectra per bin
    transforms = spec.batch * (spec.in_channels + spec.out_channels)
    products = spec.batch * spec.out_channels * spec.in_channels_per_group
    choose_grid = getattr(module, "_choose_tiles", None)
    if choose_grid is not None:  # the grid the backend will really use
        height, width = choose_grid(spec, spec.dtype.kind == "c")
        (extent_h, extent_w), (stride_h, stride_w) = spec.dilated_kernel, spec.stride
        tiles = (module._axis_tiling(spec.out_height, extent_h, stride_h, height)[1]
                 * module._axis_tiling(spec.out_width, extent_w, stride_w, width)[1])
    else:
        (height, width), tiles = _fft_tiles(spec, transforms, products)
    points = height * width
    bins = points if spec.dtype.kind == "c" else height * (width // 2 + 1)
    real_work = work / 4 if spec.dtype.kind == "c" else work  # a complex FFT is not four real ones
    per_transform = 2.5 * points * math.log2(max(points, 2)) * real_work * (2 if spec.dtype.kind == "c" else 1)
    spectrum_bytes = transforms * bins * 2 * spec.dtype.itemsize
    terms = {
        "call": 1.0,
        "fft_flop": tiles * transforms * per_transform,
        "tile": float(tiles * spec.batch),
        "byte": _io_bytes(spec) + tiles * spectrum_bytes,
    }
    filters = spec.out_channels * spec.in_channels_per_group
    filter_spectrum_bytes = filters * bins * 2 * spec.dtype.itemsize
    if filter_spectrum_bytes + filters * spec.kernel_height * spec.kernel_width * spec.dtype.itemsize \
            > getattr(module, "_MAX_SPECTRUM_BYTES", math.inf):
        # filter spectra too big for the backend's cache are transformed again on every call (a
        # VGG 512x512x3x3 layer on 14x14 maps: 302 MB of spectra, 0.3 s a call)
        terms["fft_flop"] += filters * per_transform
        terms["byte"] += filter_spectrum_bytes
    product_flops = 8.0 * tiles * products * bins * real_work
    if spec.in_channels_per_group == 1:  # one input channel per group: an elementwise product
        terms["bin_flop"] = product_flops
    else:
        # a small complex GEMM per bin and group, (K/g x C/g) @ (C/g x tiles): BLAS speed, plus a
        # call per bin, plus reading the cached filter spectra (K x C/g per bin), which is what
        # bounds it when there are few tiles (a 1x1 layer on 14x14 maps reads 58 MB of spectra)
        terms["bin_gemm_flop"] = product_flops
        terms["bin_gemm"] = float(spec.groups * bins)
        terms["filter_spectrum_byte"] = float(filter_spectrum_bytes)
    return terms


def _separable(spec, work, rank, module):
    if rank is None:  # unknown (shape only): assume the worst, a full-rank kernel
        rank = min(spec.kernel_height, spec.kernel_width)
    pairs = spec.batch * spec.out_channels * spec.in_channels_per_group * rank
    column_pass = pairs * spec.kernel_height * spec.out_height * spec.padded_width
    row_pass = pairs * spec.kernel_width * spec.out_height * spec.out_width
    intermediate = pairs * spec.out_height * spec.padded_width * spec.dtype.itemsize
    terms = {"call": 1.0, "mac": (column_pass + row_pass) * work, "byte": _io_bytes(spec) + intermediate}
    kernels = spec.out_channels * spec.in_channels_per_group
    entries = kernels * spec.kernel_height * spec.kernel_width
    smaller = min(spec.kernel_height, spec.kernel_width)
    if smaller == 1:
        return terms  # a 1-D kernel is its own factor: no SVD
    # float64 factors (kh x r, r x kw, rank) of every kernel, plus the cache's copy of the weight
    factor_bytes = 8 * kernels * (spec.kernel_height * smaller + smaller * spec.kernel_width + 1) \
        + entries * spec.dtype.itemsize
    if factor_bytes <= getattr(getattr(module, "_factors", None), "_max_bytes", 0):
        return terms  # factored once per weight and cached: later calls (a loop) do not pay it
    # Otherwise every call factors each (k, c) kernel by a float64 SVD (LAPACK, one thread): a fixed
    # cost per kernel, plus n^3 flops, plus per-entry work that dominates up to n ~ 100 (a 31x31
    # kernel takes 0.1 ms here, a 63x63 one 0.5 ms, a 101x101 one 1.4 ms: n^2.4).
    return {**terms, "kernel": float(kernels), "svd_entry": float(entries), "svd_flop": float(entries * smaller)}


def _winograd(spec, work, rank, module):
    tile = 4 if spec.dtype == np.float32 else 2  # F(4x4,3x3) in float32, F(2x2,3x3) otherwise
    alpha = tile + 2
    tiles = (spec.batch * -(-spec.out_height // tile) * -(-spec.out_width // tile))
    return {
        "call": 1.0,
        # a dilated 3x3 runs as dilation_h * dilation_w undilated ones on interleaved sub-images
        "piece": float(spec.batch * spec.dilation[0] * spec.dilation[1]),
        "transform_flop": 2.0 * (spec.in_channels + spec.out_channels) * tiles * alpha ** 3 * work,
        "gemm_flop": 2.0 * alpha * alpha * spec.out_channels * spec.in_channels_per_group * tiles * work,
        "byte": _io_bytes(spec) + alpha * alpha * tiles * (spec.in_channels + spec.out_channels) * spec.dtype.itemsize,
    }


#: The work-term formula of each backend, by registered name.
FORMULAS = {
    "naive": _naive,
    "numba_cpu": _numba_cpu,
    "im2col": _im2col,
    "fft": _fft,
    "separable": _separable,
    "winograd": _winograd,
}


def work_terms(name: str, spec: ConvSpec, *, rank: int | None = None, module=None) -> dict[str, float] | None:
    """Work counts of backend ``name`` on ``spec`` (None when nothing models that backend).

    ``rank`` is the kernels' numerical rank, used by ``separable`` only (None: unknown). ``module``
    is the backend module, consulted for its own ``cost_terms(spec)`` or ``estimate_flops(spec)``.
    """
    if spec.batch == 0:  # an empty batch: nothing to compute, only the call itself
        return {"call": 1.0} if name in FORMULAS or hasattr(module, "cost_terms") else None
    own_terms = getattr(module, "cost_terms", None)
    if own_terms is not None:
        return {term: float(count) for term, count in own_terms(spec).items()}
    formula = FORMULAS.get(name)
    estimate_flops = getattr(module, "estimate_flops", None)
    if formula is None:
        if estimate_flops is None:
            return None
        return {"call": 1.0, "flop": float(estimate_flops(spec)), "byte": _io_bytes(spec)}
    terms = formula(spec, _dtype_work(spec.dtype), rank, module)
    if estimate_flops is not None and "gemm_flop" in terms:
        terms = _use_own_flops(terms, estimate_flops(spec), _dtype_work(spec.dtype))
    return terms


def _use_own_flops(terms: dict, flops, dtype_work: float) -> dict:
    """Replace our flop counts by the backend's own (it knows e.g. which Winograd tile it uses).

    ``flops`` is a total, or a dict by stage with ``gemm`` and ``total`` (and optionally
    ``filter_transform``, left out: filters are transformed once and cached, not per call).
    """
    if isinstance(flops, dict):
        gemm = float(flops["gemm"])
        transforms = float(flops["total"]) - gemm - float(flops.get("filter_transform", 0))
        return {**terms, "gemm_flop": gemm * dtype_work, "transform_flop": transforms * dtype_work}
    ours = sum(count for term, count in terms.items() if term.endswith("flop"))
    theirs = float(flops) * dtype_work
    return {term: count * theirs / ours if term.endswith("flop") and ours > 0 else count
            for term, count in terms.items()}


def estimate_seconds(name: str, spec: ConvSpec, *, rank: int | None = None, module=None,
                     constants: dict | None = None, threads: int | None = None) -> float:
    """Estimated run time of backend ``name`` on ``spec``; ``inf`` when nothing models it.

    Examples
    --------
    >>> from fastconv.geometry import make_spec
    >>> small = make_spec((1, 1, 8, 8), (1, 1, 3, 3))
    >>> estimate_seconds("naive", small) < 1e-3
    True
    >>> estimate_seconds("no_such_backend", small)
    inf
    """
    terms = work_terms(name, spec, rank=rank, module=module)
    table = (constants if constants is not None else current_constants()).get(name)
    if terms is None or table is None:
        own_estimate = getattr(module, "estimate_seconds", None)
        return math.inf if own_estimate is None else float(own_estimate(spec))
    # extra threads speed up the work terms, not the fixed per-call term
    speedup = max(min(threads or config.threads, os.cpu_count() or 1), 1) / constants_threads()
    return _predict(table, terms, _is_double(spec.dtype), speedup)


# --------------------------------------------------------------------------------------------
# constants: shipped defaults, or fitted on this machine and stored in the cache directory

_loaded: dict | None = None  # {"constants": ..., "threads": ..., "source": ...}


def machine_key() -> dict:
    """What identifies this machine and software for cached measurements (CPU, cores, versions)."""
    import platform
    from importlib import metadata

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    versions = {}
    for package in ("fastconv", "numpy", "numba", "scipy", "pyfftw"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    import fastconv

    versions["fastconv"] = fastconv.__version__  # the source tree's, even when not installed
    return {"cpu": cpu, "cores": os.cpu_count(), "arch": platform.machine(), "versions": versions}


def _constants_path() -> str:
    return os.path.join(config.cache_dir, CONSTANTS_FILE)


def _constants_from(document) -> tuple[dict, int]:
    """(constants, threads) of a cost-constants document; ValueError saying what is wrong with it."""
    if not isinstance(document, dict) or document.get("format") != _FORMAT \
            or document.get("version") != _FORMAT_VERSION:
        raise ValueError("not a fastconv cost-constants file of this version")
    if document.get("machine") != machine_key():
        raise ValueError("fitted on another machine or other library versions")
    threads, tables = document.get("threads"), document.get("constants")
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"'threads' must be a positive integer, not {threads!r:.60}")
    if not isinstance(tables, dict):
        raise ValueError(f"'constants' must be an object, not {type(tables).__name__}")
    constants = {}
    for name, table in tables.items():
        if not isinstance(table, dict):
            raise ValueError(f"constants of {name!r:.40} must be an object, not {type(table).__name__}")
        for term, value in table.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or value < 0:
                raise ValueError(f"constant {name!r:.40}.{term!r:.40} must be a finite number >= 0, "
                                 f"not {value!r:.60}")
        constants[name] = {term: float(value) for term, value in table.items()}
    return constants, threads


def _load() -> dict:
    global _loaded
    current = _loaded  # one read: save_constants may reset it from another thread
    if current is not None and current["dir"] == config.cache_dir:
        return current
    loaded = {"constants": DEFAULT_CONSTANTS, "threads": DEFAULT_THREADS, "source": "shipped defaults",
              "dir": config.cache_dir}
    path = _constants_path()

    def warn(problem):
        warnings.warn(f"fastconv: ignoring cost constants in {path} ({problem}); using the shipped defaults. "
                      f"Run `fastconv tune --calibrate` to refit them.", RuntimeWarning, stacklevel=4)

    from fastconv.tuning import NO_DOCUMENT, read_json

    document = read_json(path, warn)
    if document is not NO_DOCUMENT:
        try:
            constants, threads = _constants_from(document)
        except ValueError as error:
            warn(error)
        else:
            loaded = {"constants": {**DEFAULT_CONSTANTS, **constants}, "threads": threads, "source": path,
                      "dir": config.cache_dir}
    _loaded = loaded
    return loaded


def load_constants() -> tuple[dict, str]:
    """The constants in use and where they came from (a file path or ``"shipped defaults"``)."""
    loaded = _load()
    return loaded["constants"], loaded["source"]


def current_constants() -> dict:
    return _load()["constants"]


def constants_threads() -> int:
    return _load()["threads"]


def save_constants(constants: dict, threads: int) -> str | None:
    """Write fitted constants for this machine to the cache directory (atomically); return the path.

    A place that cannot be written (read-only, a file where a directory should be) costs a
    RuntimeWarning saying why, and None is returned; the constants in use do not change.
    """
    global _loaded
    from fastconv.tuning import atomic_write_json, describe_write_error

    document = {"format": _FORMAT, "version": _FORMAT_VERSION, "machine": machine_key(), "threads": threads,
                "constants": constants}
    path = _constants_path()
    try:
        atomic_write_json(path, document)
    except OSError as error:
        warnings.warn(f"fastconv: could not write the cost constants to {path}: {describe_write_error(path, error)}",
                      RuntimeWarning, stacklevel=2)
        return None
    _loaded = None
    return path


def fit_constants(name: str, samples, defaults: dict[str, float] | None = None, *, module=None) -> dict[str, float]:
    """Fit backend ``name``'s constants to measured ``(spec, rank, seconds)`` samples.

    The error that matters to auto is the *ratio* of estimate to truth, whether the problem takes
    a microsecond or a second, so the fit minimises ``log(estimate / measured)`` over all samples
    with a robust (soft-L1) loss: one time inflated by a noisy neighbour on the machine does not
    drag the constants with it. Non-negative least squares on relative errors gives the starting
    point. ``float64_factor`` (how much more a float64 problem's work costs) is fitted when there
    are float64 samples. Terms that no sample exercises keep their value from ``defaults``.
    ``module`` is the backend module, as for :func:`work_terms` (pass it: the estimates use it).
    """
    from scipy.optimize import least_squares, nnls

    rows = [(work_terms(name, spec, rank=rank, module=module), _is_double(spec.dtype), seconds)
            for spec, rank, seconds in samples]
    names = sorted({term for terms, _, _ in rows for term in terms})
    counts = np.array([[terms.get(term, 0.0) for term in names] for terms, _, _ in rows])
    double = np.array([is_double for _, is_double, _ in rows])
    measured = np.array([seconds for _, _, seconds in rows])
    exercised = counts.max(axis=0) > 0
    counts, names = counts[:, exercised], [term for term, used in zip(names, exercised) if used]
    unscaled = np.array([term in UNSCALED_TERMS for term in names])
    relative = counts / measured[:, None]
    scale = relative.max(axis=0)  # columns of very different magnitudes: normalise for the solvers
    relative = relative / scale
    fit_factor = bool(double.any()) and bool((~double).any())
    factor0 = (defaults or {}).get("float64_factor", 2.0)
    start, _ = nnls(relative * np.where(double[:, None] & ~unscaled, factor0, 1.0), np.ones(len(rows)))

    def residuals(parameters):
        factor = np.exp(parameters[-1]) if fit_factor else factor0
        weights = np.where(double[:, None] & ~unscaled, factor, 1.0)
        return np.log((relative * weights) @ np.exp(parameters[:len(names)]))

    floor = np.log(1e-9)  # in scaled units: a term the data do not need ends near zero, not at 0
    initial = np.log(np.maximum(start, 1e-3))
    lower, upper = np.full(len(names), floor), np.full(len(names), np.inf)
    if fit_factor:
        initial, lower, upper = (np.append(initial, np.log(factor0)), np.append(lower, np.log(0.5)),
                                 np.append(upper, np.log(8.0)))
    solution = least_squares(residuals, initial, bounds=(lower, upper), loss="soft_l1", f_scale=0.1).x
    fitted = dict(defaults or {})
    for term, value, column_scale in zip(names, np.exp(solution[:len(names)]), scale):
        fitted[term] = float(value / column_scale)
    if fit_factor:
        fitted["float64_factor"] = float(np.exp(solution[-1]))
    return fitted
