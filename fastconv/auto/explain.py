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

from dataclasses import dataclass, field, replace

import numpy as np

from fastconv import backends, config
from fastconv.auto import passes, tuning_cache
from fastconv.auto.choice import decline_reason, estimate, fastest, measure, model_choice, weight_decline_reason
from fastconv.auto.choice import weight_rank
from fastconv.auto.constants import constants_source
from fastconv.auto.timing import format_seconds
from fastconv.geometry import ConvSpec, backend_input, backend_spec, check_dtype, make_spec, resolve_dtypes

__all__ = ["ExplainRow", "Explanation", "explain"]


@dataclass
class ExplainRow:
    """One line of :class:`Explanation`: a backend, or a peer library timed beside them."""

    name: str
    supported: bool
    reason: str  # why not, when not supported
    estimated_seconds: float | None
    measured_seconds: float | None = None
    note: str = ""  # why it was not measured


# Widths of the table's columns; a reason or note that does not fit becomes a numbered footnote.
_NAME_WIDTH, _STATUS_WIDTH, _TIME_WIDTH = 11, 32, 11


class _Footnotes:
    """Numbered footnotes under a table: one number per distinct text, in order of first use."""

    def __init__(self):
        self.texts: list[str] = []

    def mark(self, text: str) -> str:
        if text not in self.texts:
            self.texts.append(text)
        return f"[{self.texts.index(text) + 1}]"

    def lines(self) -> list[str]:
        return [f"[{number}] {text}" for number, text in enumerate(self.texts, 1)]


def _short(text: str, width: int, footnotes: _Footnotes, footnote: str) -> str:
    """``text`` itself when it fits ``width``, else its first word and the number of ``footnote``."""
    if len(text) <= width:
        return text
    return f"{text.split(':', 1)[0].split(' ', 1)[0]} {footnotes.mark(footnote)}"


@dataclass
class Explanation:
    """What ``backend="auto"`` would do for one call, and why; ``repr`` prints it as a table.

    ``rows`` has one :class:`ExplainRow` per backend; ``peers`` the peer libraries timed beside
    them (see :meth:`with_measurements`), shown as rows of their own below the backends.
    """

    spec: ConvSpec
    rows: list[ExplainRow]
    choice: str
    why: str
    constants_source: str
    rank: int | None = None
    extra: dict = field(default_factory=dict)
    peers: list[ExplainRow] = field(default_factory=list)

    def with_measurements(self, measured, peers=None) -> "Explanation":
        """A copy whose "measured" column holds ``measured``: backend name → seconds, or a note
        saying why it was not timed; ``peers`` (name → seconds or note) adds rows for peer
        libraries. The choice and its reason stay as they are: measurements change auto's pick
        only with autotuning (``tune=True``).

        Examples
        --------
        >>> import fastconv
        >>> report = fastconv.explain((1, 1, 16, 16), (1, 1, 3, 3), dtype="float32")
        >>> timed = report.with_measurements({"naive": 2e-3}, peers={"scipy": 1e-3})
        >>> [(row.name, row.measured_seconds) for row in timed.rows if row.name == "naive"]
        [('naive', 0.002)]
        >>> [row.name for row in timed.peers]
        ['scipy']
        """
        def filled(row: ExplainRow, value) -> ExplainRow:
            if isinstance(value, (float, int)) and not isinstance(value, bool):
                return replace(row, measured_seconds=float(value), note="")
            return replace(row, measured_seconds=None, note="" if value is None else str(value))

        rows = [filled(row, measured[row.name]) if row.name in measured else row for row in self.rows]
        peer_rows = [filled(ExplainRow(name, True, "", None), value) for name, value in (peers or {}).items()]
        return replace(self, rows=rows, peers=peer_rows)

    def _measured_line(self) -> str | None:
        timed = {row.name: row.measured_seconds for row in self.rows if row.measured_seconds is not None}
        if not timed:
            return None
        order = [row.name for row in self.rows]
        fastest_name = min(timed, key=lambda name: (timed[name], order.index(name)))
        best = format_seconds(timed[fastest_name])
        if fastest_name == self.choice:
            return f"measured: auto's pick {self.choice!r} is the fastest ({best})"
        line = f"measured: {fastest_name!r} is the fastest ({best}); auto's pick {self.choice!r} "
        if self.choice in timed:
            return line + f"took {timed[self.choice] / timed[fastest_name]:.2f}x as long"
        return line + "was not timed"

    def __repr__(self) -> str:
        spec = self.spec
        footnotes = _Footnotes()
        lines = [f"{self.extra.get('op', 'conv2d')} input {spec.input_shape} weight {spec.weight_shape} stride {spec.stride} "
                 f"padding {spec.padding} dilation {spec.dilation} groups {spec.groups} {spec.dtype}"
                 + ("" if self.rank is None else f", kernel rank {self.rank}"),
                 f"{'backend':<{_NAME_WIDTH}} {'supported':<{_STATUS_WIDTH}} {'estimated':>{_TIME_WIDTH}} "
                 f"{'measured':>{_TIME_WIDTH}}"]
        for peer, row in [*((False, row) for row in self.rows), *((True, row) for row in self.peers)]:
            if peer:
                status = "peer library (its own process)"
            else:
                status = "yes" if row.supported else _short(f"no: {row.reason}", _STATUS_WIDTH, footnotes,
                                                               f"{row.name}: {row.reason}")
            estimated = "" if row.estimated_seconds is None else format_seconds(row.estimated_seconds)
            if row.measured_seconds is not None:
                measured = format_seconds(row.measured_seconds)
            else:  # a backend that cannot run the call: the supported column already says why
                measured = _short(row.note, _TIME_WIDTH, footnotes, f"{row.name}: {row.note}") if row.supported else ""
            mark = "  <- auto" if row.name == self.choice and not peer else ""
            lines.append(f"{row.name:<{_NAME_WIDTH}} {status:<{_STATUS_WIDTH}} {estimated:>{_TIME_WIDTH}} "
                         f"{measured:>{_TIME_WIDTH}}{mark}")
        lines += footnotes.lines()
        lines += self.extra.get("notes", [])
        measured_line = self._measured_line()
        if measured_line:
            lines.append(measured_line)
        lines.append(f"auto picks {self.choice!r}: {self.why}")
        lines.append(f"cost constants: {self.constants_source}")
        return "\n".join(lines)

    __str__ = __repr__


