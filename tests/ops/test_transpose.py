"""conv_transpose2d against a float64 scatter reference, the adjoint identity and torch."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import fastconv
from fastconv import backends
from fastconv.thread_pools import last_pool

TRANSPOSE_BACKENDS = backends.backend_names("conv_transpose2d")
from reference import reference_conv2d, relative_error
from strategies import _layout

TOLERANCE = {np.dtype(np.float64): 1e-10, np.dtype(np.float32): 1e-5}


def reference_conv_transpose2d(x, weight, bias, stride, padding, output_padding, dilation, groups):
    """The definition, in float64: every input pixel scatters the kernel scaled by its value."""
    x, weight = np.asarray(x, dtype=np.float64), np.asarray(weight, dtype=np.float64)
    (sh, sw), (ph, pw), (oph, opw), (dh, dw) = stride, padding, output_padding, dilation
    batch, channels, height, width = x.shape
    _, out_per_group, kh, kw = weight.shape
    in_per_group = channels // groups
    full = np.zeros((batch, out_per_group * groups, (height - 1) * sh + dh * (kh - 1) + 1 + oph,
                     (width - 1) * sw + dw * (kw - 1) + 1 + opw))
    for g in range(groups):
        x_group = x[:, g * in_per_group:(g + 1) * in_per_group]
        w_group = weight[g * in_per_group:(g + 1) * in_per_group]
        for u in range(kh):
            for v in range(kw):
                rows = slice(u * dh, u * dh + (height - 1) * sh + 1, sh)
                cols = slice(v * dw, v * dw + (width - 1) * sw + 1, sw)
                full[:, g * out_per_group:(g + 1) * out_per_group, rows, cols] += np.einsum(
                    "nchw,ck->nkhw", x_group, w_group[:, :, u, v])
    out = full[:, :, ph:full.shape[2] - ph, pw:full.shape[3] - pw]
    if bias is not None:
        out = out + np.asarray(bias, dtype=np.float64)[None, :, None, None]
    return out


@st.composite
def transpose_problems(draw, dtypes=(np.float32, np.float64)):
    dtype = np.dtype(draw(st.sampled_from(dtypes)))
    groups = draw(st.integers(1, 3))
    in_per_group, out_per_group = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    batch = draw(st.integers(1, 2))
    size = (draw(st.integers(1, 6)), draw(st.integers(1, 6)))
    kernel = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    dilation = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    output_padding = tuple(draw(st.integers(0, max(s, d) - 1)) for s, d in zip(stride, dilation))
    padding = []
    for n, k, s, d, extra in zip(size, kernel, stride, dilation, output_padding):
        full = (n - 1) * s + d * (k - 1) + 1 + extra
        padding.append(draw(st.integers(0, min(3, (full - 1) // 2))))  # at least one output pixel
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = _layout(draw, rng.standard_normal((batch, groups * in_per_group, *size)).astype(dtype))
    weight = _layout(draw, rng.standard_normal((groups * in_per_group, out_per_group, *kernel)).astype(dtype))
    bias = rng.standard_normal(groups * out_per_group).astype(dtype) if draw(st.booleans()) else None
    kwargs = dict(stride=stride, padding=tuple(padding), output_padding=output_padding, dilation=dilation,
                  groups=groups)
    return x, weight, bias, kwargs


@pytest.mark.parametrize("backend", sorted(TRANSPOSE_BACKENDS))
@given(problem=transpose_problems())
def test_matches_scatter_reference(backend, problem):
    x, weight, bias, kwargs = problem
    before = (x.copy(), weight.copy())
    out = fastconv.conv_transpose2d(x, weight, bias, backend=backend, **kwargs)
    expected = reference_conv_transpose2d(x, weight, bias, **kwargs)
    assert out.shape == expected.shape == fastconv.output_shape(x.shape, weight.shape, op="conv_transpose2d",
                                                                **kwargs)
    assert out.dtype == x.dtype
    assert relative_error(out, expected) <= TOLERANCE[x.dtype]
    np.testing.assert_array_equal(x, before[0])
    np.testing.assert_array_equal(weight, before[1])


@given(problem=transpose_problems(dtypes=(np.float64,)))
def test_is_the_adjoint_of_conv2d(problem):
    """<conv2d(z, w), x> == <z, conv_transpose2d(x, w)> for every z of the transposed output's shape."""
    x, weight, _, kwargs = problem
    y = fastconv.conv_transpose2d(x, weight, **kwargs)
    z = np.random.default_rng(0).standard_normal(y.shape)
    (ph, pw), (oph, opw) = kwargs["padding"], kwargs["output_padding"]
    # conv2d maps z back onto x's grid; output_padding rows beyond its last window are ignored
    forward = reference_conv2d(z, weight, padding=((ph, ph + oph), (pw, pw + opw)), stride=kwargs["stride"],
                               dilation=kwargs["dilation"], groups=kwargs["groups"])
    forward = forward[:, :, :x.shape[2], :x.shape[3]]
    assert forward.shape == x.shape
    assert abs(np.vdot(forward, x) - np.vdot(z, y)) <= 1e-10 * np.abs(z).sum() * np.abs(y).max() + 1e-12


