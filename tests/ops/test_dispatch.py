"""The registry, explicit and automatic backend choice, and use_backend, with a fake backend."""

import asyncio
import sys
import threading
import types

import numpy as np
import pytest

import fastconv
from fastconv import backends
from fastconv.auto import choice
from fastconv.ops import conv2d as dispatch


@pytest.fixture
def fake_backend(monkeypatch):
    """Register 'fake', which declines float32 and returns a recognisable constant."""
    module = types.ModuleType("fastconv_fake_backend")
    module.name = "fake"
    module.available = lambda: None
    module.supports = lambda spec: "fake declines float32" if spec.dtype == np.float32 else None
    module.run = lambda x, w, b, spec: np.full(spec.out_shape, 42.0, dtype=spec.dtype)
    monkeypatch.setitem(sys.modules, "fastconv_fake_backend", module)
    monkeypatch.setitem(backends._MODULES, "fake", ("fastconv_fake_backend", ("conv2d",)))
    choice.clear_cache()
    yield module
    backends._unavailable.pop("fake", None)
    backends._loaded.pop("fake", None)
    choice.clear_cache()


@pytest.fixture
def broken_backend(monkeypatch):
    monkeypatch.setitem(backends._MODULES, "broken", ("fastconv_module_that_does_not_exist", ("conv2d",)))
    yield
    backends._unavailable.pop("broken", None)


def test_list_backends_rows():
    rows = fastconv.list_backends()
    assert rows[0] == ("naive", True, "")
    assert all(isinstance(row.reason, str) for row in rows)


def test_broken_backend_is_unavailable_with_reason(broken_backend):
    row = [r for r in fastconv.list_backends() if r.name == "broken"][0]
    assert not row.available and "ModuleNotFoundError" in row.reason
    with pytest.raises(ValueError, match="backend 'broken' is not available: failed to load"):
        fastconv.conv2d(np.ones((1, 1, 3, 3)), np.ones((1, 1, 2, 2)), backend="broken")


def test_explicit_backend_that_declines_raises_its_reason(fake_backend):
    x, w = np.ones((1, 1, 4, 4), np.float32), np.ones((1, 1, 3, 3), np.float32)
    with pytest.raises(ValueError, match="backend 'fake' cannot run this convolution: fake declines float32"):
        fastconv.conv2d(x, w, backend="fake")
    assert fastconv.conv2d(x.astype(np.float64), w, backend="fake")[0, 0, 0, 0] == 42.0


def test_use_backend_sets_auto_default_and_falls_back_when_declined(fake_backend):
    x64, w = np.ones((1, 1, 4, 4)), np.ones((1, 1, 3, 3))
    with fastconv.use_backend("fake"):
        assert fastconv.conv2d(x64, w)[0, 0, 0, 0] == 42.0
        # fake declines float32: auto falls back to a backend that can run it
        assert fastconv.conv2d(x64.astype(np.float32), w.astype(np.float32))[0, 0, 0, 0] == 9.0
        # an explicit backend wins over the context
        assert fastconv.conv2d(x64, w, backend="naive")[0, 0, 0, 0] == 9.0
    assert fastconv.conv2d(x64, w)[0, 0, 0, 0] == 9.0


def test_use_backend_is_thread_local(fake_backend):
    x, w = np.ones((1, 1, 4, 4)), np.ones((1, 1, 3, 3))
    results = {}
    entered, checked = threading.Event(), threading.Event()

    def other_thread():
        entered.wait()
        results["other"] = fastconv.conv2d(x, w)[0, 0, 0, 0]
        checked.set()

    thread = threading.Thread(target=other_thread)
    thread.start()
    with fastconv.use_backend("fake"):
        entered.set()
        checked.wait()
        results["inside"] = fastconv.conv2d(x, w)[0, 0, 0, 0]
    thread.join()
    assert results == {"other": 9.0, "inside": 42.0}


