"""Huge and edge geometry on every operation and backend: the definition's result, or one clear ValueError.

Padding, stride, dilation, kernel sizes and output padding are drawn tiny (0-3) or huge (2**36 up
to 2**62 and past it), in every combination: what torch computes (a stride larger than the input
gives one output; huge padding with a huge stride, or huge dilation with huge padding, leave a few
outputs) must be computed by every backend and equal the definition; what cannot be computed (an
output larger than memory, an extent past 2**62, a kernel larger than the padded input) must be
refused by validation with the same ValueError on every backend, naming the arguments.

The property runs in a child process whose address space is limited (``RLIMIT_AS``) a few GiB
above what it uses after a warm-up call of every operation: an allocation that validation should
have prevented fails there with numpy's MemoryError (a test failure), instead of swapping, being
killed, or passing unnoticed on a machine with more memory. Torch computes these geometries too;
it is not needed here: the references below are written from the definitions, loop by loop,
touching only the taps that fall in the input.
"""

import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from hypothesis import assume, given, strategies as st

import fastconv
from fastconv import backends
from reference import explicit_padding, reference_conv2d, relative_error

CONV_BACKENDS = [name for name in backends.backend_names() if name != "cuda" and backends.unavailable_reason(name) is None]
TRANSPOSE_BACKENDS = ["naive", "col2im"]
NAMES = ("padding", "stride", "dilation", "kernel", "output_padding", "reflect", "circular")
LIMIT = 2**62
SMALL_OUTPUT = 2**12  # outputs the references compute; larger ones that fit in memory are not drawn


def values(low):
    """A geometry value: tiny, huge (2**36 and up: times anything tiny, more memory than the child may
    use), at the 2**62 boundary, or past it."""
    huge = st.builds(lambda exponent, offset: 2**exponent + offset, st.sampled_from([36, 37, 40, 41, 61]),
                     st.integers(-1, 3))
    tiny = st.integers(low, 3)
    return st.one_of(tiny, tiny, tiny, huge, st.sampled_from([LIMIT - 1, LIMIT, 2**63, 10**20]))


def pairs(low):
    return st.one_of(values(low), st.tuples(values(low), values(low)))


def valid_geometry(value, low=0):
    """True when ``value`` (int or pair) is one that conv2d accepts at all (>= low, below 2**62)."""
    return all(low <= v < LIMIT for v in (value if isinstance(value, tuple) else (value, value)))


def as_pair(value):
    return value if isinstance(value, tuple) else (value, value)


# --------------------------------------------------------------------------------------------
# references from the definitions, visiting only the taps that land in the input


def source_index(position, size, mode):
    """The input row that padded position ``position`` (counted from the first input row) holds, or None for 0."""
    if 0 <= position < size:
        return position
    if mode == "zeros":
        return None
    if mode == "replicate":
        return min(max(position, 0), size - 1)
    if mode == "circular":
        return position % size
    return -position if position < 0 else 2 * (size - 1) - position  # reflect


def conv_by_taps(x, weight, bias, stride, sides, dilation, groups, mode):
    """conv2d by its definition; padding taps read 0 (or the mode's pixel)."""
    batch, channels, height, width = x.shape
    out_channels, per_group, kh, kw = weight.shape
    (sh, sw), (dh, dw), ((top, bottom), (left, right)) = stride, dilation, sides
    out_h = (height + top + bottom - dh * (kh - 1) - 1) // sh + 1
    out_w = (width + left + right - dw * (kw - 1) - 1) // sw + 1
    out = np.zeros((batch, out_channels, out_h, out_w))
    out_per_group = out_channels // groups
    for i in range(out_h):
        for j in range(out_w):
            for u in range(kh):
                r = source_index(i * sh + u * dh - top, height, mode)
                for v in range(kw):
                    c = source_index(j * sw + v * dw - left, width, mode)
                    if r is None or c is None:
                        continue
                    for g in range(groups):
                        block = slice(g * out_per_group, (g + 1) * out_per_group)
                        out[:, block, i, j] += x[:, g * per_group:(g + 1) * per_group, r, c] @ weight[block, :, u, v].T
    if bias is not None:
        out += bias[None, :, None, None]
    return out