@pytest.mark.parametrize("backend", sorted(TRANSPOSE_BACKENDS))
def test_complex_and_unbatched(backend):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 3, 5)) + 1j * rng.standard_normal((4, 3, 5))
    w = rng.standard_normal((4, 3, 2, 3)) + 1j * rng.standard_normal((4, 3, 2, 3))
    kwargs = dict(stride=(2, 1), padding=(1, 0), output_padding=(1, 0), dilation=(1, 1), groups=2)
    out = fastconv.conv_transpose2d(x, w, backend=backend, **kwargs)

    def real(a, b):  # the operation is bilinear: a complex product is four real ones
        return reference_conv_transpose2d(a[None], b, None, **kwargs)[0]

    expected = (real(x.real, w.real) - real(x.imag, w.imag)) + 1j * (real(x.real, w.imag) + real(x.imag, w.real))
    assert out.shape == (6, 5, 7) and out.dtype == np.complex128
    assert relative_error(out, expected) <= 1e-10


def test_integer_input_and_float16_follow_conv2d_dtype_rules():
    x, w = np.ones((1, 2, 3, 3), dtype=np.int32), np.ones((2, 1, 2, 2), dtype=np.int64)
    assert fastconv.conv_transpose2d(x, w).dtype == np.float64
    out = fastconv.conv_transpose2d(x.astype(np.float16), w.astype(np.float16), stride=2)
    assert out.dtype == np.float16 and out.shape == (1, 1, 6, 6)


def test_matches_torch_on_the_dcgan_layer_shape():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    x, w, b = rng.standard_normal((2, 32, 4, 4)), rng.standard_normal((32, 16, 4, 4)), rng.standard_normal(16)
    expected = torch.nn.functional.conv_transpose2d(torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b),
                                                    stride=2, padding=1).numpy()
    for backend in TRANSPOSE_BACKENDS:
        assert relative_error(fastconv.conv_transpose2d(x, w, b, stride=2, padding=1, backend=backend),
                              expected) <= 1e-12


@given(problem=transpose_problems(dtypes=(np.float64,)))
def test_matches_torch(problem):
    torch = pytest.importorskip("torch")
    x, weight, bias, kwargs = problem
    expected = torch.nn.functional.conv_transpose2d(
        torch.from_numpy(x.copy()), torch.from_numpy(weight.copy()),
        None if bias is None else torch.from_numpy(bias), **kwargs).numpy()
    assert relative_error(fastconv.conv_transpose2d(x, weight, bias, **kwargs), expected) <= 1e-10


