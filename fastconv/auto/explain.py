"""``explain``: what ``backend="auto"`` would do for a call, and why, as a table.

Like opt_einsum's ``contract_path``: every backend, whether it can run the call (or why not), its
estimated time, its measured time when the problem was tuned, and the pick with its reason.

Examples
--------
>>> import fastconv
>>> report = fastconv.explain((1, 1, 64, 64), (1, 1, 3, 3), padding="same")
>>> report.choice in [row.name for row in report.rows if row.supported]
True
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from fastconv import backends, config
from fastconv.auto import tuning_cache
from fastconv.auto.choice import decline_reason, estimate, fastest, measure, model_choice, weight_decline_reason
from fastconv.auto.choice import weight_rank
from fastconv.auto.constants import constants_source
from fastconv.auto.timing import format_seconds
from fastconv.geometry import ConvSpec, backend_input, backend_spec, make_spec, resolve_dtypes

__all__ = ["ExplainRow", "Explanation", "explain"]


@dataclass
class ExplainRow:
    """One backend's line of :class:`Explanation`."""

    name: str
    supported: bool
    reason: str  # why not, when not supported
    estimated_seconds: float | None
    measured_seconds: float | None = None
    note: str = ""  # e.g. why it was not measured


@dataclass
class Explanation:
    """What ``backend="auto"`` would do for one call, and why; ``repr`` prints it as a table."""

    spec: ConvSpec
    rows: list[ExplainRow]
    choice: str
    why: str
    constants_source: str
    rank: int | None = None
    extra: dict = field(default_factory=dict)

    def __repr__(self) -> str:
        spec = self.spec
        lines = [f"conv2d input {spec.input_shape} weight {spec.weight_shape} stride {spec.stride} "
                 f"padding {spec.padding} dilation {spec.dilation} groups {spec.groups} {spec.dtype}"
                 + ("" if self.rank is None else f", kernel rank {self.rank}"),
                 f"{'backend':<11} {'supported':<40} {'estimated':>11} {'measured':>11}"]
        for row in self.rows:
            status = "yes" if row.supported else f"no: {row.reason}"
            if len(status) > 40:
                status = status[:37] + "..."
            estimated = "" if row.estimated_seconds is None else format_seconds(row.estimated_seconds)
            measured = row.note if row.measured_seconds is None else format_seconds(row.measured_seconds)
            mark = "  <- auto" if row.name == self.choice else ""
            lines.append(f"{row.name:<11} {status:<40} {estimated:>11} {measured:>11}{mark}")
        lines.append(f"auto picks {self.choice!r}: {self.why}")
        lines.append(f"cost constants: {self.constants_source}")
        return "\n".join(lines)

    __str__ = __repr__


def _shape_or_array(name, value):
    if isinstance(value, (tuple, list)) and all(isinstance(v, (int, np.integer)) for v in value):
        return tuple(int(v) for v in value), None
    array = np.asarray(value)
    return array.shape, array


