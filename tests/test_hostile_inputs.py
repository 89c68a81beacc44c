"""Hostile inputs to every public function: a right answer or a ValueError/TypeError naming the argument.

Never a crash, a hang, a silent wrong answer or a modified input. Calls that would reach a numba
kernel with unchecked geometry run in a child process, so that a segfault fails one test instead
of killing pytest. Results are compared with the float64 reference, scipy or torch.
"""

import datetime
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import fastconv
import fastconv.dask
from fastconv import backends
from reference import reference_conv2d, relative_error

CONV_BACKENDS = [name for name in backends.backend_names() if name != "cuda" and backends.unavailable_reason(name) is None]
RNG = np.random.default_rng(7)
X = RNG.standard_normal((2, 4, 7, 8))
W = RNG.standard_normal((6, 2, 3, 3))  # groups=2
B = RNG.standard_normal(6)
# rank-1 filters, so that the separable backend runs them too
W_RANK1 = RNG.standard_normal((6, 2, 3, 1)) * RNG.standard_normal((6, 2, 1, 3))


def read_only(array):
    array = np.array(array)
    array.flags.writeable = False
    return array


def raises_naming(call, *names):
    """``call()`` raises ValueError or TypeError whose message names one of ``names``."""
    with pytest.raises((ValueError, TypeError)) as info:
        call()
    assert any(name in str(info.value) for name in names), f"{info.value!r} names none of {names}"


