"""Every asv benchmark in benchmarks/ sets up and runs once (naive backend, first other parameters),
so that a broken benchmark fails the tests as well as ``asv check``."""

import importlib
import inspect
import itertools
import pkgutil

import pytest

import benchmarks


def _benchmark_classes():
    for module_info in pkgutil.iter_modules(benchmarks.__path__):
        if module_info.name.startswith("bench_"):
            module = importlib.import_module(f"benchmarks.{module_info.name}")
            for name, cls in inspect.getmembers(module, inspect.isclass):
                if cls.__module__ == module.__name__ and hasattr(cls, "params"):
                    yield pytest.param(cls, id=f"{module_info.name}.{name}")


@pytest.mark.parametrize("cls", list(_benchmark_classes()))
def test_benchmark_sets_up_and_runs(cls):
    assert len(cls.params) == len(cls.param_names)
    # the cheapest combination: naive (or fastconv) with the first value of every other parameter
    first = [values[0] for values in cls.params]
    for params in itertools.chain([first], itertools.product(*cls.params)):
        instance = cls()
        try:
            instance.setup(*params)
        except NotImplementedError:
            continue  # asv reports n/a: try the next combination
        methods = [name for name in dir(cls) if name.startswith(("time_", "track_", "peakmem_"))]
        assert methods
        for name in methods:
            value = getattr(instance, name)(*params)
            if name.startswith("track_"):
                assert value > 0
        return
    pytest.skip(f"no combination of {cls.__name__} can run here")
