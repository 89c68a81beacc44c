"""Weight initialisation for convolution and dense layers: Glorot (Xavier) and He (Kaiming).

Each draws from a distribution whose variance keeps activations (Glorot: and gradients) at the
same scale from layer to layer. Fans are computed as torch computes them for a weight of shape
(K, C // groups, kh, kw) — or (out_features, in_features) for a dense layer::

    fan_in  = shape[1] · kh · kw                  (= C / groups · kh · kw)
    fan_out = shape[0] · kh · kw / groups         (= K · kh · kw for groups = 1, as torch)

(torch's ``_calculate_fan_in_and_fan_out`` ignores groups, so it reports ``K · kh · kw`` for
grouped weights too; pass ``groups`` to count only the outputs each input actually feeds.)

=================  ==========================================  ===========================
function           distribution                                 torch equivalent
=================  ==========================================  ===========================
``glorot_uniform``  U(-a, a), a = sqrt(6 / (fan_in + fan_out))  ``xavier_uniform_``
``glorot_normal``   N(0, 2 / (fan_in + fan_out))                ``xavier_normal_``
``he_uniform``      U(-a, a), a = sqrt(6 / fan)                 ``kaiming_uniform_(nonlinearity="relu")``
``he_normal``       N(0, 2 / fan)                               ``kaiming_normal_(nonlinearity="relu")``
=================  ==========================================  ===========================

``fan`` is ``fan_in`` by default (``mode="fan_out"`` for the other). ``rng`` is a
``numpy.random.Generator``, an int seed, or None (fresh entropy): the same seed gives the same
weights.

Examples
--------
>>> from fastconv import init
>>> w = init.he_normal((64, 3, 7, 7), rng=0)
>>> w.shape, w.dtype
((64, 3, 7, 7), dtype('float32'))
>>> bool(abs(w.std() - (2 / (3 * 7 * 7)) ** 0.5) < 0.01)
True
"""

from __future__ import annotations

import math
import operator

import numpy as np

from fastconv.geometry import as_int

__all__ = ["fans", "glorot_normal", "glorot_uniform", "he_normal", "he_uniform"]


def _shape(shape) -> tuple[int, ...]:
    if isinstance(shape, (int, np.integer)) or not hasattr(shape, "__len__"):
        raise ValueError(f"shape must be a tuple of at least 2 ints (out, in, *kernel), got {shape!r}")
    shape = tuple(as_int("shape", s) for s in shape)
    if len(shape) < 2 or min(shape) < 1:
        raise ValueError(f"shape must have at least 2 dimensions, all positive (out, in, *kernel), got {shape}")
    return shape


def fans(shape, groups=1) -> tuple[int, int]:
    """(fan_in, fan_out) of a weight of ``shape`` (see the module docstring).

    >>> fans((64, 3, 7, 7))
    (147, 3136)
    >>> fans((32, 1, 3, 3), groups=32)  # depthwise: each input feeds 1 output through 9 taps
    (9, 9)
    """
    shape = _shape(shape)
    groups = as_int("groups", groups)
    if groups < 1 or shape[0] % groups:
        raise ValueError(f"groups must be a positive int dividing shape[0] = {shape[0]}, got {groups}")
    taps = math.prod(shape[2:])
    return shape[1] * taps, shape[0] * taps // groups


def _generator(rng) -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is None:
        return np.random.default_rng()
    if isinstance(rng, (bool, np.bool_)) or not hasattr(rng, "__index__"):
        raise TypeError(f"rng must be a numpy.random.Generator, an int seed or None, got {rng!r}")
    seed = operator.index(rng)
    if seed < 0:
        raise ValueError(f"rng seed must be a non-negative int, got {seed}")
    return np.random.default_rng(seed)


def _draw(shape, scale, uniform, rng, dtype):
    dtype = np.dtype(dtype)
    if dtype.kind != "f":
        raise TypeError(f"dtype must be a floating dtype (float16, float32, float64), got {dtype}")
    generator = _generator(rng)
    if uniform:
        values = generator.uniform(-scale, scale, size=shape)
    else:
        values = generator.normal(0.0, scale, size=shape)
    return values.astype(dtype)


def _check_gain(gain) -> float:
    # torch's gain scales a standard deviation: a non-negative real number
    if isinstance(gain, (bool, np.bool_)) or not isinstance(gain, (int, float, np.integer, np.floating)):
        raise TypeError(f"gain must be a real number >= 0, got {gain!r} of type {type(gain).__name__}")
    if not (math.isfinite(gain) and gain >= 0):
        raise ValueError(f"gain must be a finite real number >= 0, got {gain!r}")
    return float(gain)


def _he_fan(shape, groups, mode):
    fan_in, fan_out = fans(shape, groups)
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"mode must be 'fan_in' or 'fan_out', got {mode!r}")
    return fan_in if mode == "fan_in" else fan_out


def glorot_uniform(shape, *, rng=None, dtype=np.float32, groups=1, gain=1.0):
    """Glorot (Xavier) uniform: U(-a, a) with ``a = gain · sqrt(6 / (fan_in + fan_out))``.

    >>> w = glorot_uniform((16, 8, 3, 3), rng=1)
    >>> bool(abs(w).max() <= (6 / (72 + 144)) ** 0.5)
    True
    """
    fan_in, fan_out = fans(shape, groups)
    return _draw(_shape(shape), _check_gain(gain) * math.sqrt(6.0 / (fan_in + fan_out)), True, rng, dtype)


def glorot_normal(shape, *, rng=None, dtype=np.float32, groups=1, gain=1.0):
    """Glorot (Xavier) normal: N(0, σ²) with ``σ = gain · sqrt(2 / (fan_in + fan_out))``.

    >>> glorot_normal((16, 8, 3, 3), rng=1, dtype=np.float64).dtype
    dtype('float64')
    """
    fan_in, fan_out = fans(shape, groups)
    return _draw(_shape(shape), _check_gain(gain) * math.sqrt(2.0 / (fan_in + fan_out)), False, rng, dtype)


def he_uniform(shape, *, rng=None, dtype=np.float32, groups=1, mode="fan_in"):
    """He (Kaiming) uniform for ReLU layers: U(-a, a) with ``a = sqrt(6 / fan)``.

    >>> w = he_uniform((16, 8, 3, 3), rng=np.random.default_rng(2))
    >>> bool(abs(w).max() <= (6 / 72) ** 0.5)
    True
    """
    return _draw(_shape(shape), math.sqrt(6.0 / _he_fan(shape, groups, mode)), True, rng, dtype)


def he_normal(shape, *, rng=None, dtype=np.float32, groups=1, mode="fan_in"):
    """He (Kaiming) normal for ReLU layers: N(0, σ²) with ``σ = sqrt(2 / fan)``.

    >>> he_normal((4, 2), rng=3).shape
    (4, 2)
    """
    return _draw(_shape(shape), math.sqrt(2.0 / _he_fan(shape, groups, mode)), False, rng, dtype)
