"""The backward passes' geometry: fold_input_gradient is the adjoint of backend_input, and the
rewritten problems have the shapes the passes need."""

import numpy as np
import pytest
from hypothesis import given

from fastconv.geometry import (backend_input, backend_spec, fold_input_gradient, input_pass_as_conv,
                               input_pass_as_transpose, make_grad_spec, make_spec, weight_pass_as_conv)
from strategies import conv_problems


@given(problem=conv_problems(dtypes=(np.float64,)))
def test_fold_input_gradient_is_the_adjoint_of_backend_input(problem):
    spec = make_spec(problem.x.shape, problem.weight.shape, **problem.kwargs)
    read, read_spec = backend_input(np.ascontiguousarray(problem.x), spec)
    assert read.shape == read_spec.input_shape
    y = np.random.default_rng(read.size).standard_normal(read.shape)
    folded = fold_input_gradient(y, spec)
    assert folded.shape == problem.x.shape
    assert np.isclose(np.vdot(read, y), np.vdot(problem.x, folded), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("kwargs", [dict(stride=(100, 1), padding=((100, 100), (0, 0))),
                                    dict(dilation=(40, 1), padding=((100, 90), (1, 1)), padding_mode="replicate"),
                                    dict(stride=(3, 200), padding=((2, 1), (500, 450)), padding_mode="replicate")])
def test_fold_input_gradient_undoes_gathering(kwargs):
    x = np.random.default_rng(0).standard_normal((1, 2, 5, 6))
    spec = make_spec(x.shape, (3, 2, 3, 2), **kwargs)
    read, read_spec = backend_input(x, spec)
    assert read_spec.input_shape != spec.input_shape or read_spec.padding != spec.padding
    y = np.random.default_rng(1).standard_normal(read.shape)
    assert np.isclose(np.vdot(read, y), np.vdot(x, fold_input_gradient(y, spec)), rtol=1e-12)


@given(problem=conv_problems(dtypes=(np.float64,)))
def test_rewritten_problems_have_the_passes_shapes(problem):
    spec = backend_spec(make_spec(problem.x.shape, problem.weight.shape, **problem.kwargs))
    conv = input_pass_as_conv(spec)
    assert conv.out_shape == spec.input_shape and conv.stride == (1, 1)
    transpose, ((top, bottom), (left, right)) = input_pass_as_transpose(spec)
    assert min(top, bottom, left, right) >= 0
    assert (transpose.out_height - top - bottom, transpose.out_width - left - right) == (spec.in_height,
                                                                                         spec.in_width)
    swapped = weight_pass_as_conv(spec)
    groups = spec.groups
    assert swapped.out_shape == (spec.in_channels // groups, spec.out_channels, spec.kernel_height,
                                 spec.kernel_width)


def test_make_grad_spec_names_grad_output():
    assert make_grad_spec((3, 8, 8), (4, 3, 3, 3), (4, 8, 8), op="conv2d_input", padding=1).batch == 1
    with pytest.raises(ValueError, match="conv2d_weight: grad_output has shape"):
        make_grad_spec((1, 3, 8, 8), (4, 3, 3, 3), (1, 4, 8, 8), op="conv2d_weight")
