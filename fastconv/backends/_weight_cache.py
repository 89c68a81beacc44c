"""A cache of values derived from weights (filter spectra, SVD factors), never stale.

Networks and image pipelines apply the same weights again and again, and what a backend derives
from them (the ``fft`` backend's filter spectra, the ``separable`` backend's factors) often costs
more than the convolution. Keying on ``id(weight)`` would serve stale values after an in-place
update (an optimiser step) or to a new array at a recycled address; hashing the bytes costs a
copy plus the hash on every call. So each entry keeps a private copy of its weight and is served
only when the weight passed now is *equal, element for element,* to that copy
(``np.array_equal``: one read of both arrays at memory speed, 0.02 ms for 65,536 float32 1×1
kernels, whose SVD takes 45 ms; small weights compare their bytes first, in a tenth of the time).

>>> import numpy as np

from fastconv.thread_pools import reinitialise_after_fork
>>> cache = WeightCache(max_entries=4, max_bytes=1 << 20)
>>> w = np.ones((2, 2))
>>> cache.get("sum", w, lambda: w.sum(keepdims=True))
array([[4.]])
>>> w[0, 0] = 5.0                                   # mutated in place: recomputed
>>> cache.get("sum", w, lambda: w.sum(keepdims=True)), cache.hits, cache.misses
(array([[8.]]), 0, 2)
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import numpy as np

from fastconv.thread_pools import reinitialise_after_fork


#: Weights up to this size are first compared byte for byte: identical bytes are identical values,
#: and comparing them takes 0.2 us for a 3×3 kernel where ``np.array_equal`` takes 2-4 us (a
#: per-call cost that matters beside a small image's convolution). Above it one ``array_equal``
#: pass is faster than copying both arrays out.
BYTEWISE_BYTES = 16 << 10


def _equal(saved: np.ndarray, weight: np.ndarray) -> bool:
    """Equal dtype, shape and elements, as ``np.array_equal`` (``0.0 == -0.0``), except that small
    weights of identical bytes are equal even where they hold NaN (what is derived from them is
    the same)."""
    if saved.dtype != weight.dtype or saved.shape != weight.shape:
        return False
    if weight.nbytes <= BYTEWISE_BYTES and saved.tobytes() == weight.tobytes():
        return True
    return bool(np.array_equal(saved, weight))


def _nbytes(value) -> int:
    return sum(part.nbytes for part in value) if isinstance(value, tuple) else value.nbytes


class WeightCache:
    """Values computed from weights, least recently used dropped first.

    ``get(key, weight, compute)`` returns the value stored under ``key`` for a weight equal to
    ``weight``, or ``compute()`` (an array or a tuple of arrays), which it then stores unless it is
    larger than ``max_bytes`` with the weight's copy. ``key`` should hold what else the value
    depends on (shapes, dtype, geometry); it is compared before the weights are.
    """

    def __init__(self, max_entries: int, max_bytes: int):
        self._entries: OrderedDict[int, tuple] = OrderedDict()
        self._next_id = 0
        self._max_entries, self._max_bytes = max_entries, max_bytes
        self._lock = reinitialise_after_fork(threading.Lock())
        self.hits = self.misses = 0

    def get(self, key, weight: np.ndarray, compute):
        with self._lock:
            candidates = [(entry_id, entry) for entry_id, entry in self._entries.items() if entry[0] == key]
        for entry_id, (_, saved_weight, value) in candidates:
            if _equal(saved_weight, weight):
                with self._lock:
                    self.hits += 1
                    if entry_id in self._entries:
                        self._entries.move_to_end(entry_id)
                return value
        value = compute()
        with self._lock:
            self.misses += 1
            if _nbytes(value) + weight.nbytes <= self._max_bytes:
                self._entries[self._next_id] = (key, weight.copy(), value)
                self._next_id += 1
                while len(self._entries) > self._max_entries or self._bytes() > self._max_bytes:
                    self._entries.popitem(last=False)
        return value

    def _bytes(self) -> int:
        return sum(saved.nbytes + _nbytes(value) for _, saved, value in self._entries.values())

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self.hits = self.misses = 0
