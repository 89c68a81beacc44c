"""The fft backend's own machinery: transform sizes, tiles, plan and spectrum caches, wisdom,
planner effort, non-finite inputs and concurrent calls. Its results on every spec are checked by
the property tests of ``test_conv2d.py``."""

import threading
import warnings

import numpy as np
import pyfftw
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import signal

import fastconv
from fastconv import config
from fastconv.backends import fft
from fastconv.geometry import make_spec
from reference import explicit_padding, reference_conv2d, relative_error


@pytest.fixture(autouse=True)
def fresh_caches():
    fft.clear_caches()
    yield
    fft.clear_caches()


@given(st.integers(1, 5000))
def test_fast_even_length_is_even_fast_and_minimal(n):
    size = fft.fast_even_length(n)
    assert size >= n and size % 2 == 0
    assert pyfftw.next_fast_len(size) == size
    # no even fast size in between was skipped
    assert all(pyfftw.next_fast_len(m) != m for m in range(max(n, 2) + (max(n, 2) % 2), size, 2))


def test_odd_fast_size_is_made_even():
    assert pyfftw.next_fast_len(2078) == 2079 and fft.fast_even_length(2078) == 2080


def test_plans_are_built_once_and_reused():
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((1, 3, 20, 20)), rng.standard_normal((4, 3, 5, 5))
    fastconv.conv2d(x, w, backend="fft")
    built = fft.cache_info()["plans_built"]
    assert built >= 2  # at least a forward and an inverse plan
    for _ in range(3):
        fastconv.conv2d(x + 1, w * 2, backend="fft")
    assert fft.cache_info()["plans_built"] == built


def test_spectrum_cache_hits_and_never_goes_stale_after_in_place_mutation():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 2, 16, 16))
    w = rng.standard_normal((3, 2, 4, 4))
    first = fastconv.conv2d(x, w, backend="fft")
    fastconv.conv2d(x, w, backend="fft")
    assert fft.cache_info()["spectrum_hits"] == 1
    w[1, 0, 2, 3] += 1.0  # same array object, new values
    mutated = fastconv.conv2d(x, w, backend="fft")
    assert fft.cache_info()["spectrum_misses"] == 2
    assert relative_error(mutated, reference_conv2d(x, w)) <= 1e-12
    assert not np.allclose(mutated, first)
    # an equal copy (another object, same values) is served from the cache
    fastconv.conv2d(x, w.copy(), backend="fft")
    assert fft.cache_info()["spectrum_hits"] == 2


def test_large_image_is_tiled_and_matches_oaconvolve():
    rng = np.random.default_rng(2)
    image, kernel = rng.standard_normal((700, 650)), rng.standard_normal((9, 7))
    spec = make_spec((1, 1) + image.shape, (1, 1) + kernel.shape, padding="same")
    grid = fft._choose_tiles(spec, complex_data=False)
    tiles = [fft._axis_tiling(out, extent, 1, size)[1] for out, extent, size in zip((700, 650), (9, 7), grid)]
    assert tiles[0] * tiles[1] > 1  # several overlap-save tiles, not one whole transform
    out = fastconv.conv2d(image[None, None], kernel[None, None], padding="same", backend="fft")[0, 0]
    # correlation is convolution with the flipped kernel; "same" of scipy centres like ours for odd kernels
    expected = signal.oaconvolve(image, kernel[::-1, ::-1], mode="same")
    np.testing.assert_allclose(out, expected, atol=1e-11 * np.abs(expected).max())


