"""``receptive_field``: how much of the input each output of a stack of conv/pool layers sees.

For a stack of layers, three numbers describe where an output pixel of layer l looks in the
input (per axis): its receptive-field ``size`` (input pixels it depends on), its ``jump`` (how
far apart, in input pixels, two neighbouring outputs of layer l are: the product of the strides
so far) and its ``start`` (the centre of the first output's field, in input pixel coordinates
with pixel centres at 0, 1, 2, ...). Starting from the input itself (size 1, jump 1, start 0),
a layer with kernel k, stride s, padding p and dilation d (effective kernel ``d·(k-1) + 1``)
updates them by the standard recurrence::

    size  = size + (d·(k-1)) · jump
    start = start + (d·(k-1)/2 - p) · jump
    jump  = jump · s

Examples
--------
Two 3×3 convolutions, a 2×2 stride-2 pool, another 3×3 convolution:

>>> from fastconv import receptive_field
>>> [r.size for r in receptive_field([{"kernel_size": 3}, {"kernel_size": 3},
...                                   {"kernel_size": 2, "stride": 2}, {"kernel_size": 3}])]
[3, 5, 6, 10]
"""

from __future__ import annotations

from typing import NamedTuple

from fastconv.geometry import int_pair

__all__ = ["ReceptiveField", "receptive_field"]

_LAYER_KEYS = ("kernel_size", "stride", "padding", "dilation")


class ReceptiveField(NamedTuple):
    """Receptive field of one layer's outputs: ints, or (h, w) pairs when the layers use pairs."""

    size: int | tuple[int, int]
    jump: int | tuple[int, int]
    start: float | tuple[float, float]


def receptive_field(layers) -> list[ReceptiveField]:
    """Receptive-field size, jump and start after each layer of a conv/pool stack.

    Parameters
    ----------
    layers : sequence of dict
        One dict per convolution or pooling layer with conv2d's argument names: ``kernel_size``
        (required), ``stride`` (default 1), ``padding`` (default 0), ``dilation`` (default 1);
        each an int or an (h, w) pair.

    Returns
    -------
    list of ReceptiveField
        One record per layer with fields ``size``, ``jump`` and ``start`` (see the module
        docstring). Ints (start: a float) when every argument of every layer is an int, (h, w)
        pairs otherwise.

    Examples
    --------
    >>> receptive_field([{"kernel_size": 3, "stride": 2}, {"kernel_size": 3}])[-1]
    ReceptiveField(size=7, jump=2, start=3.0)
    >>> receptive_field([{"kernel_size": (3, 1), "padding": (1, 0)}])[0]
    ReceptiveField(size=(3, 1), jump=(1, 1), start=(0.0, 0.0))
    """
    if isinstance(layers, dict) or not hasattr(layers, "__iter__"):
        raise TypeError(f"layers must be a sequence of dicts (one per layer), got {type(layers).__name__}")
    size, jump, start = [1, 1], [1, 1], [0.0, 0.0]
    all_ints = True
    records = []
    for index, layer in enumerate(layers):
        if not isinstance(layer, dict):
            raise TypeError(f"layers[{index}] must be a dict with keys {_LAYER_KEYS}, got {layer!r}")
        unknown = set(layer) - set(_LAYER_KEYS)
        if unknown:
            raise ValueError(f"layers[{index}] has unknown keys {sorted(unknown)}; accepted: {_LAYER_KEYS}")
        if "kernel_size" not in layer:
            raise ValueError(f"layers[{index}] needs a 'kernel_size', got {layer!r}")
        all_ints &= not any(isinstance(value, (tuple, list)) for value in layer.values())
        kernel = int_pair(f"layers[{index}]['kernel_size']", layer["kernel_size"], minimum=1)
        stride = int_pair(f"layers[{index}]['stride']", layer.get("stride", 1), minimum=1)
        padding = int_pair(f"layers[{index}]['padding']", layer.get("padding", 0), minimum=0)
        dilation = int_pair(f"layers[{index}]['dilation']", layer.get("dilation", 1), minimum=1)
        for axis in range(2):
            span = dilation[axis] * (kernel[axis] - 1)
            size[axis] += span * jump[axis]
            start[axis] += (span / 2 - padding[axis]) * jump[axis]
            jump[axis] *= stride[axis]
        if all_ints:
            records.append(ReceptiveField(size[0], jump[0], start[0]))
        else:
            records.append(ReceptiveField(tuple(size), tuple(jump), tuple(start)))
    if not all_ints:  # one pair argument anywhere makes every record a pair, for a uniform list
        records = [ReceptiveField(*((field, field) if not isinstance(field, tuple) else field for field in r))
                   for r in records]
    return records