def explain(x_or_shape, weight_or_shape, bias=None, *, stride=1, padding=0, dilation=1, groups=1,
            padding_mode="zeros", dtype=None, tune=False) -> Explanation:
    """Show how ``backend="auto"`` chooses for a call: every backend, supported or why not, its
    estimated time, its measured time if tuned, and the pick with its reason.

    Parameters
    ----------
    x_or_shape, weight_or_shape : array_like or tuple of int
        The operands of :func:`fastconv.conv2d`, or just their shapes. With arrays the kernels'
        rank is known (it decides whether ``separable`` pays); with shapes full rank is assumed.
    bias, stride, padding, dilation, groups, padding_mode
        As for :func:`fastconv.conv2d`.
    dtype : dtype, optional
        Compute dtype when only shapes are given (default float64, numpy's default).
    tune : bool
        Time every eligible backend now (on the arrays, or on random data of the shapes) and
        record the result in the autotuning cache.

    Returns
    -------
    Explanation
        ``.rows`` (one :class:`ExplainRow` per backend), ``.choice``, ``.why``; ``repr`` is a table.

    Examples
    --------
    >>> import fastconv
    >>> report = fastconv.explain((1, 3, 32, 32), (8, 3, 3, 3), padding=1, dtype="float32")
    >>> [row.name for row in report.rows][0]
    'naive'
    >>> print(repr(report).splitlines()[-2].startswith("auto picks"))
    True
    """
    x_shape, x = _shape_or_array("x", x_or_shape)
    w_shape, weight = _shape_or_array("weight", weight_or_shape)
    if len(x_shape) == 3:
        x_shape = (1,) + x_shape
        x = None if x is None else x[None]
    if x is not None and weight is not None:
        operand_dtypes = [x.dtype, weight.dtype] + ([] if bias is None else [np.asarray(bias).dtype])
        compute_dtype, _ = resolve_dtypes(*operand_dtypes)
    else:
        compute_dtype = np.dtype(dtype if dtype is not None else
                                 (x.dtype if x is not None else weight.dtype if weight is not None else np.float64))
        compute_dtype = resolve_dtypes(compute_dtype)[0]
    spec = make_spec(x_shape, w_shape, stride=stride, padding=padding, dilation=dilation, groups=groups,
                     padding_mode=padding_mode, dtype=compute_dtype)
    spec = backend_spec(spec)
    if weight is not None:
        weight = np.ascontiguousarray(weight, dtype=compute_dtype)
    rank = weight_rank(weight)

    measured: dict = {}
    if tune:
        rng = np.random.default_rng(0)
        x_run = x if x is not None else rng.standard_normal(x_shape)
        w_run = weight if weight is not None else rng.standard_normal(w_shape).astype(compute_dtype)
        full_spec = make_spec(x_shape, w_shape, stride=stride, padding=padding, dilation=dilation,
                              groups=groups, padding_mode=padding_mode, dtype=compute_dtype)
        x_run, _ = backend_input(np.ascontiguousarray(x_run, dtype=compute_dtype), full_spec)
        operands = (x_run, np.ascontiguousarray(w_run, dtype=compute_dtype),
                    None if bias is None else np.ascontiguousarray(bias, dtype=compute_dtype))
        measured = measure(spec, operands)
        entry = {"backend": fastest(measured), "seconds": measured}
        tuning_cache.remember(tuning_cache.signature(spec), entry)
    else:
        entry = tuning_cache.lookup(tuning_cache.signature(spec))
        if entry is not None:
            measured = entry.get("seconds", {})

    rows = []
    for name in backends.backend_names():
        reason = decline_reason(name, spec) or weight_decline_reason(name, weight, spec)
        if reason is None and backends.placement(name) == "device":
            reason = f"host arrays: auto picks {name} only for arrays in GPU memory or via use_backend({name!r})"
            estimated = None
        else:
            estimated = None if reason is not None else estimate(name, spec, rank)
        value = measured.get(name)
        rows.append(ExplainRow(name, reason is None, reason or "", estimated,
                               value if isinstance(value, float) else None,
                               value if isinstance(value, str) else ""))

    candidates = [row for row in rows if row.supported]
    if not candidates:
        raise ValueError(f"no backend can run this convolution: {spec}")
    timed = {name: seconds for name, seconds in measured.items() if isinstance(seconds, float)
             and any(row.name == name for row in candidates)}
    if timed and (tune or config.autotune):
        choice = fastest(timed)
        why = f"fastest measured ({format_seconds(timed[choice])})"
    else:
        choice = model_choice(spec, weight)
        estimates = sorted((row.estimated_seconds, row.name) for row in candidates)
        runner_up = [f"{name} {format_seconds(seconds)}" for seconds, name in estimates if name != choice][:1]
        chosen = next(row for row in candidates if row.name == choice)
        why = f"lowest estimated time ({format_seconds(chosen.estimated_seconds)}"
        why += f"; next best {runner_up[0]})" if runner_up else "; the only candidate)"
        if timed:
            why += "; measurements above are not used unless autotuning is on"
    return Explanation(spec, rows, choice, why, constants_source(), rank)