@pytest.mark.parametrize("kwargs", [
    dict(stride=(2, 3), dilation=(2, 1), padding=((3, 1), (0, 2))),
    dict(groups=2, padding="full"),
    dict(groups=4, stride=3, padding="same", padding_mode="circular"),
])
def test_tiled_path_with_every_feature_and_a_tiny_workspace(monkeypatch, kwargs):
    """A workspace of a few tiles forces many overlap-save tiles processed in several chunks."""
    monkeypatch.setattr(config, "workspace_bytes", 1 << 18)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 4, 150, 170)).astype(np.float32)
    w = rng.standard_normal((4, 4 // kwargs.get("groups", 1), 5, 3)).astype(np.float32)
    bias = rng.standard_normal(4).astype(np.float32)
    spec = make_spec(x.shape, w.shape, dtype=np.float32,
                     **{k: v for k, v in kwargs.items() if k != "padding_mode"})
    assert fft._choose_tiles(spec, complex_data=False) != (pyfftw.next_fast_len(spec.padded_height),
                                                          fft.fast_even_length(spec.padded_width))
    out = fastconv.conv2d(x, w, bias, backend="fft", **kwargs)
    expected = fastconv.conv2d(x.astype(np.float64), w.astype(np.float64), bias.astype(np.float64),
                               backend="naive", **kwargs)
    assert out.dtype == np.float32 and relative_error(out, expected) <= 1e-5


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.complex128])
@pytest.mark.parametrize("kwargs, shapes", [
    (dict(padding="same"), ((1, 1, 90, 70), (1, 1, 9, 7))),
    (dict(stride=(2, 3), dilation=(2, 1), padding=((3, 1), (0, 2))), ((2, 1, 60, 50), (3, 1, 5, 4))),
    (dict(groups=3, padding="full"), ((2, 3, 40, 45), (6, 1, 6, 5))),  # depthwise, two filters per channel
])
def test_planes_streamed_tile_by_tile_give_the_reference_result(monkeypatch, dtype, kwargs, shapes):
    """One input channel per group: tiles go one by one through each thread's own plans."""
    monkeypatch.setattr(fft, "_STREAM_ABOVE_BYTES", 0)
    monkeypatch.setattr(fft, "_SMALLEST_TILE", 8)
    monkeypatch.setattr(config, "workspace_bytes", 1 << 14)  # too small for one whole-image grid: tiles
    monkeypatch.setattr(fft, "_STREAMED_TILE_OVERHEAD", 0)
    streamed = []
    convolve_planes = fft._convolve_planes
    monkeypatch.setattr(fft, "_convolve_planes", lambda *args: streamed.append(len(args[4])) or convolve_planes(*args))
    fft.clear_caches()
    rng = np.random.default_rng(9)
    x, w = (rng.standard_normal(shape).astype(dtype) for shape in shapes)
    if np.dtype(dtype).kind == "c":
        x = x + 1j * rng.standard_normal(shapes[0])
        w = w - 1j * rng.standard_normal(shapes[1])
    out = fastconv.conv2d(x, w, backend="fft", **kwargs)
    assert streamed and streamed[0] > 2  # several tiles, shared among the threads
    expected = fastconv.conv2d(x.astype(np.complex128 if np.dtype(dtype).kind == "c" else np.float64),
                               w.astype(np.complex128 if np.dtype(dtype).kind == "c" else np.float64),
                               backend="naive", **kwargs)
    assert out.dtype == dtype
    assert relative_error(out, expected) <= (1e-5 if dtype == np.float32 else 1e-12)


def test_a_non_finite_value_in_a_streamed_tile_sends_the_call_to_direct_summation(monkeypatch):
    monkeypatch.setattr(fft, "_STREAM_ABOVE_BYTES", 0)
    monkeypatch.setattr(fft, "_SMALLEST_TILE", 8)
    monkeypatch.setattr(config, "workspace_bytes", 1 << 14)
    monkeypatch.setattr(fft, "_STREAMED_TILE_OVERHEAD", 0)
    monkeypatch.setattr(fft, "_transforms_are_safe", lambda *args: True)  # let NaN reach the transforms
    rng = np.random.default_rng(10)
    x, w = rng.standard_normal((1, 1, 60, 60)), rng.standard_normal((1, 1, 5, 5))
    x[0, 0, 40, 7] = np.nan
    out = fastconv.conv2d(x, w, padding="same", backend="fft")
    expected = fastconv.conv2d(x, w, padding="same", backend="naive")
    np.testing.assert_array_equal(np.isnan(out), np.isnan(expected))
    finite = np.isfinite(expected)
    np.testing.assert_allclose(out[finite], expected[finite], rtol=1e-12)


def test_large_single_channel_images_are_streamed_in_tiles_that_waste_little_overlap():
    spec = make_spec((1, 1, 2048, 2048), (1, 1, 31, 31), padding="same", dtype=np.float32)
    grid = fft._choose_tiles(spec, complex_data=False)
    tiles = [fft._axis_tiling(2048, 31, 1, size)[1] for size in grid]
    assert fft._streams_planes(spec, grid, tiles[0] * tiles[1])
    assert all(size % 2 == 0 and size < 2048 for size in grid)
    assert tiles[0] * tiles[1] * grid[0] * grid[1] < 1.5 * 2048 ** 2  # the overlap costs under half again