def _shape_or_array(value):
    if isinstance(value, (tuple, list)) and all(isinstance(v, (int, np.integer)) for v in value):
        return tuple(int(v) for v in value), None
    array = np.asarray(value)
    return array.shape, array


def _compute_dtype(dtype, arrays) -> np.dtype:
    """The dtype conv2d would compute in: ``dtype`` when given, else that of the operand arrays."""
    if dtype is not None:
        try:
            requested = np.dtype(dtype)
        except TypeError:
            raise TypeError(f"dtype must be a numpy dtype such as 'float32', got {dtype!r}") from None
        check_dtype("dtype", requested)
        return resolve_dtypes(requested)[0]
    dtypes = [array.dtype for array in arrays if array is not None]
    return resolve_dtypes(*dtypes)[0] if dtypes else np.dtype(np.float64)


def explain(x_or_shape, weight_or_shape, bias=None, *, stride=1, padding=0, dilation=1, groups=1,
            padding_mode="zeros", dtype=None, tune=False, op="conv2d") -> Explanation:
    """Show how ``backend="auto"`` chooses for a call: every backend, supported or why not, its
    estimated time, its measured time if tuned, and the pick with its reason.

    Parameters
    ----------
    x_or_shape, weight_or_shape : array_like or tuple of int
        The operands of :func:`fastconv.conv2d`, or just their shapes. Backends whose fitness
        depends on the weight values (``separable``: low-rank kernels only) are judged on the
        weight; given only its shape, on random (full-rank) kernels drawn from a fixed seed, the
        common case of learned filters.
    bias, stride, padding, dilation, groups, padding_mode
        As for :func:`fastconv.conv2d`.
    dtype : dtype, optional
        The compute dtype to explain, as if the operands were cast to it. Default: the one
        :func:`fastconv.conv2d` computes in for the arrays given (float16 computes in float32),
        float64 when only shapes are given.
    tune : bool
        Time every eligible backend now (on the arrays, or on random data of the shapes) and
        record the result in the autotuning cache (the forward pass only).
    op : {"conv2d", "conv2d_input", "conv2d_weight"}
        The forward pass, or one of its backward passes (the gradient with respect to the input
        or to the weight of the conv2d call described): then one row per backend says how it
        would run the pass (see :mod:`fastconv.auto.passes`) and what it would cost.

    Returns
    -------
    Explanation
        ``.rows`` (one :class:`ExplainRow` per backend), ``.choice``, ``.why``; ``repr`` is a table.
        Reasons and notes too long for their column are numbered footnotes under it.

    Examples
    --------
    >>> import fastconv
    >>> report = fastconv.explain((1, 3, 32, 32), (8, 3, 3, 3), padding=1, dtype="float32")
    >>> [row.name for row in report.rows][0], report.spec.dtype
    ('naive', dtype('float32'))
    >>> print(repr(report).splitlines()[-2].startswith("auto picks"))
    True
    >>> weight_pass = fastconv.explain((1, 3, 32, 32), (8, 3, 3, 3), padding=1, op="conv2d_weight")
    >>> weight_pass.choice in [row.name for row in weight_pass.rows if row.supported]
    True
    """
    if op not in ("conv2d", *passes.PASS_NAMES.values()):
        raise ValueError(f"op must be 'conv2d' or one of {tuple(passes.PASS_NAMES.values())}, got {op!r}")
    x_shape, x = _shape_or_array(x_or_shape)
    w_shape, weight = _shape_or_array(weight_or_shape)
    if len(x_shape) == 3:
        x_shape = (1,) + x_shape
        x = None if x is None else x[None]
    compute_dtype = _compute_dtype(dtype, [x, weight, None if bias is None else np.asarray(bias)])
    full_spec = make_spec(x_shape, w_shape, stride=stride, padding=padding, dilation=dilation, groups=groups,
                          padding_mode=padding_mode, dtype=compute_dtype)
    spec = backend_spec(full_spec)
    if op != "conv2d":
        if tune:
            raise ValueError("tune=True times the forward pass only; measure a backward pass with "
                             "`fastconv explain --pass input|weight --measure`")
        return _explain_pass(op, full_spec, spec)
    rng = np.random.default_rng(0)
    if weight is None:  # validated above: the shape is a sane one to draw
        weight = rng.standard_normal(w_shape)
    weight = np.ascontiguousarray(weight, dtype=compute_dtype)
    rank = weight_rank(weight)

    measured: dict = {}
    if tune:
        x_run = x if x is not None else rng.standard_normal(x_shape)
        x_run, _ = backend_input(np.ascontiguousarray(x_run, dtype=compute_dtype), full_spec)
        operands = (x_run, weight, None if bias is None else np.ascontiguousarray(bias, dtype=compute_dtype))
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
        # as the choice does: the reference loops only where no compiled backend can run the call
        ranked = [row for row in candidates if not backends.is_reference(row.name)] or candidates
        estimates = sorted((row.estimated_seconds, row.name) for row in ranked)
        runner_up = [f"{name} {format_seconds(seconds)}" for seconds, name in estimates if name != choice][:1]
        chosen = next(row for row in candidates if row.name == choice)
        why = f"lowest estimated time ({format_seconds(chosen.estimated_seconds)}"
        why += f"; next best {runner_up[0]})" if runner_up else "; the only candidate)"
        left_out = [row.name for row in candidates if row not in ranked]
        if left_out:
            why += f"; not {', '.join(left_out)}: the reference loops, run only where nothing else can"
        if timed:
            why += "; measurements above are not used unless autotuning is on"
    return Explanation(spec, rows, choice, why, constants_source(), rank)


