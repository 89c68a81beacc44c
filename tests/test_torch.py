"""An extra cross-check against torch.nn.functional.conv2d where torch is installed (optional)."""

import numpy as np
import pytest
from hypothesis import given

import fastconv
from reference import relative_error
from strategies import conv_problems

torch = pytest.importorskip("torch")


@given(problem=conv_problems(dtypes=(np.float64,)))
def test_conv2d_matches_torch(problem):
    kwargs = dict(problem.kwargs)
    mode = kwargs.pop("padding_mode")
    (top, bottom), (left, right) = problem.explicit_padding
    x = torch.from_numpy(problem.x.copy())
    torch_mode = {"zeros": "constant", "replicate": "replicate", "reflect": "reflect", "circular": "circular"}[mode]
    x = torch.nn.functional.pad(x, (left, right, top, bottom), mode=torch_mode)
    expected = torch.nn.functional.conv2d(
        x, torch.from_numpy(problem.weight.copy()),
        None if problem.bias is None else torch.from_numpy(problem.bias.copy()),
        stride=kwargs["stride"], dilation=kwargs["dilation"], groups=kwargs["groups"]).numpy()
    assert relative_error(fastconv.conv2d(problem.x, problem.weight, problem.bias, **problem.kwargs),
                          expected) <= 1e-10


def test_same_padding_matches_torch_at_stride_one():
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((1, 2, 9, 8)), rng.standard_normal((3, 2, 4, 2))
    expected = torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(w), padding="same").numpy()
    assert relative_error(fastconv.conv2d(x, w, padding="same"), expected) <= 1e-12


@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
def test_padding_modes_match_torch_conv2d_module(mode):
    rng = np.random.default_rng(1)
    layer = torch.nn.Conv2d(2, 3, (3, 2), padding=(2, 1), padding_mode=mode, dtype=torch.float64)
    x = rng.standard_normal((2, 2, 6, 7))
    with torch.no_grad():
        expected = layer(torch.from_numpy(x)).numpy()
    out = fastconv.conv2d(x, layer.weight.detach().numpy(), layer.bias.detach().numpy(),
                          padding=(2, 1), padding_mode=mode)
    assert relative_error(out, expected) <= 1e-12