def test_complex_inputs_use_complex_transforms():
    rng = np.random.default_rng(4)
    x = (rng.standard_normal((1, 2, 12, 9)) + 1j * rng.standard_normal((1, 2, 12, 9))).astype(np.complex64)
    w = (rng.standard_normal((2, 2, 3, 4)) - 1j * rng.standard_normal((2, 2, 3, 4))).astype(np.complex64)
    out = fastconv.conv2d(x, w, padding=1, stride=(1, 2), backend="fft")
    assert out.dtype == np.complex64
    assert relative_error(out, reference_conv2d(x, w, padding=((1, 1), (1, 1)), stride=(1, 2))) <= 1e-5


@pytest.mark.parametrize("where", ["x", "weight"])
def test_non_finite_values_stay_where_direct_convolution_puts_them(where):
    rng = np.random.default_rng(5)
    x, w = rng.standard_normal((1, 1, 12, 12)), rng.standard_normal((1, 1, 3, 3))
    if where == "x":
        x[0, 0, 2, 3], x[0, 0, 9, 9] = np.nan, np.inf
    else:
        w[0, 0, 1, 1] = np.inf
    out = fastconv.conv2d(x, w, padding=1, backend="fft")
    expected = fastconv.conv2d(x, w, padding=1, backend="naive")
    np.testing.assert_array_equal(np.isnan(out), np.isnan(expected))
    np.testing.assert_array_equal(np.isinf(out), np.isinf(expected))
    finite = np.isfinite(expected)
    assert finite.any() or where == "weight"
    np.testing.assert_allclose(out[finite], expected[finite], rtol=1e-12)


def test_huge_finite_values_that_would_overflow_the_spectrum_are_summed_directly():
    x = np.full((1, 1, 8, 8), 3e38, dtype=np.float32)  # the DC bin (the sum) would overflow float32
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = fastconv.conv2d(x, np.full((1, 1, 2, 2), 1e-3, dtype=np.float32), backend="fft")
    np.testing.assert_allclose(out, 1.2e36, rtol=1e-5)


@pytest.mark.parametrize("groups, per_group", [(2, 5), (3, 7), (2, 1)])
def test_filter_spectra_of_every_group_are_computed_when_the_chunk_does_not_divide_a_group(
        monkeypatch, groups, per_group):
    """The workspace allows a chunk of filters that does not divide the filters per group: every
    group's first filters must still be transformed (they were left as ``np.empty``)."""
    monkeypatch.setattr(config, "workspace_bytes", 16 << 10)
    rng = np.random.default_rng(11)
    x = rng.standard_normal((1, groups, 12, 12))
    w = rng.standard_normal((groups * per_group, 1, 3, 3))
    out = fastconv.conv2d(x, w, groups=groups, padding=1, backend="fft")
    assert relative_error(out, reference_conv2d(x, w, padding=((1, 1), (1, 1)), groups=groups)) <= 1e-12


