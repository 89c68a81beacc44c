"""The cuda backend's kernels in numba's CUDA simulator (run with NUMBA_ENABLE_CUDASIM=1).

``tests/backends/test_cuda.py`` starts this directory in its own pytest process. Every simulated thread is
a Python thread, so problems stay tiny (at most a few hundred outputs per channel) and hypothesis
draws fewer examples than elsewhere.
"""

import numpy as np
import pytest
from hypothesis import given, settings
from numba import cuda

import fastconv
from fastconv import backends
from fastconv.ops import conv2d as dispatch
from fastconv.backends import cuda as cuda_backend
from fastconv.geometry import make_spec, resolve_dtypes
from reference import reference_conv2d, relative_error
from strategies import REAL_DTYPES, conv_problems

TOLERANCE = {np.dtype(np.float64): 1e-10, np.dtype(np.float32): 1e-5}

pytestmark = pytest.mark.skipif(not cuda.is_available(), reason="needs NUMBA_ENABLE_CUDASIM=1 (or a GPU)")


def _expected(problem):
    return reference_conv2d(problem.x, problem.weight, problem.bias, padding=problem.explicit_padding,
                            **{k: v for k, v in problem.kwargs.items() if k != "padding"})


def _spec(problem):
    compute, out = resolve_dtypes(problem.x.dtype, problem.weight.dtype)
    return make_spec(problem.x.shape, problem.weight.shape, dtype=compute, out_dtype=out, **problem.kwargs)


def _to_device_keeping_order(array):
    """A device copy, in Fortran order if the array is (the kernels index any layout)."""
    if not (array.flags.c_contiguous or array.flags.f_contiguous):
        array = np.ascontiguousarray(array)  # numba copies only single memory regions
    return cuda.to_device(array)


@settings(max_examples=25)
@given(problem=conv_problems(dtypes=REAL_DTYPES, max_size=8))
def test_every_fitting_kernel_matches_reference(problem):
    """Each kernel that can run the spec, padding mode applied in the kernel (the device path)."""
    spec = _spec(problem)
    x, weight = _to_device_keeping_order(problem.x), _to_device_keeping_order(problem.weight)
    bias = None if problem.bias is None else cuda.to_device(problem.bias)
    expected = _expected(problem)
    for kernel in cuda_backend.kernels_that_fit(spec):
        out = cuda.device_array(spec.out_shape, dtype=spec.dtype)
        cuda_backend._launch(x, weight, bias, out, spec, kernel=kernel)
        error = relative_error(out.copy_to_host(), expected)
        assert error <= TOLERANCE[spec.dtype], f"kernel {kernel}: relative error {error}"


@settings(max_examples=15)
@given(problem=conv_problems(dtypes=REAL_DTYPES, max_size=8))
def test_host_arrays_in_numpy_out(problem):
    """conv2d(backend="cuda") on host arrays of any layout: NumPy result, inputs untouched."""
    x_before, w_before = problem.x.copy(), problem.weight.copy()
    out = fastconv.conv2d(problem.x, problem.weight, problem.bias, backend="cuda", **problem.kwargs)
    assert isinstance(out, np.ndarray) and out.dtype == problem.x.dtype
    assert relative_error(out, _expected(problem)) <= TOLERANCE[out.dtype]
    np.testing.assert_array_equal(problem.x, x_before)
    np.testing.assert_array_equal(problem.weight, w_before)


def _problem_arrays(dtype=np.float64, shape=(2, 4, 9, 7), weight_shape=(6, 2, 3, 2)):
    rng = np.random.default_rng(7)
    return (rng.standard_normal(shape).astype(dtype), rng.standard_normal(weight_shape).astype(dtype),
            rng.standard_normal(weight_shape[0]).astype(dtype))


@pytest.mark.parametrize("padding_mode", ["zeros", "reflect", "replicate", "circular"])
def test_device_arrays_stay_on_device(padding_mode):
    x, w, b = _problem_arrays()
    kwargs = dict(stride=(1, 2), padding=((2, 1), (1, 2)), groups=2, padding_mode=padding_mode)
    d_x, d_w = cuda.to_device(x), cuda.to_device(w)
    out = fastconv.conv2d(d_x, d_w, b, **kwargs)  # auto picks cuda; bias from the host
    assert not isinstance(out, np.ndarray) and hasattr(out, "copy_to_host")
    expected = reference_conv2d(x, w, b, stride=(1, 2), padding=((2, 1), (1, 2)), groups=2, padding_mode=padding_mode)
    assert relative_error(out.copy_to_host(), expected) <= 1e-10
    np.testing.assert_array_equal(d_x.copy_to_host(), x)  # the device input is untouched
    # round trip: the device result feeds the next layer without leaving the device
    again = fastconv.conv2d(out, cuda.to_device(np.ones((1, 6, 1, 1))), backend="cuda")
    np.testing.assert_allclose(again.copy_to_host(), expected.sum(axis=1, keepdims=True), rtol=1e-12)


