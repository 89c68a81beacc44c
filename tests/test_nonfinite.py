"""NaN and infinity land where direct summation puts them, on every CPU backend.

README promises that NaN and inf propagate as arithmetic says, with the zero padding contributing
``0 · w`` as in torch: a NaN or inf weight therefore makes every output of its filter non-finite,
padded borders included. Here NaN, +inf and -inf are placed at drawn positions of the input, the
weight and the bias, over drawn geometry (padding and padding modes, stride, dilation, groups,
depthwise), and each backend's output must have NaN, +inf and -inf exactly where the float64
oracle has them, and the oracle's finite values elsewhere. The oracle is ``tests/reference.py``
(always) and torch's float64 ``conv2d`` (where torch is installed).

No backend is excused from matching. ``DECLINES`` lists the calls a backend refuses instead (a
ValueError naming the reason), which is not a wrong result. No RuntimeWarning either: NaN and
inf are data, as in torch.
"""

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import fastconv
from fastconv import backends
from fastconv.geometry import make_spec, resolve_dtypes
from reference import reference_conv2d, relative_error
from strategies import conv_problems

# NaN and inf are data here, as in torch: no backend may warn about them.
pytestmark = pytest.mark.filterwarnings("error::RuntimeWarning")

CPU_BACKENDS = ("naive", "im2col", "fft", "separable", "numba_cpu", "winograd")
SPECIALS = (np.nan, np.inf, -np.inf)

# Calls a backend refuses (ValueError) rather than computes, with the reason.
DECLINES = {
    # A NaN or inf weight has no low-rank factorisation (its SVD is undefined): separable declines
    # 2-D kernels holding one. 1-D kernels need no factorisation and run.
    "separable": "NaN or infinity",
}

# Relative error allowed on the finite outputs (the transforms round differently from direct sums).
TOLERANCE = {np.dtype(np.float32): 1e-4, np.dtype(np.float64): 1e-10}


def _available(name):
    return backends.unavailable_reason(name) is None


BACKENDS = [pytest.param(name, marks=pytest.mark.skipif(not _available(name), reason=f"{name} unavailable"))
            for name in CPU_BACKENDS]


def _rank_one(rng, shape, dtype):
    """A weight whose every (k, c) kernel is an outer product of factors bounded away from zero,
    so that separable accepts it and ``0 · inf`` never hides in a factor."""
    out_channels, channels, kernel_h, kernel_w = shape

    def factors(size):
        return rng.uniform(0.5, 1.5, size) * rng.choice([-1.0, 1.0], size)

    cols, rows = factors((out_channels, channels, kernel_h)), factors((out_channels, channels, kernel_w))
    return (cols[..., :, None] * rows[..., None, :]).astype(dtype)


@st.composite
def problems_with_specials(draw, backend):
    """A drawn problem that ``backend`` supports, with 1-4 NaN/±inf values placed in x, the weight
    or the bias (writable copies)."""
    kwargs = dict(kernels=[(3, 3)], strides=[(1, 1)]) if backend == "winograd" else {}
    problem = draw(conv_problems(max_size=9, **kwargs))
    compute, _ = resolve_dtypes(problem.x.dtype, problem.weight.dtype)
    spec = make_spec(problem.x.shape, problem.weight.shape, dtype=compute,
                     **{k: v for k, v in problem.kwargs.items() if k != "padding_mode"})
    assume(backends.get(backend).supports(spec) is None)
    x, weight = problem.x.copy(), problem.weight.copy()
    if backend == "separable":
        kernel_h, kernel_w = weight.shape[2:]
        assume(min(kernel_h, kernel_w) == 1 or kernel_h + kernel_w < kernel_h * kernel_w)  # rank 1 pays off
        weight = _rank_one(np.random.default_rng(draw(st.integers(0, 2**32 - 1))), weight.shape, weight.dtype)
    bias = np.zeros(weight.shape[0], x.dtype) if problem.bias is None else problem.bias.copy()
    targets = {"x": x, "weight": weight, "bias": bias}
    for _ in range(draw(st.integers(1, 4))):
        name = draw(st.sampled_from(["x", "weight", "bias"]), label="where")
        array = targets[name]
        index = np.unravel_index(draw(st.integers(0, array.size - 1)), array.shape)
        array[index] = draw(st.sampled_from(SPECIALS), label="value")
    if problem.bias is None and np.isfinite(bias).all():
        bias = None
    return x, weight, bias, problem.kwargs, problem.explicit_padding


def _torch_conv2d(x, weight, bias, kwargs, sides):
    torch = pytest.importorskip("torch")
    (top, bottom), (left, right) = sides
    mode = {"zeros": "constant", "reflect": "reflect", "replicate": "replicate",
            "circular": "circular"}[kwargs["padding_mode"]]
    padded = torch.nn.functional.pad(torch.from_numpy(np.array(x, np.float64)), (left, right, top, bottom),
                                     mode=mode)
    return torch.nn.functional.conv2d(padded, torch.from_numpy(np.array(weight, np.float64)),
                                      None if bias is None else torch.from_numpy(np.array(bias, np.float64)),
                                      stride=kwargs["stride"],
                                      dilation=kwargs["dilation"], groups=kwargs["groups"]).numpy()