@pytest.mark.parametrize("dtype, huge", [(np.float64, 1e308), (np.float32, 3e38), (np.complex128, 1e308)])
def test_values_near_the_dtypes_limit_are_summed_directly(dtype, huge):
    """One value near the limit leaves no overflow in the transforms, but rounding errors of
    about eps · 1e308 in every output: far from it, an image of ones gave ~1.2e291 instead of 2."""
    x = np.ones((1, 1, 12, 12), dtype=dtype)
    x[0, 0, 0, 0] = huge
    w = np.full((1, 1, 2, 2), 0.5, dtype=dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = fastconv.conv2d(x, w, backend="fft")
    np.testing.assert_array_equal(out[0, 0, 1:, 1:], 2.0)
    np.testing.assert_allclose(out[0, 0, 0, 0], (huge + 3) / 2, rtol=1e-6)


@given(scale=st.floats(1e-6, 0.99), dtype=st.sampled_from([np.float32, np.float64]),
       kernel=st.integers(1, 6), size=st.integers(6, 40), seed=st.integers(0, 2**16))
def test_transforms_are_trusted_only_where_they_cannot_overflow(scale, dtype, kernel, size, seed):
    """Values whose transform bound is below the dtype's limit (down to a millionth of it) never
    overflow: the transforms run and agree with the reference; just above it, direct summation."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, (1, 2, size, size)).astype(dtype)
    w = rng.uniform(-1, 1, (3, 2, kernel, kernel)).astype(dtype)
    spec = make_spec(x.shape, w.shape, dtype=dtype)
    grid = fft._choose_tiles(spec, complex_data=False)
    per_filter = np.abs(w).reshape(3, -1).sum(axis=1, dtype=np.float64).max()
    x *= scale * float(np.finfo(dtype).max) / (grid[0] * grid[1] * max(1.0, per_filter) * np.abs(x).max())
    assert fft._transforms_are_safe(x, w, spec)
    with pytest.MonkeyPatch.context() as patch, warnings.catch_warnings():
        patch.setattr(fft, "_direct", lambda *args: pytest.fail("summed directly although safe"))
        warnings.simplefilter("error")
        out = fastconv.conv2d(x, w, backend="fft")
    expected = reference_conv2d(x, w)
    assert np.isfinite(out).all() and relative_error(out, expected) <= (1e-5 if dtype == np.float32 else 1e-12)
    assert not fft._transforms_are_safe(x * np.array(4 / scale, dtype), w, spec)


def test_concurrent_calls_from_many_threads_are_all_correct():
    rng = np.random.default_rng(6)
    problems = []
    for index in range(6):  # some threads share shapes (and plans), some share weights (spectra)
        size = 24 if index % 2 else 31
        x = rng.standard_normal((1, 2, size, size))
        w = problems[-1][1] if index % 3 == 2 else rng.standard_normal((3, 2, 5, 5))
        problems.append((x, w, reference_conv2d(x, w, padding=((2, 2), (2, 2)))))
    errors, barrier = [], threading.Barrier(len(problems))

    def worker(x, w, expected):
        barrier.wait()
        for _ in range(15):
            out = fastconv.conv2d(x, w, padding=2, backend="fft")
            errors.append(relative_error(out, expected))

    threads = [threading.Thread(target=worker, args=problem) for problem in problems]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(errors) == 15 * len(problems)
    assert max(errors) <= 1e-12


def test_planner_effort_setting(monkeypatch):
    assert config.fftw_planner in config.FFTW_PLANNER_EFFORTS
    monkeypatch.setattr(config, "fftw_planner", config.fftw_planner)
    config.set_fftw_planner("measure")
    assert config.fftw_planner == "FFTW_MEASURE"
    x, w = np.ones((1, 1, 10, 10)), np.ones((1, 1, 3, 3))
    np.testing.assert_allclose(fastconv.conv2d(x, w, backend="fft"), 9.0)
    with pytest.raises(ValueError, match=r"fftw_planner must be one of FFTW_ESTIMATE.*got 'fast'"):
        config.set_fftw_planner("fast")
    assert config._check_planner("env", "FFTW_patient") == "FFTW_PATIENT"
    with pytest.raises(ValueError, match="FASTCONV_FFTW_PLANNER"):
        config._check_planner("environment variable FASTCONV_FFTW_PLANNER", "slow")


def test_wisdom_round_trip(tmp_path, monkeypatch):
    monkeypatch.setattr(config, "cache_dir", tmp_path / "cache")
    fastconv.conv2d(np.ones((1, 1, 20, 20)), np.ones((1, 1, 3, 3)), backend="fft")
    path = fastconv.fftw.save_wisdom()
    assert path == tmp_path / "cache" / "fftw_wisdom" and path.stat().st_size > 0
    fastconv.fftw.forget_wisdom()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert fastconv.fftw.load_wisdom() is True
        assert fastconv.fftw.load_wisdom(tmp_path / "missing") is False  # quietly


@pytest.mark.parametrize("content", [
    b"",
    b"\x00\xff garbage that is no wisdom at all",
    b"fastconv-fftw-wisdom 1\n\x05\x00",                                    # truncated
    b"fastconv-fftw-wisdom 1\n" + b"".join(len(p).to_bytes(8, "little") + p  # foreign FFTW wisdom
                                           for p in (b"(fftw-9.9.9 fftw_wisdom #x1 #x2)", b"(nonsense", b"")),
])
def test_corrupt_or_foreign_wisdom_warns_and_is_ignored(tmp_path, content):
    path = tmp_path / "wisdom"
    path.write_bytes(content)
    with pytest.warns(RuntimeWarning, match="wisdom"):
        assert fastconv.fftw.load_wisdom(path) is False
    out = fastconv.conv2d(np.ones((1, 1, 6, 6)), np.ones((1, 1, 2, 2)), backend="fft")  # still works
    np.testing.assert_allclose(out, 4.0)


def test_plan_pool_is_bounded_in_count_and_bytes(monkeypatch):
    pool = fft._PlanPool(max_idle=3, max_bytes=1 << 20)
    monkeypatch.setattr(fft, "_plans", pool)
    rng = np.random.default_rng(7)
    for size in range(10, 30, 2):  # ten shapes: more plans than the pool keeps
        x = rng.standard_normal((1, 1, size, size))
        out = fastconv.conv2d(x, np.ones((1, 1, 3, 3)), backend="fft")
        assert relative_error(out, reference_conv2d(x, np.ones((1, 1, 3, 3)))) <= 1e-12
    assert pool._count <= 3 and pool._bytes <= 1 << 20
    assert pool._count == sum(len(plans) for plans in pool._idle.values())
    assert pool._bytes == sum(fft._plan_bytes(p) for plans in pool._idle.values() for p in plans)


def _pool_invariants_hold(pool):
    assert pool._count <= pool._max_idle and pool._bytes <= pool._max_bytes
    assert all(pool._idle.values()), "an empty list of idle plans"
    assert pool._count == sum(len(plans) for plans in pool._idle.values())
    assert pool._bytes == sum(fft._plan_bytes(p) for plans in pool._idle.values() for p in plans)


def test_plan_larger_than_the_pool_evicts_nothing_and_second_call_works(monkeypatch):
    """A plan larger than the pool's byte limit, given back while another key's only plan is
    checked out, used to evict from that key's empty list: ``IndexError: pop from empty list``
    on the second call (x (1, 1, 400, 400), w (128, 1, 101, 101) at the real 256 MiB limit)."""
    rng = np.random.default_rng(9)
    x, w = rng.standard_normal((1, 1, 20, 20)), rng.standard_normal((8, 1, 3, 3))
    grid = fft._choose_tiles(make_spec(x.shape, w.shape), complex_data=False)
    forward_bytes = fft._plan_bytes(fft._build_plan(1, grid, np.dtype(np.float64), False, 1, "FFTW_ESTIMATE"))
    pool = fft._PlanPool(max_idle=16, max_bytes=2 * forward_bytes)  # keeps the forward plan, not the inverse
    monkeypatch.setattr(fft, "_plans", pool)
    expected = reference_conv2d(x, w)
    for _ in range(3):
        assert relative_error(fastconv.conv2d(x, w, backend="fft"), expected) <= 1e-12
        _pool_invariants_hold(pool)
    assert pool._count == 1


class _FakePlan:
    def __init__(self, size):
        self.input_array, self.output_array = np.empty(size, np.uint8), np.empty(0, np.uint8)


@settings(max_examples=150)  # no FFTW here: fake plans, microseconds per example
@given(max_idle=st.integers(1, 4), max_bytes=st.sampled_from([50, 150, 500]),
       calls=st.lists(st.lists(st.tuples(st.integers(0, 2), st.sampled_from([8, 40, 120, 400])),
                               min_size=1, max_size=3), max_size=12))
def test_plan_pool_survives_any_sequence_of_nested_checkouts(max_idle, max_bytes, calls):
    """Any nesting of checkouts (a call holds up to three plans at once, as the fft backend holds
    its forward and inverse plans) keeps the pool's books straight, within its limits, and never
    lends one plan twice at the same time."""
    pool = fft._PlanPool(max_idle=max_idle, max_bytes=max_bytes)
    sizes = {}  # a key's plans all have one size, as real plans of one key do
    lent = set()

    def nested(keys):
        if not keys:
            return
        key, size = keys[0]
        size = sizes.setdefault(key, size)
        with pool.checkout(key, lambda: _FakePlan(size)) as plan:
            assert id(plan) not in lent and fft._plan_bytes(plan) == size
            lent.add(id(plan))
            nested(keys[1:])
            lent.discard(id(plan))

    for keys in calls:
        nested(keys)
        _pool_invariants_hold(pool)


def test_cache_dir_follows_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("FASTCONV_CACHE_DIR", str(tmp_path / "explicit"))
    assert config._default_cache_dir() == tmp_path / "explicit"
    monkeypatch.delenv("FASTCONV_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert config._default_cache_dir() == tmp_path / "xdg" / "fastconv"


def test_dilated_kernel_is_transformed_undilated_on_small_phase_grids(monkeypatch):
    """A 3×3 kernel with dilation 12 spans 25×25; transformed as such on the whole padded grid,
    its spectra for 65,536 filters took gigabytes and seconds (deeplabv3's ASPP layer). Split into
    dilation² phases (space-to-batch), each phase is a plain 3×3 convolution on a grid of ~8×8."""
    grids = []
    compute_spectrum = fft._filter_spectrum
    monkeypatch.setattr(fft, "_filter_spectrum",
                        lambda weight, spec, grid: grids.append(grid) or compute_spectrum(weight, spec, grid))
    rng = np.random.default_rng(7)
    x, w = rng.standard_normal((1, 32, 65, 65)), rng.standard_normal((32, 32, 3, 3))
    out = fastconv.conv2d(x, w, padding=12, dilation=12, backend="fft")
    assert relative_error(out, reference_conv2d(x, w, padding=((12, 12), (12, 12)), dilation=(12, 12))) <= 1e-12
    assert len(grids) == 1 and grids[0][0] * grids[0][1] <= 16 * 16


@pytest.mark.parametrize("kwargs", [
    dict(dilation=(3, 2), padding=((4, 1), (2, 5))),        # phases of unequal length on both axes
    dict(dilation=(5, 1), stride=(1, 2), padding=2),        # only the height is split into phases
    dict(dilation=(2, 3), stride=(3, 1), groups=2),         # strided height keeps its dilation
    dict(dilation=7, padding="same", padding_mode="reflect"),
    dict(dilation=9),                                       # fewer outputs than phases
])
@pytest.mark.parametrize("dtype", [np.float32, np.complex128])
def test_dilated_convolution_through_phases_matches_the_reference(kwargs, dtype, monkeypatch):
    monkeypatch.setattr(fft, "_SPLIT_SPECTRUM_BYTES", 0)  # split these small problems too
    rng = np.random.default_rng(8)
    x = rng.standard_normal((2, 4, 23, 19)).astype(dtype)
    w = rng.standard_normal((6, 4 // kwargs.get("groups", 1), 3, 2)).astype(dtype)
    if np.dtype(dtype).kind == "c":
        x, w = x + 1j * rng.standard_normal(x.shape), w - 1j * rng.standard_normal(w.shape)
    bias = rng.standard_normal(6).astype(dtype)
    out = fastconv.conv2d(x, w, bias, backend="fft", **kwargs)
    stride, dilation = (_pair(kwargs.get(name, 1)) for name in ("stride", "dilation"))
    padding = explicit_padding(kwargs.get("padding", 0), x.shape[2:], w.shape[2:], stride, dilation)
    expected = reference_conv2d(x, w, bias, stride, padding, dilation, kwargs.get("groups", 1),
                                kwargs.get("padding_mode", "zeros"))
    assert out.dtype == dtype and out.shape == expected.shape
    assert relative_error(out, expected) <= (1e-5 if dtype == np.float32 else 1e-12)


@pytest.mark.parametrize("shapes, dilation, split", [
    (((1, 32, 65, 65), (32, 32, 3, 3)), 12, True),      # 68 MB of float64 spectra on the whole grid
    (((1, 3, 512, 512), (3, 3, 3, 3)), 2, False),       # few channels: tiles of the whole image win
    (((1, 64, 1001, 1001), (64, 64, 2, 2)), 1000, False),  # a million 2x2 sub-images
])
def test_dilated_axes_are_split_only_where_it_pays(shapes, dilation, split):
    spec = make_spec(*shapes, dilation=dilation)
    assert fft._dilation_phases(spec) == ((dilation, dilation) if split else (1, 1))


def _pair(value):
    return (value, value) if isinstance(value, int) else tuple(value)