def test_workspace_limit_splits_the_batch_without_changing_the_result():
    rng = np.random.default_rng(3)
    x, w = rng.standard_normal((5, 4, 6, 6)), rng.standard_normal((4, 3, 3, 3))
    expected = fastconv.conv_transpose2d(x, w, stride=2, backend="naive")
    saved = fastconv.config.workspace_bytes
    try:
        fastconv.config.set_workspace_bytes(1)  # one image per product
        out = fastconv.conv_transpose2d(x, w, stride=2, backend="col2im")
    finally:
        fastconv.config.set_workspace_bytes(saved)
    assert relative_error(out, expected) <= 1e-12


def test_use_backend_steers_auto():
    x, w = np.ones((1, 1, 2, 2)), np.ones((1, 1, 2, 2))
    with fastconv.use_backend("naive"):
        np.testing.assert_array_equal(fastconv.conv_transpose2d(x, w), fastconv.conv_transpose2d(x, w,
                                                                                                 backend="col2im"))


@pytest.mark.parametrize("kwargs, error, pattern", [
    (dict(output_padding=2, stride=2), ValueError, r"output_padding must be smaller than max\(stride, dilation\).*"
                                                   r"output_padding=2.*stride 2 and dilation 1"),
    (dict(output_padding=(0, 1)), ValueError, r"output_padding.*width axis with stride 1"),
    (dict(output_padding=-1), ValueError, r"output_padding must be >= 0"),
    (dict(padding="same"), ValueError, r"padding of conv_transpose2d must be an int or a pair.*'same'"),
    (dict(padding=((1, 1), (0, 0))), ValueError, r"padding of conv_transpose2d must be an int or a pair"),
    (dict(padding=5), ValueError, r"padding=\(5, 5\) removes the whole output"),
    (dict(groups=3), ValueError, r"groups=3 must divide the input channels \(4\)"),
    (dict(groups=0), ValueError, r"groups must be a positive int, got 0"),
    (dict(weight=np.zeros((3, 2, 3, 3))), ValueError, r"weight has 3 input channels.*expected weight.shape\[0\] == 4"),
    (dict(weight=np.zeros((4, 2, 3))), ValueError, r"weight must have shape \(C, K // groups, kh, kw\)"),
    (dict(bias=np.zeros(3)), ValueError, r"bias must have shape \(K,\) = \(2,\).*got shape \(3,\)"),
    (dict(stride=0), ValueError, r"stride must be positive"),
    (dict(backend="im2col"), ValueError, r"Unknown backend 'im2col' for conv_transpose2d; valid backends are "
                                         r"naive, col2im and 'auto'"),
    (dict(x=np.zeros((4, 5))), ValueError, r"x must have shape \(N, C, H, W\) or \(C, H, W\), got 2 dimensions"),
    (dict(x="x"), TypeError, r"x must be an array of numbers"),
])
def test_bad_input_raises_with_a_message_that_names_it(kwargs, error, pattern):
    args = dict(x=np.zeros((1, 4, 5, 5)), weight=np.zeros((4, 2, 3, 3)), bias=None)
    args.update(kwargs)
    with pytest.raises(error, match=pattern):
        fastconv.conv_transpose2d(args.pop("x"), args.pop("weight"), args.pop("bias"), **args)


@settings(max_examples=15)
@given(problem=transpose_problems(), data=st.data())
def test_backward_is_the_adjoint(problem, data):
    """<conv_transpose2d(x, w), g> = <x, dx> = <w, dw>, db = sum of g: the gradients, with no torch."""
    x, weight, _, kwargs = problem
    backend = data.draw(st.sampled_from(["auto", "im2col", "naive"]))
    wide = [np.asarray(a, dtype=np.float64) for a in (x, weight)]
    y = reference_conv_transpose2d(*wide, None, **kwargs)
    g = np.random.default_rng(y.size).standard_normal(y.shape).astype(x.dtype)
    before = (x.copy(), weight.copy(), g.copy())
    dx, dw, db = fastconv.conv_transpose2d_backward(x, weight, g, backend=backend, **kwargs)
    assert dx.shape == x.shape and dw.shape == weight.shape and db.shape == (y.shape[1],)
    assert dx.dtype == dw.dtype == db.dtype == x.dtype
    total = np.vdot(y, g)
    scale = np.abs(y).sum() * np.abs(g).max() + 1e-300
    tolerance = 1e-10 if x.dtype == np.float64 else 1e-5
    assert abs(np.vdot(wide[0], dx) - total) <= tolerance * scale
    assert abs(np.vdot(wide[1], dw) - total) <= tolerance * scale
    np.testing.assert_allclose(db, g.sum(axis=(0, 2, 3)), rtol=tolerance, atol=tolerance * np.abs(g).sum())
    for array, saved in zip((x, weight, g), before):
        np.testing.assert_array_equal(array, saved)