def _reference(x, weight, bias, kwargs, sides):
    with np.errstate(invalid="ignore", over="ignore"):
        return reference_conv2d(x, weight, bias, kwargs["stride"], sides, kwargs["dilation"], kwargs["groups"],
                                kwargs["padding_mode"])


def assert_same_placement(out, expected):
    """NaN, +inf and -inf exactly where ``expected`` has them; its finite values elsewhere."""
    for kind, test in (("NaN", np.isnan), ("+inf", np.isposinf), ("-inf", np.isneginf)):
        where = test(out) != test(expected)
        assert not where.any(), (f"{int(where.sum())} of {out.size} outputs differ in being {kind}, first at "
                                 f"{tuple(int(i) for i in np.argwhere(where)[0])}")
    finite = np.isfinite(expected)
    if finite.any():
        assert relative_error(out[finite], expected[finite]) <= TOLERANCE[out.dtype]


def _check(backend, case, oracle):
    x, weight, bias, kwargs, sides = case
    before = [None if a is None else a.copy() for a in (x, weight, bias)]
    try:
        out = fastconv.conv2d(x, weight, bias, backend=backend, **kwargs)
    except ValueError as error:
        assert backend in DECLINES and DECLINES[backend] in str(error), error
        assert not np.isfinite(weight).all()
        return
    for array, copy in zip((x, weight, bias), before):
        if array is not None:
            np.testing.assert_array_equal(array, copy)  # untouched, NaN included
    assert_same_placement(out, oracle(x, weight, bias, kwargs, sides))


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=30)
@given(data=st.data())
def test_nan_and_inf_land_where_the_reference_puts_them(backend, data):
    _check(backend, data.draw(problems_with_specials(backend)), _reference)


@pytest.mark.parametrize("backend", BACKENDS)
@settings(max_examples=15)
@given(data=st.data())
def test_nan_and_inf_land_where_torch_puts_them(backend, data):
    pytest.importorskip("torch")
    _check(backend, data.draw(problems_with_specials(backend)), _torch_conv2d)


def test_reference_and_torch_agree_on_the_semantics():
    """The two oracles agree: zero padding contributes 0 · w (NaN for a NaN or inf weight)."""
    pytest.importorskip("torch")
    x, w = np.ones((1, 1, 4, 4)), np.ones((1, 1, 3, 3))
    w[0, 0, 0, 0] = np.nan
    case = (x, w, np.zeros(1), dict(stride=(1, 1), dilation=(1, 1), groups=1, padding_mode="zeros"),
            ((1, 1), (1, 1)))
    expected = _torch_conv2d(*case)
    assert np.isnan(expected).all()
    assert_same_placement(_reference(*case), expected)


@pytest.mark.parametrize("backend", ["numba_cpu", "im2col", "fft", "naive"])
@pytest.mark.parametrize("groups", [1, 2])
def test_nan_weight_poisons_the_padded_border_too(backend, groups):
    """w = ones with one NaN tap, x = ones, padding 1: every output reads that tap (the padded ones
    as 0 · NaN), so all 16 outputs per channel are NaN, as in torch. numba_cpu skipped taps in
    the padding: 9 NaN (dense), fewer still on its depthwise kernels."""
    w = np.ones((groups, 1, 3, 3))
    w[:, 0, 0, 0] = np.nan
    out = fastconv.conv2d(np.ones((1, groups, 4, 4)), w, padding=1, groups=groups, backend=backend)
    assert np.isnan(out).all()


@pytest.mark.parametrize("tile", [2, 4])
@pytest.mark.parametrize("schedule", ["fused", "staged"])
@pytest.mark.parametrize("dilation", [1, 2])
def test_winograd_keeps_the_sign_of_an_infinite_input(monkeypatch, tile, schedule, dilation):
    """Winograd's transforms turned +inf into NaN (inf - inf) and spread it within a tile; the
    output must hold +inf wherever direct convolution does (18 of 28 such cases differed)."""
    from fastconv.backends import winograd

    if schedule == "staged":
        monkeypatch.setattr(winograd, "_FUSED_FILTER_BYTES", 0)
    x = np.ones((2, 2, 13, 11))
    x[1, 0, 4, 4] = np.inf
    x[1, 1, 9, 2] = -np.inf
    w = np.ones((3, 2, 3, 3))
    spec = make_spec(x.shape, w.shape, padding=1, dilation=dilation)
    out = winograd.run(x, w, None, spec, tile=tile)
    expected = reference_conv2d(x, w, padding=((1, 1), (1, 1)), dilation=(dilation, dilation))
    assert np.isposinf(expected).sum() == 27 and np.isneginf(expected).sum() > 0
    assert_same_placement(out, expected)