def _explain_pass(op: str, full_spec: ConvSpec, spec: ConvSpec) -> Explanation:
    """:func:`explain` of a backward pass: one row per backend that can run it, and auto's route."""
    pass_ = next(name for name, function in passes.PASS_NAMES.items() if function == op)
    rows, routes = [], {}
    for name in passes.pass_backends(pass_):
        reason = backends.unavailable_reason(name)
        route = None
        if reason is None:
            route = passes.route(pass_, name, spec)
            reason = passes.decline_reason(route, auto=True)
        routes[name] = route
        rows.append(ExplainRow(name, reason is None, reason or "",
                               None if reason is not None else passes.estimate(route)))
    chosen = passes.choose(pass_, spec)
    estimates = sorted((row.estimated_seconds, row.name) for row in rows if row.supported)
    runner_up = [f"{name} {format_seconds(seconds)}" for seconds, name in estimates if name != chosen.backend][:1]
    why = f"lowest estimated time ({format_seconds(passes.estimate(chosen))}"
    why += f"; next best {runner_up[0]})" if runner_up else "; the only candidate)"
    forms = {}
    for row in rows:
        if row.supported:
            forms.setdefault(routes[row.name].describe(), []).append(row.name)
    notes = [f"{', '.join(names)}: {form}" for form, names in forms.items()]
    return Explanation(full_spec, rows, chosen.backend, why, constants_source(),
                       extra={"op": f"{op} (the {pass_} pass) of conv2d", "notes": notes})