@settings(max_examples=15)
@given(problem=transpose_problems(dtypes=(np.float64,)))
def test_backward_matches_torch_autograd(problem):
    torch = pytest.importorskip("torch")
    x, weight, _, kwargs = problem
    xt, wt = torch.from_numpy(x.copy()).requires_grad_(), torch.from_numpy(weight.copy()).requires_grad_()
    bt = torch.zeros(weight.shape[1] * kwargs["groups"], dtype=torch.float64, requires_grad=True)
    y = torch.nn.functional.conv_transpose2d(xt, wt, bt, **kwargs)
    g = np.random.default_rng(0).standard_normal(tuple(y.shape))
    expected = [t.numpy() for t in torch.autograd.grad(y, (xt, wt, bt), torch.from_numpy(g))]
    for got, want in zip(fastconv.conv_transpose2d_backward(x, weight, g, **kwargs), expected):
        assert relative_error(got, want) <= 1e-10


def test_backward_unbatched_needs_and_validation():
    rng = np.random.default_rng(3)
    x, w = rng.standard_normal((4, 3, 3)), rng.standard_normal((4, 2, 3, 3))
    g = rng.standard_normal((2, 7, 7))
    dx, dw, db = fastconv.conv_transpose2d_backward(x, w, g, stride=2, padding=0)
    bx, bw, _ = fastconv.conv_transpose2d_backward(x[None], w, g[None], stride=2)
    np.testing.assert_allclose(dx, bx[0], rtol=1e-12)
    np.testing.assert_allclose(dw, bw, rtol=1e-12)
    assert fastconv.conv_transpose2d_backward(x, w, g, stride=2, needs=(True, False, False))[1:] == (None, None)
    with pytest.raises(ValueError, match="grad_output has shape"):
        fastconv.conv_transpose2d_backward(x, w, g[:, :6], stride=2)
    with pytest.raises(ValueError, match="needs must be"):
        fastconv.conv_transpose2d_backward(x, w, g, stride=2, needs=True)


@pytest.mark.parametrize("backend", TRANSPOSE_BACKENDS)
def test_notes_the_pool_of_the_backend_it_ran(backend, stale_pool):
    # what auto's next conv2d compares its candidates' pools with
    x, w = np.ones((1, 4, 5, 5)), np.ones((4, 3, 3, 3))
    fastconv.conv_transpose2d(x, w, stride=2, backend=backend)
    assert last_pool() == getattr(backends.get(backend), "thread_pool", None)


@pytest.mark.parametrize("input_backend, weight_backend", [("im2col", "numba_cpu"), ("numba_cpu", "im2col")])
def test_backward_notes_the_pool_of_the_gradient_it_computed_last(input_backend, weight_backend, stale_pool):
    x, w = np.ones((1, 4, 5, 5)), np.ones((4, 3, 3, 3))
    g = np.ones(fastconv.conv_transpose2d(x, w, stride=2).shape)
    for needs, last in [((True, False, False), input_backend), ((True, True, True), weight_backend)]:
        fastconv.conv_transpose2d_backward(x, w, g, stride=2, needs=needs, backend=(input_backend, weight_backend))
        assert last_pool() == getattr(backends.get(last), "thread_pool", None)