def conv_transpose_by_taps(x, weight, stride, padding, output_padding, dilation, groups):
    batch, channels, height, width = x.shape
    _, out_per_group, kh, kw = weight.shape
    (sh, sw), (ph, pw), (oph, opw), (dh, dw) = stride, padding, output_padding, dilation
    out_h = (height - 1) * sh - 2 * ph + dh * (kh - 1) + oph + 1
    out_w = (width - 1) * sw - 2 * pw + dw * (kw - 1) + opw + 1
    out = np.zeros((batch, out_per_group * groups, out_h, out_w))
    in_per_group = channels // groups
    for c in range(channels):
        g = c // in_per_group
        for i in range(height):
            for j in range(width):
                for u in range(kh):
                    oy = i * sh - ph + u * dh
                    for v in range(kw):
                        ox = j * sw - pw + v * dw
                        if 0 <= oy < out_h and 0 <= ox < out_w:
                            out[:, g * out_per_group:(g + 1) * out_per_group, oy, ox] += (
                                x[:, c, i, j][:, None] * weight[c, :, u, v][None, :])
    return out


def pool_size(size, kernel, stride, padding, dilation, ceil_mode):
    span = size + 2 * padding - dilation * (kernel - 1) - 1
    out = -(-span // stride) + 1 if ceil_mode else span // stride + 1
    if ceil_mode and (out - 1) * stride >= size + padding:
        out -= 1
    return out


def pool_by_taps(x, kernel, stride, padding, dilation, ceil_mode, kind):
    """torch's max_pool2d / avg_pool2d (count_include_pad=True) by their definitions."""
    height, width = x.shape[2:]
    out_h, out_w = (pool_size(n, k, s, p, d, ceil_mode) for n, k, s, p, d in
                    zip((height, width), kernel, stride, padding, dilation))
    out = np.empty(x.shape[:2] + (out_h, out_w))
    for i in range(out_h):
        for j in range(out_w):
            top, left = i * stride[0] - padding[0], j * stride[1] - padding[1]
            # the input rows the window's taps hit: top + u * dilation for u < kernel
            rows = [r for r in range(height) if (r - top) % dilation[0] == 0 and 0 <= (r - top) // dilation[0] < kernel[0]]
            cols = [c for c in range(width) if (c - left) % dilation[1] == 0 and 0 <= (c - left) // dilation[1] < kernel[1]]
            window = x[:, :, rows][:, :, :, cols]
            if kind == "max":
                out[:, :, i, j] = window.max(axis=(2, 3)) if window.size else -np.inf
            else:  # torch: the window clipped to the padded input, padding included in the count
                size = ((min(top + kernel[0], height + padding[0]) - top)
                        * (min(left + kernel[1], width + padding[1]) - left))
                out[:, :, i, j] = window.sum(axis=(2, 3)) / size
    return out


# --------------------------------------------------------------------------------------------
# the property


def outcome(call):
    """("ok", result) or ("error", message) for a ValueError; anything else propagates."""
    try:
        return "ok", call()
    except ValueError as error:
        return "error", str(error)


def assert_one_clear_error(outcomes, what):
    """Every backend refused, with one message that names a geometry argument."""
    messages = {message for kind, message in outcomes.values() if kind == "error"}
    assert all(kind == "error" for kind, _ in outcomes.values()), f"{what}: some computed: {outcomes}"
    assert len(messages) == 1, f"{what}: backends disagree: {messages}"
    message = messages.pop()
    assert any(name in message for name in NAMES), f"{what}: {message!r} names no argument"


def assert_computed(outcomes, expected, what):
    """Every backend computed the reference's values (declines for other reasons are allowed)."""
    for name, (kind, result) in outcomes.items():
        if kind == "error":
            assert "cannot run this convolution" in result, f"{what}, {name}: {result}"
            continue
        assert result.shape == expected.shape, f"{what}, {name}: shape {result.shape}, expected {expected.shape}"
        scale = np.max(np.abs(expected[np.isfinite(expected)]), initial=1.0)
        np.testing.assert_allclose(result, expected, rtol=1e-9, atol=1e-9 * scale, err_msg=f"{what}, {name}")


def fits(shape, itemsize=8):
    return math.prod(shape) * itemsize <= fastconv.geometry.memory_limit_bytes()


@st.composite
def conv_geometry(draw):
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    batch, channels = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    groups = draw(st.sampled_from([1, channels]))
    size = (draw(st.integers(1, 6)), draw(st.integers(1, 6)))
    kernel = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    out_channels = groups * draw(st.integers(1, 2))
    # rank-1 kernels, so that separable runs them too
    weight = (rng.standard_normal((out_channels, channels // groups, kernel[0], 1))
              * rng.standard_normal((out_channels, channels // groups, 1, kernel[1])))
    form = draw(st.sampled_from(["value", "pairs", "same", "full", "valid"]))
    if form == "value":
        padding = draw(pairs(0))
    elif form == "pairs":
        padding = tuple(draw(st.tuples(values(0), values(0))) for _ in range(2))
    else:
        padding = form
    return dict(x=rng.standard_normal((batch, channels, *size)), weight=weight,
                bias=rng.standard_normal(out_channels) if draw(st.booleans()) else None,
                kwargs=dict(stride=draw(pairs(1)), padding=padding, dilation=draw(pairs(1)), groups=groups,
                            padding_mode=draw(st.sampled_from(["zeros", "zeros", "replicate", "reflect", "circular"]))))


def expected_conv(problem):
    """The reference result, or None when conv2d must refuse the call."""
    x, weight, kwargs = problem["x"], problem["weight"], problem["kwargs"]
    stride, dilation, padding = kwargs["stride"], kwargs["dilation"], kwargs["padding"]
    if not (valid_geometry(stride, 1) and valid_geometry(dilation, 1)):
        return None
    if not isinstance(padding, str) and not all(valid_geometry(p) for p in (
            padding if isinstance(padding, tuple) and isinstance(padding[0], tuple) else (padding,))):
        return None
    stride, dilation, size, kernel = as_pair(stride), as_pair(dilation), x.shape[2:], weight.shape[2:]
    sides = explicit_padding(padding, size, kernel, stride, dilation)
    mode = kwargs["padding_mode"]
    for n, (before, after) in zip(size, sides):
        if (mode == "reflect" and max(before, after) >= n) or (mode == "circular" and max(before, after) > n):
            return None
        if n + before + after >= LIMIT:
            return None
    out = tuple((n + sum(p) - d * (k - 1) - 1) // s + 1 for n, p, k, s, d in zip(size, sides, kernel, stride, dilation))
    if min(out) < 1 or not fits((x.shape[0], weight.shape[0]) + out):
        return None
    assume(math.prod(out) <= SMALL_OUTPUT)
    if max(n + sum(p) for n, p in zip(size, sides)) < 4096:  # small enough to pad: the independent reference
        return reference_conv2d(x, weight, problem["bias"], stride, sides, dilation, kwargs["groups"], mode)
    return conv_by_taps(x, weight, problem["bias"], stride, sides, dilation, kwargs["groups"], mode)


def check_conv_ops(problem):
    """conv2d on every backend, and the operations with conv2d's geometry (local, tiled, depthwise-separable)."""
    x, weight, bias, kwargs = problem["x"], problem["weight"], problem["bias"], problem["kwargs"]
    expected = expected_conv(problem)
    outcomes = {name: outcome(lambda: fastconv.conv2d(x, weight, bias, backend=name, **kwargs))
                for name in CONV_BACKENDS + ["auto"]}
    shape = outcome(lambda: fastconv.output_shape(x.shape, weight.shape, **{k: v for k, v in kwargs.items()
                                                                              if k != "padding_mode"}))
    if expected is None:
        assert_one_clear_error(outcomes, f"conv2d {kwargs}")
        return
    assert_computed(outcomes, expected, f"conv2d {kwargs}")
    assert shape == ("ok", expected.shape)
    geometry = {k: v for k, v in kwargs.items() if k != "groups"}
    if kwargs["groups"] == 1:
        out_size, filters = expected.shape[2:], weight[None, None]
        local = np.broadcast_to(filters, out_size + weight.shape)
        assert_computed({"local": outcome(lambda: fastconv.local_conv2d(x, local, bias, **geometry))}, expected,
                        f"local_conv2d {geometry}")
        tile = (out_size[0] + 1, 2)  # larger than the output on one axis
        tiled = np.broadcast_to(filters, tile + weight.shape)
        assert_computed({"tiled": outcome(lambda: fastconv.tiled_conv2d(x, tiled, bias, **geometry))}, expected,
                        f"tiled_conv2d {geometry}")
    if kwargs["groups"] == x.shape[1] and weight.shape[0] == x.shape[1]:  # depthwise, then a 1x1 identity
        pointwise = np.eye(x.shape[1])[:, :, None, None]
        out = outcome(lambda: fastconv.depthwise_separable_conv2d(x, weight, pointwise, bias, **geometry))
        assert_computed({"depthwise_separable": out}, expected, f"depthwise_separable_conv2d {geometry}")


@st.composite
def transpose_geometry(draw):
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    size = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    kernel = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    return dict(x=rng.standard_normal((1, 2, *size)), weight=rng.standard_normal((2, 1, *kernel)),
                kwargs=dict(stride=draw(pairs(1)), padding=draw(pairs(0)),
                            output_padding=draw(st.one_of(st.just(0), pairs(0))),  # mostly legal
                            dilation=draw(st.one_of(st.just(1), pairs(1))), groups=draw(st.sampled_from([1, 2]))))


def check_transpose(problem):
    x, weight, kwargs = problem["x"], problem["weight"], problem["kwargs"]
    expected = None
    if all(valid_geometry(kwargs[name], 1 if name in ("stride", "dilation") else 0) for name in
           ("stride", "padding", "output_padding", "dilation")):
        stride, padding, extra, dilation = (as_pair(kwargs[name]) for name in
                                            ("stride", "padding", "output_padding", "dilation"))
        out = tuple((n - 1) * s - 2 * p + d * (k - 1) + e + 1 for n, s, p, d, k, e in
                    zip(x.shape[2:], stride, padding, dilation, weight.shape[2:], extra))
        legal = all(e < max(s, d) for e, s, d in zip(extra, stride, dilation))
        if legal and min(out) >= 1 and max(out) < LIMIT and fits((1, kwargs["groups"]) + out):
            assume(math.prod(out) <= SMALL_OUTPUT)
            expected = conv_transpose_by_taps(x, weight, stride, padding, extra, dilation, kwargs["groups"])
    outcomes = {name: outcome(lambda: fastconv.conv_transpose2d(x, weight, backend=name, **kwargs))
                for name in TRANSPOSE_BACKENDS}
    if expected is None:
        assert_one_clear_error(outcomes, f"conv_transpose2d {kwargs}")
    else:
        assert_computed(outcomes, expected, f"conv_transpose2d {kwargs}")


@st.composite
def pool_geometry(draw):
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    size = (draw(st.integers(1, 6)), draw(st.integers(1, 6)))
    kernel = draw(pairs(1))
    # padding at most half the kernel (torch's rule) most of the time, sometimes anything
    legal = st.tuples(*(st.integers(0, k // 2) for k in as_pair(kernel))) if valid_geometry(kernel, 1) else pairs(0)
    padding = draw(st.one_of(legal, legal, pairs(0)))
    return dict(x=rng.standard_normal((1, 2, *size)), kernel=kernel, stride=draw(st.one_of(st.none(), pairs(1))),
                padding=padding, dilation=draw(st.one_of(st.just(1), pairs(1))), ceil_mode=draw(st.booleans()))


def check_pooling(problem):
    x = problem["x"]
    for kind, pool in (("max", fastconv.max_pool2d), ("avg", fastconv.avg_pool2d)):
        dilation = problem["dilation"] if kind == "max" else 1
        kwargs = dict(stride=problem["stride"], padding=problem["padding"], ceil_mode=problem["ceil_mode"])
        if kind == "max":
            kwargs["dilation"] = dilation
        expected = None
        kernel, stride_given = problem["kernel"], problem["stride"]
        if all(valid_geometry(v, low) for v, low in ((kernel, 1), (problem["padding"], 0), (dilation, 1))) and (
                stride_given is None or valid_geometry(stride_given, 1)):
            kernel, padding, dilation = as_pair(kernel), as_pair(problem["padding"]), as_pair(dilation)
            stride = kernel if stride_given is None else as_pair(stride_given)
            out = tuple(pool_size(n, k, s, p, d, problem["ceil_mode"]) for n, k, s, p, d in
                        zip(x.shape[2:], kernel, stride, padding, dilation))
            legal = all(p <= k // 2 and n + 2 * p < LIMIT for p, k, n in zip(padding, kernel, x.shape[2:]))
            if legal and min(out) >= 1 and fits(x.shape[:2] + out):
                assume(math.prod(out) <= SMALL_OUTPUT)
                expected = pool_by_taps(x, kernel, stride, padding, dilation, problem["ceil_mode"], kind)
        result = outcome(lambda: pool(x, problem["kernel"], **kwargs))
        if expected is None:
            assert_one_clear_error({"only": result}, f"{kind}_pool2d {problem['kernel']} {kwargs}")
        else:
            assert_computed({"only": result}, expected, f"{kind}_pool2d {problem['kernel']} {kwargs}")


@given(problem=st.one_of(conv_geometry().map(lambda p: (check_conv_ops, p)),
                         transpose_geometry().map(lambda p: (check_transpose, p)),
                         pool_geometry().map(lambda p: (check_pooling, p))))
def check_every_operation(problem):
    check, geometry = problem
    check(geometry)


def warm_up():
    """Run every operation once, so that compiling and thread pools are done before memory is limited."""
    x, w = np.ones((1, 2, 5, 5)), np.ones((2, 1, 3, 3))
    for name in CONV_BACKENDS:
        if name != "winograd":
            fastconv.conv2d(x, w, groups=2, padding=(1, 2), stride=(1, 2), dilation=(2, 1), backend=name)
        fastconv.conv2d(x, np.ones((2, 2, 3, 3)), padding=1, backend=name)
    for name in TRANSPOSE_BACKENDS:
        fastconv.conv_transpose2d(x, np.ones((2, 1, 3, 3)), stride=2, groups=2, backend=name)
    fastconv.max_pool2d(x, 3, padding=1, dilation=2, ceil_mode=True)
    fastconv.avg_pool2d(x, 3, padding=1, ceil_mode=True)
    fastconv.local_conv2d(x, np.ones((3, 3, 2, 2, 3, 3)))
    fastconv.tiled_conv2d(x, np.ones((4, 4, 2, 2, 3, 3)))
    fastconv.depthwise_separable_conv2d(x, w, np.ones((2, 2, 1, 1)), padding=1)


def limit_address_space(extra_bytes):
    """Cap this process's address space at what it uses now plus ``extra_bytes``."""
    import resource

    with open("/proc/self/statm") as statm:
        used = int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    resource.setrlimit(resource.RLIMIT_AS, (used + extra_bytes, resource.getrlimit(resource.RLIMIT_AS)[1]))


def run_in_child(code: str):
    root = Path(__file__).resolve().parents[2]
    child = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                           timeout=600, cwd=root,
                           env={**os.environ, "PYTHONPATH": os.pathsep.join(map(str, (root, root / "tests",
                                                                                   root / "tests" / "geometry")))})
    assert child.returncode == 0, f"child exited {child.returncode}:\n{child.stdout[-5000:]}\n{child.stderr[-8000:]}"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the address-space limit is read from /proc")
def test_huge_geometry_is_computed_or_refused_alike_by_every_operation_and_backend():
    # tiny arrays: a few milliseconds per example, so more examples than the profile's default
    run_in_child("""
        import conftest  # the hypothesis profile
        from hypothesis import settings
        import test_geometry_limits as t
        t.warm_up()
        t.limit_address_space(3 << 30)
        settings(max_examples=max(300, settings.default.max_examples), deadline=None)(t.check_every_operation)()
        """)


# --------------------------------------------------------------------------------------------
# the cases that were reported, as regressions (in this process: they allocate little)


@pytest.mark.parametrize("backend", CONV_BACKENDS + ["auto"])
def test_reported_cases(backend):
    x, w = np.arange(16.0).reshape(1, 1, 4, 4), np.ones((1, 1, 3, 3))
    # dilation 2**31 with "same" padding: only the centre tap lands in the input, as torch computes
    out = outcome(lambda: fastconv.conv2d(x, w, dilation=2**31, padding="same", backend=backend))
    if backend == "winograd":  # the problem is read with stride 3 (gathered rows): it declines, saying so
        assert out[0] == "error" and "gathered" in out[1], out
    else:
        np.testing.assert_allclose(out[1], x, atol=1e-12)  # (fft rounds)
    for padding, size in ((10**6, "29.1 TiB"), (2**61, "beyond 2**62")):
        with pytest.raises(ValueError, match=rf"padding={padding}") as error:
            fastconv.conv2d(x, w, padding=padding, backend=backend)
        assert size in str(error.value)
    # a stride larger than the input with huge padding: a 3x3 output, the centre one reads x
    out = outcome(lambda: fastconv.conv2d(x, w, stride=10**6, padding=10**6, backend=backend))
    if backend != "winograd":
        expected = np.zeros((1, 1, 3, 3))
        expected[0, 0, 1, 1] = x[0, 0, :3, :3].sum()
        np.testing.assert_allclose(out[1], expected, atol=1e-12)
    out = fastconv.conv2d(x, w, stride=2**62 - 1, backend=backend if backend != "winograd" else "auto")
    np.testing.assert_allclose(out, x[:, :, :3, :3].sum(axis=(2, 3), keepdims=True))


def test_gathering_keeps_nan_and_inf_of_the_padding_taps():
    # zero padding contributes 0 * w: a NaN weight poisons every output even when its taps read padding
    x, w = np.ones((1, 1, 4, 4)), np.ones((1, 1, 2, 2))
    w[0, 0, 0, 0] = np.nan
    for backend in CONV_BACKENDS:
        if backend not in ("winograd", "separable"):  # (2x2 kernels; NaN has no low-rank factors)
            assert np.isnan(fastconv.conv2d(x, w, stride=10**6, padding=10**6, backend=backend)).all(), backend
    x[0, 0, 0, 0] = np.inf  # and an inf pixel is copied, never multiplied by a 0/1 mask
    out = fastconv.conv2d(x, np.ones((1, 1, 1, 1)), stride=(10**6, 1), padding=((10**6, 10**6), (0, 0)))
    assert out.shape == (1, 1, 3, 4) and out[0, 0, 1, 0] == np.inf and np.isfinite(out[0, 0, [0, 2]]).all()


@pytest.mark.parametrize("mode", ["zeros", "replicate", "reflect", "circular"])
def test_gathered_rows_hold_the_padding_modes_values(mode):
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((2, 3, 9, 60)), rng.standard_normal((2, 3, 2, 3))
    kwargs = dict(stride=(1, 50), padding=((1, 2), (6, 8)), dilation=(2, 1), padding_mode=mode)  # width gathered
    spec = fastconv.geometry.make_spec(x.shape, w.shape, **kwargs)
    assert fastconv.geometry.read_positions(spec)[0] is None and fastconv.geometry.read_positions(spec)[1] is not None
    sides = explicit_padding(kwargs["padding"], x.shape[2:], w.shape[2:], kwargs["stride"], kwargs["dilation"])
    expected = reference_conv2d(x, w, None, kwargs["stride"], sides, kwargs["dilation"], 1, mode)
    for backend in CONV_BACKENDS:
        if backend not in ("winograd", "separable"):
            assert relative_error(fastconv.conv2d(x, w, backend=backend, **kwargs), expected) <= 1e-12
    assert relative_error(conv_by_taps(x, w, None, kwargs["stride"], sides, kwargs["dilation"], 1, mode),
                          expected) <= 1e-12


def test_signal_results_larger_than_memory_are_refused_naming_the_mode():
    row, column = np.ones((1, 2**20)), np.ones((2**20, 1))  # 8 MiB each; the "full" result would be 8 TiB
    for function in (fastconv.convolve2d, fastconv.correlate2d):
        with pytest.raises(ValueError, match=r"mode='full'.*the result would have shape \(1048576, 1048576\) \(8 TiB"):
            function(row, column)


def test_output_shape_reports_huge_outputs_without_refusing_them():
    # a shape is not an allocation: output_shape answers for any representable geometry
    assert fastconv.output_shape((1, 1, 4, 4), (1, 1, 3, 3), padding=10**6) == (1, 1, 2000002, 2000002)
    with pytest.raises(ValueError, match="beyond 2\\*\\*62"):
        fastconv.output_shape((1, 1, 4, 4), (1, 1, 3, 3), padding=2**61)


def test_memory_limit_is_what_the_process_limit_leaves():
    run_in_child("""
        import resource, numpy as np, fastconv
        import test_geometry_limits as t
        assert fastconv.geometry.memory_limit_bytes() >= 2**26
        t.limit_address_space(2**30)
        assert 2**30 - 2**26 <= fastconv.geometry.memory_limit_bytes() <= 2**30
        try:  # a 1.46 GiB output
            fastconv.conv2d(np.ones((1, 1, 4, 4)), np.ones((1, 1, 1, 1)), padding=7000)
        except ValueError as error:
            assert "padding=7000" in str(error) and "1.46 GiB of float64" in str(error), error
        else:
            raise AssertionError("no error")
        """)
