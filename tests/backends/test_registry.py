"""The backend registry and its protocol: every registered module defines the hooks it is registered for."""

import importlib
import inspect

import pytest

from fastconv import backends

HOOKS = {"run": 4, "run_transpose": 4, "supports": 1, "cost_terms": 2}


@pytest.mark.parametrize("name", list(backends._MODULES))
def test_each_backend_defines_the_hooks_of_its_operations(name):
    path, operations = backends._MODULES[name]
    module = importlib.import_module(path)
    assert module.name == name and callable(module.available)
    for op in operations:
        hook = getattr(module, backends.OPERATIONS[op])
        assert len(inspect.signature(hook).parameters) >= HOOKS[backends.OPERATIONS[op]]
    if "conv2d" in operations:
        assert callable(module.supports)
        if getattr(module, "placement", "host") == "host":  # auto ranks host backends by their cost
            assert len(inspect.signature(module.cost_terms).parameters) == HOOKS["cost_terms"]
            assert isinstance(module.COST_CONSTANTS, dict) and module.COST_CONSTANTS
        else:
            assert callable(module.as_device_array) and callable(module.run_on_device)


def test_names_per_operation_and_errors_list_the_valid_names():
    assert "col2im" not in backends.backend_names() and "col2im" in backends.backend_names("conv_transpose2d")
    with pytest.raises(ValueError, match="Unknown backend 'im2col' for conv_transpose2d; valid backends are naive, col2im"):
        backends.check_name("im2col", "conv_transpose2d")
    with pytest.raises(ValueError, match="op must be one of"):
        backends.backend_names("conv3d")


def test_only_the_reference_loops_are_the_reference():
    assert [name for name in backends.backend_names() if backends.is_reference(name)] == ["naive"]
