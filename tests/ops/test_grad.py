"""conv2d_input, conv2d_weight and conv2d_backward: every route against the float64 reference, the
adjoint identity (no torch needed), torch's autograd where installed, validation and dtypes."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import fastconv
from fastconv import backends
from fastconv.auto import passes
from fastconv.geometry import backend_spec, make_spec, resolve_dtypes
from fastconv.thread_pools import last_pool
from conformance import BACKEND_TOLERANCE, TOLERANCE
from reference import reference_conv2d, reference_conv2d_gradients, relative_error
from strategies import COMPLEX_DTYPES, REAL_DTYPES, conv_problems


def _reference(problem):
    kwargs = {k: v for k, v in problem.kwargs.items() if k != "padding"}
    y = reference_conv2d(problem.x, problem.weight, padding=problem.explicit_padding, **kwargs)
    g = np.random.default_rng(y.size).standard_normal(y.shape).astype(problem.x.dtype)
    if np.iscomplexobj(problem.x):
        g = g + 1j * np.random.default_rng(y.size + 1).standard_normal(y.shape)
    g = g.astype(problem.x.dtype)
    return y, g, reference_conv2d_gradients(problem.x, problem.weight, g, padding=problem.explicit_padding, **kwargs)


def _check_pass(pass_, name, problem):
    """The pass on backend ``name`` against the reference, or a decline the route may make."""
    y, g, (dx, dw) = _reference(problem)
    compute, _ = resolve_dtypes(problem.x.dtype, problem.weight.dtype)
    spec = backend_spec(make_spec(problem.x.shape, problem.weight.shape, dtype=compute, **problem.kwargs))
    route = passes.route(pass_, name, spec)
    reason = passes.decline_reason(route)
    before = [problem.x.copy(), problem.weight.copy(), g.copy()]
    if pass_ == "input":
        def call():
            return fastconv.conv2d_input(problem.x.shape, problem.weight, g, backend=name, **problem.kwargs)
        expected = dx
    else:
        def call():
            return fastconv.conv2d_weight(problem.x, problem.weight.shape, g, backend=name, **problem.kwargs)
        expected = dw
    if reason is not None:
        with pytest.raises(ValueError, match=name):
            call()
        return
    try:
        got = call()
    except ValueError as error:  # a backend judging the rewritten kernel's values (separable's rank)
        assert hasattr(backends.get(name), "supports_weight") and name in str(error)
        return
    assert got.shape == expected.shape and got.dtype == problem.x.dtype
    dtype = np.dtype(problem.x.dtype)
    tolerance = BACKEND_TOLERANCE.get((name, dtype), TOLERANCE[dtype])
    assert relative_error(got, expected) <= tolerance
    for array, saved in zip((problem.x, problem.weight, g), before):
        np.testing.assert_array_equal(array, saved)  # inputs untouched


def _skip_unavailable(name):
    reason = backends.unavailable_reason(name)
    if reason is not None:
        pytest.skip(f"backend {name} unavailable: {reason}")


@pytest.mark.parametrize("name", passes.pass_backends("input"))
@settings(max_examples=15)
@given(problem=conv_problems(dtypes=REAL_DTYPES))
def test_input_pass_matches_reference(name, problem):
    _skip_unavailable(name)
    _check_pass("input", name, problem)


@pytest.mark.parametrize("name", passes.pass_backends("weight"))
@settings(max_examples=15)
@given(problem=conv_problems(dtypes=REAL_DTYPES))
def test_weight_pass_matches_reference(name, problem):
    _skip_unavailable(name)
    _check_pass("weight", name, problem)


@pytest.mark.parametrize("name", ["col2im", "im2col", "fft"])
@settings(max_examples=10)
@given(problem=conv_problems(dtypes=COMPLEX_DTYPES, max_size=6))
def test_complex_passes_are_torchs_conjugate_gradients(name, problem):
    for pass_ in ("input", "weight") if name != "col2im" else ("input",):
        _check_pass(pass_, name, problem)


@settings(max_examples=15)
@given(problem=conv_problems(dtypes=(np.float64,)), data=st.data())
def test_adjoint_identity(problem, data):
    """<conv2d(x, w), g> = <x, conv2d_input(g)> = <w, conv2d_weight(g)>, whatever the route (no torch)."""
    backend = data.draw(st.sampled_from(["auto", "naive", "im2col", "fft"]))
    y = fastconv.conv2d(problem.x, problem.weight, **problem.kwargs)
    g = np.random.default_rng(y.size).standard_normal(y.shape)
    dx, dw, db = fastconv.conv2d_backward(problem.x, problem.weight, g, backend=backend, **problem.kwargs)
    total = np.vdot(y, g)
    scale = np.abs(y).sum() * np.abs(g).max() + 1e-300
    assert abs(np.vdot(problem.x, dx) - total) <= 1e-10 * scale
    assert abs(np.vdot(problem.weight, dw) - total) <= 1e-10 * scale
    np.testing.assert_allclose(db, g.sum(axis=(0, 2, 3)), rtol=1e-12)


@settings(max_examples=15)
@given(problem=conv_problems(dtypes=(np.float64,)))
def test_conv2d_backward_matches_torch_autograd(problem):
    torch = pytest.importorskip("torch")
    (top, bottom), (left, right) = problem.explicit_padding
    mode = {"zeros": "constant"}.get(problem.kwargs["padding_mode"], problem.kwargs["padding_mode"])
    x = torch.from_numpy(problem.x.copy()).requires_grad_()
    w = torch.from_numpy(problem.weight.copy()).requires_grad_()
    b = torch.zeros(w.shape[0], dtype=torch.float64, requires_grad=True)
    y = torch.nn.functional.conv2d(torch.nn.functional.pad(x, (left, right, top, bottom), mode=mode), w, b,
                                   stride=problem.kwargs["stride"], dilation=problem.kwargs["dilation"],
                                   groups=problem.kwargs["groups"])
    g = np.random.default_rng(0).standard_normal(tuple(y.shape))
    expected = [t.numpy() for t in torch.autograd.grad(y, (x, w, b), torch.from_numpy(g))]
    ours = fastconv.conv2d_backward(problem.x, problem.weight, g, **problem.kwargs)
    for got, want in zip(ours, expected):
        assert relative_error(got, want) <= 1e-10
    np.testing.assert_allclose(fastconv.conv2d_input(problem.x.shape, problem.weight, g, **problem.kwargs),
                               expected[0], rtol=1e-10, atol=1e-10 * np.abs(expected[0]).max())


def test_torch_nn_grad_argument_order_and_defaults():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    x, w = rng.standard_normal((2, 4, 9, 8)), rng.standard_normal((6, 2, 3, 3))
    g = rng.standard_normal((2, 6, 5, 4))
    want_x = torch.nn.grad.conv2d_input(x.shape, torch.from_numpy(w), torch.from_numpy(g), 2, 1, 1, 2).numpy()
    want_w = torch.nn.grad.conv2d_weight(torch.from_numpy(x), w.shape, torch.from_numpy(g), 2, 1, 1, 2).numpy()
    np.testing.assert_allclose(fastconv.conv2d_input(x.shape, w, g, 2, 1, 1, 2), want_x, rtol=1e-10)
    np.testing.assert_allclose(fastconv.conv2d_weight(x, w.shape, g, 2, 1, 1, 2), want_w, rtol=1e-10)


@pytest.mark.parametrize("padding", ["same", "full", "valid", ((3, 0), (0, 2))])
def test_string_and_asymmetric_paddings_resolve_as_the_forward_call(padding):
    rng = np.random.default_rng(2)
    x, w = rng.standard_normal((1, 2, 9, 8)), rng.standard_normal((3, 2, 4, 3))
    spec = make_spec(x.shape, w.shape, padding=padding, stride=2)
    g = rng.standard_normal(spec.out_shape)
    dx, dw = reference_conv2d_gradients(x, w, g, stride=(2, 2), padding=spec.padding)
    got = fastconv.conv2d_backward(x, w, g, padding=padding, stride=2)
    assert relative_error(got[0], dx) <= 1e-12 and relative_error(got[1], dw) <= 1e-12


def test_unbatched_and_needs():
    rng = np.random.default_rng(3)
    x, w = rng.standard_normal((3, 7, 6)), rng.standard_normal((4, 3, 3, 3))
    g = rng.standard_normal((4, 7, 6))
    dx, dw, db = fastconv.conv2d_backward(x, w, g, padding=1)
    bx, bw, bb = fastconv.conv2d_backward(x[None], w, g[None], padding=1)
    assert dx.shape == x.shape
    np.testing.assert_allclose(dx, bx[0], rtol=1e-12)
    np.testing.assert_allclose(dw, bw, rtol=1e-12)
    np.testing.assert_allclose(fastconv.conv2d_input(x.shape, w, g, padding=1), dx, rtol=1e-12)
    np.testing.assert_allclose(fastconv.conv2d_weight(x, w.shape, g, padding=1), dw, rtol=1e-12)
    assert fastconv.conv2d_backward(x, w, g, padding=1, needs=(False, True, False))[::2] == (None, None)


@pytest.mark.parametrize("dtype, out_dtype", [(np.float32, np.float32), (np.float64, np.float64),
                                              (np.float16, np.float16), (np.int32, np.float64)])
def test_dtype_rules_as_conv2d(dtype, out_dtype):
    rng = np.random.default_rng(4)
    x, w = (rng.standard_normal((1, 2, 6, 6)) * 3).astype(dtype), (rng.standard_normal((3, 2, 3, 3)) * 3).astype(dtype)
    g = (rng.standard_normal((1, 3, 6, 6)) * 3).astype(dtype)
    dx, dw, db = fastconv.conv2d_backward(x, w, g, padding=1)
    assert dx.dtype == dw.dtype == db.dtype == out_dtype
    want_x, want_w = reference_conv2d_gradients(x, w, g, padding=((1, 1), (1, 1)))
    tolerance = {np.float16: 1e-3, np.float32: 1e-5}.get(dtype, 1e-12)
    assert relative_error(dx, want_x) <= tolerance and relative_error(dw, want_w) <= tolerance


def test_any_memory_layout_and_repeated_calls():
    rng = np.random.default_rng(5)
    x = np.asfortranarray(rng.standard_normal((2, 3, 8, 8)))
    w = rng.standard_normal((4, 3, 3, 3))[:, :, ::-1]
    g = rng.standard_normal((2, 4, 8, 8))[..., ::-1]
    want = reference_conv2d_gradients(x, w, g, padding=((1, 1), (1, 1)))
    for _ in range(2):  # the second call runs the remembered plan
        got = fastconv.conv2d_backward(x, w, g, padding=1)
        assert relative_error(got[0], want[0]) <= 1e-12 and relative_error(got[1], want[1]) <= 1e-12


def test_weight_changed_in_place_is_flipped_anew():
    rng = np.random.default_rng(6)
    w, g = rng.standard_normal((8, 8, 3, 3)), rng.standard_normal((1, 8, 10, 10))
    first = fastconv.conv2d_input((1, 8, 10, 10), w, g, padding=1, backend="winograd")
    w *= 2
    second = fastconv.conv2d_input((1, 8, 10, 10), w, g, padding=1, backend="winograd")
    np.testing.assert_allclose(second, 2 * first, rtol=1e-10)


@pytest.mark.parametrize("call, match", [
    (lambda x, w, g: fastconv.conv2d_input((1, 2, 6, 6), w, np.ones((1, 3, 5, 5))), "grad_output has shape"),
    (lambda x, w, g: fastconv.conv2d_input((1, 2, 6, 6), w, np.ones((3, 6, 6))), "grad_output must have shape"),
    (lambda x, w, g: fastconv.conv2d_input((1, 5, 6, 6), w, g), "weight has 2 input channels"),
    (lambda x, w, g: fastconv.conv2d_input((2, 6), w, g), "input must have shape"),
    (lambda x, w, g: fastconv.conv2d_weight(x, (3, 2, 3, 3), g, stride=0), "stride must be positive"),
    (lambda x, w, g: fastconv.conv2d_weight(x, (3, 2, 3), g), "weight must have 4 dimensions"),
    (lambda x, w, g: fastconv.conv2d_backward(x, w, g, padding="half"), "padding must be"),
    (lambda x, w, g: fastconv.conv2d_backward(x, w, g, padding_mode="mirror"), "padding_mode must be"),
    (lambda x, w, g: fastconv.conv2d_backward(x, w, g, needs=(True, False)), "needs must be"),
    (lambda x, w, g: fastconv.conv2d_backward(x, w, g, backend="col2im"), "Unknown backend 'col2im' for the weight"),
    (lambda x, w, g: fastconv.conv2d_backward(x, w, g, backend="magic"), "Unknown backend 'magic'"),
    (lambda x, w, g: fastconv.conv2d_weight(x, w.shape, g, backend="winograd"), "backend 'winograd' cannot run"),
])
def test_bad_arguments_are_named(call, match):
    x, w, g = np.ones((1, 2, 6, 6)), np.ones((3, 2, 3, 3)), np.ones((1, 3, 4, 4))
    with pytest.raises(ValueError, match=match):
        call(x, w, g)


def test_bad_operand_types_are_named():
    with pytest.raises(TypeError, match="grad_output"):
        fastconv.conv2d_input((1, 1, 4, 4), np.ones((1, 1, 3, 3)), "g")
    with pytest.raises(TypeError, match="input_shape"):
        fastconv.conv2d_input("shape", np.ones((1, 1, 3, 3)), np.ones((1, 1, 2, 2)))
    with pytest.raises(TypeError, match="grad_output has dtype"):
        fastconv.conv2d_weight(np.ones((1, 1, 4, 4)), (1, 1, 3, 3), np.array([["a"]]))


def test_huge_grad_output_is_refused_before_allocating():
    with pytest.raises(ValueError, match="padded input's height"):
        fastconv.conv2d_input((1, 1, 2**62, 4), np.ones((1, 1, 3, 3)), np.ones((1, 1, 2, 2)), padding=1)


def test_auto_picks_a_route_that_runs_and_use_backend_is_honoured():
    spec = backend_spec(make_spec((1, 16, 20, 20), (16, 16, 3, 3), padding=1, dtype=np.float32))
    for pass_ in ("input", "weight"):
        chosen = passes.choose(pass_, spec)
        assert passes.decline_reason(chosen, auto=True) is None
        ranking = passes.ranked(pass_, spec)
        assert chosen == ranking[0][1] and all(seconds > 0 for seconds, _ in ranking)
    with fastconv.use_backend("fft"):
        assert passes.choose("weight", spec, preferred="fft").backend == "fft"
        rng = np.random.default_rng(7)
        x, w, g = rng.standard_normal((1, 4, 9, 9)), rng.standard_normal((4, 4, 3, 3)), rng.standard_normal((1, 4, 9, 9))
        want = reference_conv2d_gradients(x, w, g, padding=((1, 1), (1, 1)))
        got = fastconv.conv2d_backward(x, w, g, padding=1)
        assert relative_error(got[0], want[0]) <= 1e-10 and relative_error(got[1], want[1]) <= 1e-10


def test_explain_shows_each_pass():
    for op in ("conv2d_input", "conv2d_weight"):
        report = fastconv.explain((1, 8, 16, 16), (8, 8, 3, 3), padding=1, dtype="float32", op=op)
        text = repr(report)
        assert text.startswith(op) and f"auto picks {report.choice!r}" in text
        assert report.choice in [row.name for row in report.rows if row.supported]
    with pytest.raises(ValueError, match="op must be"):
        fastconv.explain((1, 8, 16, 16), (8, 8, 3, 3), op="conv2d_bias")
    with pytest.raises(ValueError, match="forward pass only"):
        fastconv.explain((1, 8, 16, 16), (8, 8, 3, 3), op="conv2d_input", tune=True)


def _pool(name):
    return getattr(backends.get(name), "thread_pool", None)


def _runnable(pass_, spec):
    """The backends ``auto`` may run pass ``pass_`` of ``spec`` on here."""
    return [name for name in passes.pass_backends(pass_) if backends.unavailable_reason(name) is None
            and passes.decline_reason(passes.route(pass_, name, spec), auto=True) is None]


_POOL_SPEC = backend_spec(make_spec((2, 4, 8, 8), (4, 4, 3, 3), padding=1, dtype=np.float32))


@pytest.mark.parametrize("pass_, name", [(pass_, name) for pass_ in ("input", "weight")
                                         for name in _runnable(pass_, _POOL_SPEC)])
def test_each_pass_notes_the_pool_of_the_backend_it_ran(pass_, name, stale_pool):
    # auto charges a call on another pool than the last one's: after a backward pass, the pool
    # that pass left awake, whether the backend ran the pass itself or its forward conv
    rng = np.random.default_rng(5)
    x, w, g = (rng.standard_normal(shape).astype(np.float32) for shape in ((2, 4, 8, 8), (4, 4, 3, 3), (2, 4, 8, 8)))
    if pass_ == "input":
        fastconv.conv2d_input(x.shape, w, g, padding=1, backend=name)
    else:
        fastconv.conv2d_weight(x, w.shape, g, padding=1, backend=name)
    assert last_pool() == _pool(name)


@pytest.mark.parametrize("input_backend, weight_backend, needs", [
    ("col2im", "numba_cpu", (True, True, True)), ("numba_cpu", "im2col", (True, True, False)),
    ("numba_cpu", "im2col", (True, False, True)), ("col2im", "numba_cpu", (False, True, False))])
def test_conv2d_backward_notes_the_pool_of_the_pass_it_ran_last(input_backend, weight_backend, needs, stale_pool):
    rng = np.random.default_rng(6)
    x, w, g = (rng.standard_normal(shape).astype(np.float32) for shape in ((2, 4, 8, 8), (4, 4, 3, 3), (2, 4, 8, 8)))
    fastconv.conv2d_backward(x, w, g, padding=1, needs=needs, backend=(input_backend, weight_backend))
    assert last_pool() == _pool(weight_backend if needs[1] else input_backend)