def test_use_backend_is_task_local(fake_backend):
    x, w = np.ones((1, 1, 4, 4)), np.ones((1, 1, 3, 3))

    async def with_fake():
        with fastconv.use_backend("fake"):
            await asyncio.sleep(0.01)
            return fastconv.conv2d(x, w)[0, 0, 0, 0]

    async def without():
        await asyncio.sleep(0.005)
        return fastconv.conv2d(x, w)[0, 0, 0, 0]

    async def both():
        return await asyncio.gather(with_fake(), without())

    assert asyncio.run(both()) == [42.0, 9.0]


def test_use_backend_rejects_unknown_and_unavailable(broken_backend):
    with pytest.raises(ValueError, match="Unknown backend 'nope'"):
        with fastconv.use_backend("nope"):
            pass
    with pytest.raises(ValueError, match="not available"):
        with fastconv.use_backend("broken"):
            pass


def test_auto_never_picks_a_declining_backend(fake_backend, monkeypatch):
    fake_backend.cost_terms = lambda spec, rank: {"call": 0.0}  # cheaper than anything: picked whenever it can run
    fake_backend.COST_CONSTANTS = {"call": 1.0}
    choice.clear_cache()
    x, w = np.ones((1, 1, 4, 4), np.float32), np.ones((1, 1, 3, 3), np.float32)
    assert fastconv.conv2d(x, w)[0, 0, 0, 0] == 9.0
    assert fastconv.conv2d(x.astype(np.float64), w)[0, 0, 0, 0] == 42.0


# --------------------------------------------------------------------------------------------
# repeated calls: validation and choice are remembered per call signature


def test_a_repeated_call_is_not_validated_or_chosen_again(monkeypatch):
    choice.clear_cache()
    x, w = np.ones((1, 2, 8, 8)), np.ones((3, 2, 3, 3))
    expected = fastconv.conv2d(x, w, padding=1)
    built = []
    real_make_spec = dispatch.make_spec
    monkeypatch.setattr(dispatch, "make_spec", lambda *a, **k: built.append(1) or real_make_spec(*a, **k))
    for _ in range(3):
        np.testing.assert_array_equal(fastconv.conv2d(x, w, padding=1), expected)
    assert built == []
    fastconv.conv2d(x, w, padding=2)  # another signature: validated
    assert built == [1]


def test_a_remembered_call_still_refuses_what_validation_refuses():
    choice.clear_cache()
    x, w = np.ones((1, 1, 6, 6)), np.ones((1, 1, 3, 3))
    fastconv.conv2d(x, w, stride=1)
    with pytest.raises(TypeError, match="stride must be an int"):
        fastconv.conv2d(x, w, stride=True)  # equal to 1 and hashing alike, but a bool
    with pytest.raises(TypeError, match="stride must be an int"):
        fastconv.conv2d(x, w, stride=1.0)
    with pytest.raises(ValueError, match="Unknown backend"):
        fastconv.conv2d(x, w, backend="nope")


def test_remembered_calls_follow_settings_and_preferences(monkeypatch):
    choice.clear_cache()
    x, w = np.ones((1, 1, 6, 6)), np.ones((1, 1, 3, 3))
    fastconv.conv2d(x, w)
    ran = []
    naive = backends.get("naive")
    monkeypatch.setattr(naive, "run", lambda *args: ran.append("naive") or np.zeros((1, 1, 4, 4)))
    with fastconv.use_backend("naive"):
        fastconv.conv2d(x, w)  # the preference is part of the signature
    assert ran == ["naive"]
    choice.clear_cache()  # forgets remembered calls too
    fastconv.conv2d(x, w, backend="naive")
    assert ran == ["naive", "naive"]


def test_a_weight_mutated_in_place_is_judged_again_by_a_weight_dependent_backend():
    choice.clear_cache()
    x = np.ones((1, 1, 16, 16))
    gauss = np.exp(-np.linspace(-2, 2, 7) ** 2)
    weight = np.outer(gauss, gauss)[None, None].copy()
    fastconv.conv2d(x, weight, backend="separable")
    weight[0, 0] = np.random.default_rng(0).standard_normal((7, 7))  # full rank now
    with pytest.raises(ValueError, match="backend 'separable' cannot run this convolution"):
        fastconv.conv2d(x, weight, backend="separable")