def test_unbatched_and_strided_device_arrays():
    x, w, b = _problem_arrays()
    out = fastconv.conv2d(cuda.to_device(x[0]), cuda.to_device(w), cuda.to_device(b), groups=2, padding="same")
    assert out.shape == (6, 9, 7)
    expected = reference_conv2d(x[:1], w, b, padding=((1, 1), (0, 1)), groups=2)[0]
    assert relative_error(out.copy_to_host(), expected) <= 1e-10
    big = cuda.to_device(np.repeat(np.repeat(x, 2, axis=2), 2, axis=3))
    view = big[:, :, ::2, ::2]  # a non-contiguous device view holding x
    out = fastconv.conv2d(view, w, groups=2, padding_mode="circular", padding=1)
    expected = reference_conv2d(x, w, padding=((1, 1), (1, 1)), groups=2, padding_mode="circular")
    assert relative_error(out.copy_to_host(), expected) <= 1e-10


@pytest.mark.parametrize("x_dtype, w_dtype, out_dtype", [
    (np.float32, np.float64, np.float64),  # a float32 device input cast as the kernel loads it
    (np.int32, np.float32, np.float64),
    (np.float16, np.float16, np.float16),  # computed in float32, stored as float16
])
def test_device_dtype_rules_match_host(x_dtype, w_dtype, out_dtype):
    x, w, _ = _problem_arrays(shape=(1, 2, 6, 6), weight_shape=(3, 2, 3, 3))
    x, w = (x * 3).astype(x_dtype), w.astype(w_dtype)
    out = fastconv.conv2d(cuda.to_device(x), w, padding=1)
    assert out.dtype == out_dtype
    tolerance = 1e-3 if out_dtype == np.float16 else 1e-5
    assert relative_error(out.copy_to_host(), reference_conv2d(x, w, padding=((1, 1), (1, 1)))) <= tolerance


def test_batches_beyond_the_grid_are_looped_over(monkeypatch):
    monkeypatch.setattr(cuda_backend, "MAX_GRID_Z", 2)  # as if the batch exceeded gridDim.z
    x, w, b = _problem_arrays(shape=(5, 2, 6, 5), weight_shape=(4, 2, 3, 3))
    for kwargs in (dict(), dict(groups=2)):  # tiled, depthwise
        w_k = w if not kwargs else np.ascontiguousarray(w[:, :1])
        expected = reference_conv2d(x, w_k, b, **kwargs)
        spec = make_spec(x.shape, w_k.shape, **kwargs)
        for kernel in cuda_backend.kernels_that_fit(spec):
            out = cuda.device_array(spec.out_shape)
            cuda_backend._launch(cuda.to_device(x), cuda.to_device(w_k), cuda.to_device(b), out, spec, kernel)
            assert relative_error(out.copy_to_host(), expected) <= 1e-10, kernel


def test_many_output_channels_span_several_channel_blocks():
    x, w, b = _problem_arrays(shape=(1, 3, 5, 5), weight_shape=(9, 3, 2, 2))  # 4 + 4 + 1 channels
    out = fastconv.conv2d(x, w, b, backend="cuda")
    assert relative_error(out, reference_conv2d(x, w, b)) <= 1e-10
    x, w, b = _problem_arrays(shape=(1, 2, 5, 5), weight_shape=(10, 1, 3, 3))  # depthwise, multiplier 5
    out = fastconv.conv2d(x, w, b, groups=2, padding=1, backend="cuda")
    assert relative_error(out, reference_conv2d(x, w, b, groups=2, padding=((1, 1), (1, 1)))) <= 1e-10


def test_auto_picks_cuda_for_device_arrays_only_unless_asked():
    spec = make_spec((1, 1, 4, 4), (1, 1, 3, 3))
    assert backends.unavailable_reason("cuda") is None  # the simulator counts as a GPU
    assert dispatch.choose_backend(spec) != "cuda"
    with fastconv.use_backend("cuda"):
        assert dispatch.choose_backend(spec) == "cuda"
    out = fastconv.conv2d(cuda.to_device(np.ones((1, 1, 4, 4))), np.ones((1, 1, 3, 3)))
    assert out.copy_to_host()[0, 0, 0, 0] == 9.0


def test_device_arrays_refuse_other_backends_and_bad_input():
    d_x = cuda.to_device(np.ones((1, 2, 4, 4)))
    with pytest.raises(ValueError, match="backend 'naive' cannot read arrays in GPU memory"):
        fastconv.conv2d(d_x, np.ones((1, 2, 3, 3)), backend="naive")
    with pytest.raises(ValueError, match="weight has 2 input channels per group"):
        fastconv.conv2d(d_x, np.ones((2, 2, 3, 3)), groups=2)
    with pytest.raises(ValueError, match="bias must have shape"):
        fastconv.conv2d(d_x, np.ones((1, 2, 3, 3)), cuda.to_device(np.ones(2)))
    with pytest.raises(ValueError, match="padding_mode='reflect' needs padding < input"):
        fastconv.conv2d(d_x, np.ones((1, 2, 3, 3)), padding=4, padding_mode="reflect")
    with pytest.raises(ValueError, match="backend 'cuda' cannot run this convolution: complex"):
        fastconv.conv2d(cuda.to_device(np.ones((1, 2, 4, 4), np.complex64)), np.ones((1, 2, 3, 3)))
    with pytest.raises(TypeError, match="x has dtype"):
        fastconv.conv2d(cuda.to_device(np.ones((1, 2, 4, 4), "M8[s]")), np.ones((1, 2, 3, 3)))