def run_isolated(code: str):
    """Run ``code`` in a fresh interpreter; a segfault or a non-zero exit fails the test."""
    root = Path(__file__).resolve().parents[1]
    child = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                           timeout=120, cwd=root, env={**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{root / 'tests'}"})
    assert child.returncode == 0, f"child exited {child.returncode}:\n{child.stdout}\n{child.stderr[-3000:]}"


# --------------------------------------------------------------------------------------------
# conv2d, every backend explicitly

BAD_GEOMETRY = [  # (keyword arguments, the name the error must carry)
    ({"stride": 0}, "stride"), ({"stride": -1}, "stride"), ({"stride": True}, "stride"),
    ({"stride": 1.5}, "stride"), ({"stride": "2"}, "stride"), ({"stride": None}, "stride"),
    ({"stride": (1,)}, "stride"), ({"stride": 10**20}, "stride"), ({"stride": 2**63}, "stride"),
    ({"padding": -1}, "padding"), ({"padding": 1.0}, "padding"), ({"padding": None}, "padding"),
    ({"padding": "SAME"}, "padding"), ({"padding": (1, 2, 3)}, "padding"), ({"padding": ((1,), (2, 2))}, "padding"),
    ({"padding": 10**20}, "padding"), ({"dilation": 0}, "dilation"), ({"dilation": 10**20}, "dilation"),
    ({"dilation": 50}, "kernel"), ({"groups": 0}, "groups"), ({"groups": 3}, "groups"), ({"groups": 2.0}, "groups"),
    ({"groups": True}, "groups"), ({"groups": None}, "groups"), ({"padding_mode": "zero"}, "padding_mode"),
    ({"padding_mode": None}, "padding_mode"), ({"padding": 7, "padding_mode": "reflect"}, "reflect"),
    ({"padding": 9, "padding_mode": "circular"}, "circular"),
]


@pytest.mark.parametrize("backend", CONV_BACKENDS)
def test_conv2d_bad_geometry_is_named(backend):
    # a child process: huge geometry used to reach the numba kernels (TypingError) unchecked
    run_isolated(f"""
        import numpy as np, fastconv
        from test_hostile_inputs import BAD_GEOMETRY, X, W
        for options, name in BAD_GEOMETRY:
            options = {{"groups": 2, **options}}
            try:
                fastconv.conv2d(X, W, backend={backend!r}, **options)
            except (ValueError, TypeError) as error:
                assert name in str(error), (options, error)
            else:
                raise AssertionError(f"no error for {{options}}")
        """)


BAD_OPERANDS = [  # (x, weight, bias, name the error must carry)
    (X.astype(object), W, None, "x"), (X.astype(str), W, None, "x"), ("abc", W, None, "x"), (None, W, None, "x"),
    (np.zeros(X.shape, "datetime64[s]"), W, None, "x"), (np.zeros(X.shape, "timedelta64[s]"), W, None, "x"),
    (X.astype(np.longdouble), W, None, "float128"), ([[1, 2], [3]], W, None, "x"),
    (X[0, 0], W, None, "x"), (X[None], W, None, "x"), (X, W[0], None, "weight"), (X, W.astype(object), None, "weight"),
    (X[:, :0], W, None, "input"), (X[:, :, :0], W, None, "input"), (X, W[:0], B[:0], "weight"),
    (X, W[:, :, :0], None, "weight"), (X, W[:, :1], None, "weight"), (X[:, :, :2, :2], np.ones((6, 2, 5, 5)), None, "kernel"),
    (X, W, B[:3], "bias"), (X, W, B[None], "bias"), (X, W, 1.0, "bias"), (X, W, "a", "bias"),
    (X, W, np.array([datetime.date.today()] * 6), "bias"),
]


@pytest.mark.parametrize("backend", CONV_BACKENDS)
@pytest.mark.parametrize("x, weight, bias, name", BAD_OPERANDS,
                         ids=[f"case{i}" for i in range(len(BAD_OPERANDS))])
def test_conv2d_bad_operands_are_named(backend, x, weight, bias, name):
    raises_naming(lambda: fastconv.conv2d(x, weight, bias, groups=2, padding=1, backend=backend), name)


def _layouts(array, kind):
    if kind == "read-only":
        return read_only(array)
    if kind == "fortran":
        return np.asfortranarray(array)
    if kind == "negative-strides":
        return np.flip(np.flip(array).copy())
    if kind == "strided":
        return np.repeat(array, 2, axis=-1)[..., ::2]
    return array


@pytest.mark.parametrize("backend", CONV_BACKENDS)
def test_conv2d_hostile_layouts_and_values(backend):
    """Read-only, Fortran, reversed and strided views; NaN/inf; an empty batch: right and untouched."""
    expected = reference_conv2d(X, W_RANK1, B, padding=((1, 1), (1, 1)), groups=2)
    for kind in ("read-only", "fortran", "negative-strides", "strided"):
        operands = [_layouts(a, kind) for a in (X, W_RANK1, B)]
        before = [a.copy() for a in operands]
        out = fastconv.conv2d(*operands, padding=1, groups=2, backend=backend)
        assert relative_error(out, expected) < 1e-10, kind
        for a, b in zip(operands, before):
            assert np.array_equal(a, b), f"{backend} modified a {kind} input"
    assert fastconv.conv2d(read_only(X[:0]), read_only(W_RANK1), groups=2, backend=backend).shape == (0, 6, 5, 6)
    for special in (np.nan, np.inf, -np.inf):
        x = X.copy()
        x[0, 1, 3, 4] = special
        x = read_only(x)
        expected = reference_conv2d(x, W_RANK1, groups=2, padding=((1, 1), (1, 1)))
        out = fastconv.conv2d(x, W_RANK1, groups=2, padding=1, backend=backend)
        reads = ~np.isfinite(expected)
        for test in (np.isnan, np.isposinf, np.isneginf):
            assert np.array_equal(test(out), test(expected))
        assert relative_error(np.where(reads, 0, out), np.where(reads, 0, expected)) < 1e-10


@settings(max_examples=15)
@given(data=st.data())
def test_conv2d_geometry_fuzz_matches_reference_or_names_argument(data):
    """Arbitrary small ints (negative, zero, oversized) for every geometry argument."""
    backend = data.draw(st.sampled_from(CONV_BACKENDS), label="backend")
    height, width = data.draw(st.integers(1, 6)), data.draw(st.integers(1, 6))
    kh, kw = data.draw(st.integers(-1, 7)), data.draw(st.integers(1, 7))
    stride = data.draw(st.one_of(st.integers(-1, 4), st.tuples(st.integers(0, 3), st.integers(1, 3))))
    padding = data.draw(st.one_of(st.integers(-1, 4), st.sampled_from(["same", "valid", "full"]),
                                  st.tuples(st.tuples(st.integers(0, 3), st.integers(-1, 3)),
                                            st.tuples(st.integers(0, 3), st.integers(0, 3)))))
    dilation = data.draw(st.integers(0, 3))
    groups = data.draw(st.integers(0, 3))
    channels = data.draw(st.sampled_from([1, 2, 3, 6]))
    x = read_only(RNG.standard_normal((1, channels, height, width)))
    shape = (data.draw(st.sampled_from([1, 2, 3, 6])), data.draw(st.integers(1, 6)), max(kh, 0), kw)
    weight = read_only(RNG.standard_normal(shape))
    try:
        out = fastconv.conv2d(x, weight, stride=stride, padding=padding, dilation=dilation, groups=groups,
                              backend=backend)
    except (ValueError, TypeError) as error:
        assert any(name in str(error) for name in ("stride", "padding", "dilation", "groups", "weight", "kernel",
                                                   "cannot run")), error
        return
    spec = fastconv.geometry.make_spec(x.shape, weight.shape, stride=stride, padding=padding, dilation=dilation,
                                       groups=groups)
    expected = reference_conv2d(x, weight, stride=spec.stride, padding=spec.padding, dilation=spec.dilation,
                                groups=groups)
    assert relative_error(out, expected) < 1e-10


# --------------------------------------------------------------------------------------------
# the operations around conv2d

def test_conv_transpose2d_hostile():
    torch = pytest.importorskip("torch")
    x, weight = read_only(X), read_only(RNG.standard_normal((4, 3, 3, 3)))
    for options, name in [({"stride": 0}, "stride"), ({"stride": 10**20}, "stride"), ({"padding": -1}, "padding"),
                          ({"padding": "same"}, "padding"), ({"output_padding": 1}, "output_padding"),
                          ({"output_padding": -1}, "output_padding"), ({"output_padding": (0, 5), "stride": 2},
                                                                        "output_padding"),
                          ({"groups": 3}, "groups"), ({"groups": True}, "groups"), ({"dilation": 0}, "dilation"),
                          ({"padding": 5}, "padding"), ({"backend": "nope"}, "backend")]:
        raises_naming(lambda: fastconv.conv_transpose2d(x, weight, **options), name)
    raises_naming(lambda: fastconv.conv_transpose2d(x, weight, np.ones(4)), "bias")
    raises_naming(lambda: fastconv.conv_transpose2d(x[0, 0], weight), "x")
    raises_naming(lambda: fastconv.conv_transpose2d(x.astype(object), weight), "x")
    for options in [{"stride": 2, "output_padding": 1}, {"dilation": 3, "output_padding": 2},
                    {"stride": (2, 3), "padding": (1, 2), "output_padding": (1, 2)}, {"groups": 4}]:
        w = weight[:, :1] if options.get("groups") == 4 else weight
        out = fastconv.conv_transpose2d(x, w, **options)
        expected = torch.nn.functional.conv_transpose2d(torch.from_numpy(X), torch.from_numpy(np.array(w)),
                                                        **options).numpy()
        assert relative_error(out, expected) < 1e-10, options
    assert fastconv.conv_transpose2d(X[:0], weight).shape[0] == 0


@settings(max_examples=25)
@given(size=st.tuples(st.integers(1, 7), st.integers(1, 7)), kernel=st.integers(1, 4), stride=st.integers(1, 4),
       padding=st.integers(0, 3), dilation=st.integers(1, 2), ceil_mode=st.booleans(), average=st.booleans())
def test_pooling_edges_match_torch(size, kernel, stride, padding, dilation, ceil_mode, average):
    torch = pytest.importorskip("torch")
    x = read_only(RNG.standard_normal((1, 2, *size)))
    if average:
        dilation = 1
    call = (lambda: fastconv.avg_pool2d(x, kernel, stride, padding, ceil_mode)) if average else (
        lambda: fastconv.max_pool2d(x, kernel, stride, padding, dilation, ceil_mode))
    try:
        out = call()
    except ValueError as error:  # torch refuses the same calls: padding > kernel / 2, no window fits
        assert "padding" in str(error) or "kernel_size" in str(error)
        with pytest.raises(RuntimeError):
            pool = torch.nn.functional.avg_pool2d if average else torch.nn.functional.max_pool2d
            extra = {} if average else {"dilation": dilation}
            pool(torch.from_numpy(np.array(x)), kernel, stride, padding, ceil_mode=ceil_mode, **extra)
        return
    t = torch.from_numpy(np.array(x))
    if average:
        expected = torch.nn.functional.avg_pool2d(t, kernel, stride, padding, ceil_mode=ceil_mode)
    else:
        expected = torch.nn.functional.max_pool2d(t, kernel, stride, padding, dilation, ceil_mode)
    np.testing.assert_allclose(out, expected.numpy(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("pool", ["max_pool2d", "avg_pool2d"])
def test_pooling_bad_arguments_are_named(pool):
    function = getattr(fastconv, pool)
    for options, name in [({"kernel_size": 0}, "kernel_size"), ({"kernel_size": True}, "kernel_size"),
                          ({"kernel_size": None}, "kernel_size"), ({"kernel_size": 10**20}, "kernel_size"),
                          ({"kernel_size": 2, "stride": 0}, "stride"), ({"kernel_size": 3, "padding": 2}, "padding"),
                          ({"kernel_size": 3, "ceil_mode": 1}, "ceil_mode"), ({"kernel_size": 20}, "kernel_size")]:
        raises_naming(lambda: function(read_only(X), **options), name)
    raises_naming(lambda: function(X.astype(object), 2), "x")
    raises_naming(lambda: function(X + 1j, 2), "x")
    raises_naming(lambda: function(X[0, 0], 2), "x")
    if pool == "avg_pool2d":  # huge divisor_override used to overflow converting to the kernel's int64
        for divisor in (0, 10**20, -(10**20), 1.5, True):
            raises_naming(lambda: function(X, 2, divisor_override=divisor), "divisor_override")


def test_depthwise_local_tiled_hostile():
    dw, pw = read_only(RNG.standard_normal((8, 1, 3, 3))), read_only(RNG.standard_normal((5, 8, 1, 1)))
    x = read_only(X)
    for args, name in [((dw[:, :, :0], pw), "weight"), ((dw, pw[:, :7]), "pointwise_weight"),
                       ((dw[:6], pw[:, :6]), "depthwise_weight"), ((dw.reshape(8, 9), pw), "depthwise_weight"),
                       ((dw, pw.reshape(5, 8)), "pointwise_weight"), ((dw.astype(object), pw), "depthwise_weight")]:
        raises_naming(lambda: fastconv.depthwise_separable_conv2d(x, *args), name)
    raises_naming(lambda: fastconv.depthwise_separable_conv2d(x, dw, pw, np.ones(3)), "bias")
    raises_naming(lambda: fastconv.depthwise_separable_conv2d(x, dw, pw, stride=0), "stride")
    expected = reference_conv2d(reference_conv2d(X, dw, groups=4), pw)
    assert relative_error(fastconv.depthwise_separable_conv2d(x, dw, pw), expected) < 1e-10
    for function in (fastconv.local_conv2d, fastconv.tiled_conv2d):
        for shape, name in [((5, 6, 3, 2, 3, 3), "weight"), ((5, 6, 3, 4, 3), "weight"), ((0, 6, 3, 4, 3, 3), "weight")]:
            raises_naming(lambda: function(x, RNG.standard_normal(shape)), name)
        raises_naming(lambda: function(x, RNG.standard_normal((5, 6, 3, 4, 3, 3)), np.ones(2)), "bias")
        raises_naming(lambda: function(x, RNG.standard_normal((5, 6, 3, 4, 3, 3)), stride=0), "stride")
        raises_naming(lambda: function(x, RNG.standard_normal((5, 6, 3, 4, 3, 3)), padding_mode="x"), "padding_mode")
    raises_naming(lambda: fastconv.local_conv2d(x, RNG.standard_normal((6, 6, 3, 4, 3, 3))), "weight")
    banks = RNG.standard_normal((3, 4, 3, 3))  # a tile larger than the 5x6 output: its last banks are unused
    assert relative_error(fastconv.tiled_conv2d(x, np.broadcast_to(banks, (6, 6, 3, 4, 3, 3))),
                          reference_conv2d(X, banks)) < 1e-10
    shared = read_only(RNG.standard_normal((3, 4, 3, 3)))
    tiled = np.broadcast_to(shared, (5, 6, 3, 4, 3, 3))  # a read-only, zero-stride weight
    for function in (fastconv.local_conv2d, fastconv.tiled_conv2d):
        assert relative_error(function(x, tiled), reference_conv2d(X, shared)) < 1e-10


def test_signal_hostile_matches_scipy():
    signal = pytest.importorskip("scipy.signal")
    a, k = read_only(RNG.standard_normal((6, 7))), read_only(RNG.standard_normal((3, 4)))
    for name in ("convolve2d", "correlate2d"):
        ours, theirs = getattr(fastconv, name), getattr(signal, name)
        for mode in ("full", "same", "valid"):
            for boundary in ("fill", "wrap", "symm"):
                for fill in (0, 2.5, np.nan):
                    np.testing.assert_allclose(ours(a, k, mode, boundary, fill), theirs(a, k, mode, boundary, fill))
        for in1, in2 in [(np.asfortranarray(a), k[::-1]), (a, np.ones((30, 30))), (a + 1j, k + 2j),
                         (a.astype(np.int16), k.astype(np.int16)), (k, a)]:
            np.testing.assert_allclose(ours(in1, in2, "same"), theirs(in1, in2, "same"))
        np.testing.assert_allclose(ours(k, a, "valid"), theirs(k, a, "valid"))
        raises_naming(lambda: ours(a, np.ones((7, 3)), "valid"), "valid")
        raises_naming(lambda: ours(a, k, "bad"), "mode")
        raises_naming(lambda: ours(a, k, None), "mode")
        raises_naming(lambda: ours(a, k, "same", "bad"), "boundary")
        raises_naming(lambda: ours(a, k, "same", "fill", "a"), "fillvalue")
        raises_naming(lambda: ours(a[:0], k), "empty")
        raises_naming(lambda: ours(a[0], k), "2-D")
        raises_naming(lambda: ours(a.astype(object), k), "dtype object")
        raises_naming(lambda: ours(a > 0, k > 0), "bool")  # as scipy: no boolean convolution


def test_geometry_helpers_hostile():
    for args, options, name in [(((1, 3, 8.7, 8), (2, 3, 3, 3)), {}, "input_shape"),
                                (((-1, 3, 8, 8), (2, 3, 3, 3)), {}, "input_shape"),
                                (((1, 3, 8, 8), (2, 3, 3, 3.9)), {}, "weight_shape"),
                                ((None, (2, 3, 3, 3)), {}, "input_shape"), (((1, 3, 8, 8), None), {}, "weight_shape"),
                                (((1, 3, 8, 8), 3), {}, "weight_shape"), (("abc", (2, 3, 3, 3)), {}, "input_shape"),
                                (((8.5, 8), (3, 3)), {"op": "convolve2d"}, "input_shape"),
                                (((1, 3, 8, 8), ((8, 1, 3, 3),)), {"op": "depthwise_separable_conv2d"}, "weight_shape"),
                                (((1, 3, 8, 8), (2, 3, 3, 3)), {"op": "x"}, "op"),
                                (((1, 3, 8, 8),), {"op": "max_pool2d"}, "kernel_size"),
                                (((1, 3, 8, 8), (2, 3, 3, 3)), {"stride": 2.5}, "stride")]:
        raises_naming(lambda: fastconv.output_shape(*args, **options), name)
    for layers, name in [(None, "layers"), (3, "layers"), ([{}], "kernel_size"), ([{"kernel_size": 0}], "kernel_size"),
                         ([{"kernel_size": 3, "x": 1}], "unknown"), ([{"kernel_size": 10**30}], "kernel_size")]:
        raises_naming(lambda: fastconv.receptive_field(layers), name)


def test_init_hostile():
    for function in ("glorot_uniform", "glorot_normal", "he_uniform", "he_normal", "fans"):
        for shape in [(4,), (), (0, 3, 3, 3), "abc", None, (4, -1, 3, 3), (4.0, 3, 3, 3)]:
            raises_naming(lambda: getattr(fastconv.init, function)(shape), "shape")
    for options, name in [({"groups": 0}, "groups"), ({"groups": 3}, "groups"), ({"dtype": np.int32}, "dtype"),
                          ({"dtype": object}, "dtype"), ({"rng": "x"}, "rng")]:
        raises_naming(lambda: fastconv.init.he_normal((4, 2, 3, 3), **options), name)
    # gain used to reach numpy unchecked: "high - low < 0", or NaN weights for gain=nan
    for function in (fastconv.init.glorot_uniform, fastconv.init.glorot_normal):
        for gain in (-1, np.nan, np.inf, "x", True, None):
            raises_naming(lambda: function((4, 2, 3, 3), gain=gain), "gain")


def test_separable_hostile():
    for kernel, name in [(np.ones(3), "kernel2d"), (np.ones((0, 3)), "kernel2d"), (np.ones((3, 3, 3)), "kernel2d"),
                         (np.array([[np.nan, 1], [1, 1]]), "kernel2d"), (np.ones((3, 3), object), "kernel2d"),
                         (None, "kernel2d")]:
        raises_naming(lambda: fastconv.separate(kernel), name)
    raises_naming(lambda: fastconv.separate(np.ones((3, 3)), tol=-1), "tol")
    col, row = read_only(RNG.standard_normal(3)), read_only(RNG.standard_normal(4))
    out = fastconv.separable_conv2d(read_only(X), col, row)
    expected = reference_conv2d(X.reshape(8, 1, 7, 8), np.outer(col, row)[None, None]).reshape(2, 4, 5, 5)
    assert relative_error(out, expected) < 1e-10
    raises_naming(lambda: fastconv.separable_conv2d(X, np.ones((4, 3)), np.ones((4, 5))), "col_kernel")
    raises_naming(lambda: fastconv.separable_conv2d(X, col, row, groups=4), "groups")


def test_dask_hostile():
    da = pytest.importorskip("dask.array")
    xd = da.from_array(read_only(X), chunks=(1, 2, 4, 4))
    for options in [{}, {"padding": "same", "stride": 2}, {"padding": 1, "padding_mode": "reflect"},
                    {"padding": 3, "padding_mode": "circular"}, {"backend": "fft"}]:
        out = fastconv.dask.conv2d(xd, W, groups=2, **options).compute()
        assert relative_error(out, fastconv.conv2d(X, W, groups=2, **options)) < 1e-10
    for options, name in [({"groups": 3}, "groups"), ({"stride": 0}, "stride"), ({"dilation": 5}, "kernel"),
                          ({"backend": "bad"}, "bad")]:
        raises_naming(lambda: fastconv.dask.conv2d(xd, W, **{"groups": 2, **options}).compute(), name)
    raises_naming(lambda: fastconv.dask.conv2d(xd, W, np.ones(3), groups=2), "bias")
    raises_naming(lambda: fastconv.dask.conv2d("abc", W, groups=2), "x")
    raises_naming(lambda: fastconv.dask.conv2d(da.from_array(X.astype(object), chunks=2), W, groups=2), "x")
    a, k = RNG.standard_normal((6, 7)), RNG.standard_normal((3, 4))
    signal = pytest.importorskip("scipy.signal")
    for name in ("convolve2d", "correlate2d"):
        for mode in ("full", "same", "valid"):
            for boundary in ("fill", "wrap", "symm"):
                out = getattr(fastconv.dask, name)(da.from_array(a, chunks=3), k, mode, boundary, 1.5).compute()
                np.testing.assert_allclose(out, getattr(signal, name)(a, k, mode, boundary, 1.5))
        raises_naming(lambda: getattr(fastconv.dask, name)(da.from_array(a, chunks=3), k, "x"), "mode")
        raises_naming(lambda: getattr(fastconv.dask, name)(da.zeros((3, 3, 3)), k), "2-D")


def test_huge_outputs_fail_fast():
    # the fft backend used to list every tile of a 2e6 x 2e6 output before allocating it (OOM kill);
    # now validation refuses it, with the same message on every backend (test_geometry_limits.py
    # tests the whole class)
    run_isolated("""
        import numpy as np, fastconv
        for backend in ("naive", "im2col", "numba_cpu", "fft", "separable", "winograd"):
            for padding in (10**6, 2**61):
                try:
                    fastconv.conv2d(np.ones((1, 1, 4, 4)), np.ones((1, 1, 3, 3)), padding=padding, backend=backend)
                except ValueError as error:
                    assert f"padding={padding}" in str(error), error
                else:
                    raise AssertionError(backend)
        """)


def test_dilation_spanning_beyond_any_array_is_computed_by_every_backend():
    # A 2x2 kernel with dilation 2**40 and padding 2**39 on a 4x4 input has a 4x4 output (of
    # zeros: every tap lands in the padding). Backends that padded the input (naive, unshared) or
    # transformed the whole span (fft) used to fail with numpy's "array is too big"; the rows the
    # taps read are now gathered for every backend.
    x, w = np.ones((1, 1, 4, 4)), np.ones((1, 1, 2, 2))
    for backend in CONV_BACKENDS:
        if backend in ("winograd", "separable"):  # (3x3 kernels only; no gain from rank 1 at 2x2)
            continue
        for dilation, padding in ((2**40, 2**39), (2**30, 2**29), ((1, 2**40), (0, 2**39))):
            out = fastconv.conv2d(x, w, padding=padding, dilation=dilation, backend=backend)
            np.testing.assert_array_equal(out, np.zeros(out.shape))
    out = fastconv.local_conv2d(x, np.ones((4, 4, 1, 1, 2, 2)), padding=2**39, dilation=2**40)
    np.testing.assert_array_equal(out, np.zeros((1, 1, 4, 4)))


def test_pooling_tall_kernel_with_huge_padding_does_not_hang():
    # the kernels used to loop over every one of the 2**40 rows of the window, skipping all but 7
    run_isolated("""
        import numpy as np, fastconv
        x = np.arange(56.0).reshape(1, 1, 7, 8)
        for pool in (fastconv.max_pool2d, fastconv.avg_pool2d):
            out = pool(x, (2**40, 3), padding=(2**39, 1))
            assert out.shape == (1, 1, 1, 3), out.shape
        np.testing.assert_array_equal(fastconv.max_pool2d(x, (2**40, 3), padding=(2**39, 1))[0, 0, 0], [49, 52, 55])
        """)


def test_pooling_wide_kernel_with_huge_padding_is_computed():
    # the kernels kept a row buffer as wide as the padded window (2**40 values: SystemError from
    # the failed allocation inside numba) and looped over all 2**40 columns of the window
    run_isolated("""
        import numpy as np, fastconv
        x = np.arange(56.0).reshape(1, 1, 7, 8)
        row_max, row_sum = x[0, 0].max(axis=1), x[0, 0].sum(axis=1)
        for stride in (None, 1):  # windows 2**40 apart (one per row), or 9 windows that all cover x
            out = fastconv.max_pool2d(x, (3, 2**40), stride=stride, padding=(1, 2**39))
            rows = [max(row_max[max(top, 0):top + 3]) for top in range(-1, 6, 3 if stride is None else 1)]
            np.testing.assert_array_equal(out[0, 0], np.repeat(np.array(rows)[:, None], out.shape[3], axis=1))
            out = fastconv.avg_pool2d(x, (3, 2**40), stride=stride, padding=(1, 2**39))
            sums = [sum(row_sum[max(top, 0):top + 3]) for top in range(-1, 6, 3 if stride is None else 1)]
            np.testing.assert_allclose(out[0, 0], np.repeat(np.array(sums)[:, None] / (3 * 2**40), out.shape[3], axis=1))
        assert out.shape == (1, 1, 7, 9), out.shape
        """)
