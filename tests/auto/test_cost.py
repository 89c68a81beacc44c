"""The cost model's work terms say how the algorithms trade off; the fit recovers known constants."""

import math
import types

import numpy as np
import pytest

from fastconv.auto import calibrate, constants, cost
from fastconv.geometry import make_spec

# The CPU backends, each modelled by its own cost_terms.
MODELLED = ("naive", "numba_cpu", "im2col", "fft", "separable", "winograd")


def spec(x_shape, w_shape, dtype="float32", **kwargs):
    return make_spec(x_shape, w_shape, dtype=dtype, **kwargs)


def test_fft_tiles_large_images_with_moderate_kernels():
    small_kernel = spec((1, 1, 4096, 4096), (1, 1, 9, 9), padding="same")
    assert cost.work_terms("fft", small_kernel)["tile"] > 1
    assert cost.work_terms("fft", spec((1, 1, 256, 256), (1, 1, 63, 63), padding="same"))["tile"] == 1


def test_fft_work_ignores_kernel_size_and_stride():
    base = cost.work_terms("fft", spec((1, 4, 128, 128), (8, 4, 3, 3), padding=15))
    assert cost.work_terms("fft", spec((1, 4, 128, 128), (8, 4, 31, 31), padding="same"))["fft_flop"] == \
        base["fft_flop"]
    strided = cost.work_terms("fft", spec((1, 4, 128, 128), (8, 4, 3, 3), padding=15, stride=2))
    assert strided["fft_flop"] == base["fft_flop"] and strided["bin_gemm_flop"] == base["bin_gemm_flop"]


def test_fft_channel_products_elementwise_or_by_gemm():
    from fastconv.backends import fft

    single = cost.work_terms("fft", spec((1, 1, 256, 256), (1, 1, 9, 9), padding="same"), module=fft)
    assert single["bin_flop"] > 0 and "bin_gemm" not in single  # one channel: elementwise product
    layer = spec((1, 64, 14, 14), (128, 64, 1, 1))
    terms = cost.work_terms("fft", layer, module=fft)
    height, width = fft._choose_tiles(layer, False)  # the backend's own grid
    assert terms["bin_gemm"] == height * (width // 2 + 1)  # one complex GEMM per frequency bin
    assert terms["filter_spectrum_byte"] == 128 * 64 * terms["bin_gemm"] * 8


def _direct_flops(*args, **kwargs):
    terms = cost.work_terms("numba_cpu", spec(*args, **kwargs))
    return terms.get("block_flop", 0.0) + terms.get("plane_flop", 0.0)


def test_direct_work_grows_with_kernel_area_and_falls_with_stride():
    small = _direct_flops((1, 64, 64, 64), (64, 64, 3, 3), padding=1)
    large = _direct_flops((1, 64, 64, 64), (64, 64, 9, 9), padding=4)
    strided = _direct_flops((1, 64, 64, 64), (64, 64, 3, 3), padding=1, stride=2)
    exact = 2 * 64 * 64 * 64 * 64 * 9
    assert exact <= small <= 1.15 * exact  # what the register blocks issue: little waste on 64x64 maps
    assert large == pytest.approx(9 * small, rel=0.1) and strided < small / 3
    from fastconv.backends import numba_cpu

    assert "plane_flop" in cost.work_terms("numba_cpu", spec((1, 8, 16, 16), (8, 1, 3, 3), groups=8), module=numba_cpu)
    assert "plane_flop" in cost.work_terms("numba_cpu", spec((1, 1, 16, 16), (1, 1, 5, 5)))
    dense = cost.work_terms("numba_cpu", spec((1, 8, 16, 16), (8, 8, 3, 3), padding=1))
    assert dense["block_flop"] > 0 and dense["pack_byte"] >= 8 * 18 * 18 * 4  # the zero-padded float32 input, packed


def test_im2col_one_by_one_is_a_plain_gemm():
    plain = cost.work_terms("im2col", spec((1, 64, 28, 28), (128, 64, 1, 1)))
    assert plain["unfold_byte"] == 0 and plain["gemm_flop"] == 2 * 128 * 64 * 28 * 28
    assert cost.work_terms("im2col", spec((1, 64, 28, 28), (128, 64, 1, 1), stride=2))["unfold_byte"] > 0
    assert cost.work_terms("im2col", spec((1, 64, 28, 28), (128, 64, 3, 3)))["unfold_byte"] > 0


def test_separable_work_scales_with_rank_and_kernel_perimeter():
    problem = spec((1, 1, 256, 256), (1, 1, 31, 31), padding="same")

    def macs(**kwargs):
        terms = cost.work_terms("separable", problem, **kwargs)
        return terms["horizontal_mac"] + terms["vertical_mac"]

    one, four = macs(rank=1), macs(rank=4)
    assert four == 4 * one
    assert macs() == 31 * one  # unknown rank: full
    direct = cost.work_terms("numba_cpu", problem)["block_flop"] / 2  # 31x31 runs on the register blocks
    # kh + kw taps per output instead of kh * kw, plus the vertical blocks' zero taps and the
    # window overlap each band filters again
    assert one < direct * (31 + 31) / (31 * 31) * 1.5


def test_winograd_needs_fewer_flops_than_direct_on_3x3():
    problem = spec((1, 64, 56, 56), (64, 64, 3, 3), padding=1)
    winograd = cost.work_terms("winograd", problem)["gemm_flop"]
    direct = cost.work_terms("numba_cpu", problem)["block_flop"]
    assert winograd < direct / 3  # F(4x4, 3x3): 36 / (9 * 16) = 1/4 of the multiplications


def test_float64_and_complex_cost_more_work():
    problems = {dtype: spec((1, 2, 16, 16), (2, 2, 3, 3), dtype=dtype)
                for dtype in ("float32", "float64", "complex64", "complex128")}
    terms = {dtype: cost.work_terms("im2col", problem)["gemm_flop"] for dtype, problem in problems.items()}
    assert terms["float64"] == terms["float32"] and terms["complex64"] == terms["complex128"] == 4 * terms["float32"]
    table = {"im2col": {"call": 0.0, "gemm_flop": 1e-9, "float64_factor": 1.5}}
    seconds = {dtype: cost.estimate_seconds("im2col", problem, constants=table, threads=constants.DEFAULT_THREADS)
               for dtype, problem in problems.items()}
    assert seconds["float64"] == pytest.approx(1.5 * seconds["float32"])
    assert seconds["complex128"] == pytest.approx(1.5 * seconds["complex64"])


def test_fit_recovers_the_float64_factor():
    truth = {"call": 1e-5, "mac": 2e-10, "float64_factor": 1.3}
    problems = [spec((1, c, s, s), (c, c, k, k), dtype=dtype) for c, s, k in [(1, 8, 3), (4, 16, 3), (8, 32, 5)]
                for dtype in ("float32", "float64")]
    samples = [(p, None, cost.estimate_seconds("naive", p, constants={"naive": truth}, threads=constants.DEFAULT_THREADS))
               for p in problems]
    fitted = calibrate.fit_constants("naive", samples)
    assert fitted == pytest.approx(truth, rel=1e-4)


def test_work_terms_are_the_backends_own_and_a_backend_without_them_gets_generic_ones():
    problem = spec((1, 8, 32, 32), (8, 8, 3, 3), padding=1)
    own_terms = types.SimpleNamespace(cost_terms=lambda s, rank: {"call": 1, "gemm_flop": 10})
    assert cost.work_terms("im2col", problem, module=own_terms) == {"call": 1.0, "gemm_flop": 10.0}
    with pytest.warns(RuntimeWarning, match="defines no cost_terms"):
        generic = cost.work_terms("unmodelled", problem, module=types.SimpleNamespace())
    assert generic["mac"] == 8 * 32 * 32 * 8 * 9 and generic["call"] == 1.0
    seconds = cost.estimate_seconds("unmodelled", problem, module=types.SimpleNamespace())
    assert math.isfinite(seconds) and seconds > 0  # ranked, not left out


def test_more_threads_speed_up_work_but_not_the_call_overhead():
    problem = spec((1, 8, 32, 32), (8, 8, 3, 3), padding=1)
    constants = {"naive": {"call": 1.0, "mac": 0.0}, "numba_cpu": {"block_flop": 1e-9}}
    assert cost.estimate_seconds("naive", problem, constants=constants, threads=1) == 1.0
    one = cost.estimate_seconds("numba_cpu", problem, constants=constants, threads=1)
    two = cost.estimate_seconds("numba_cpu", problem, constants=constants, threads=2)
    assert one > two if __import__("os").cpu_count() > 1 else one == two


def test_fit_recovers_known_constants():
    truth = {"call": 2e-5, "mac": 3e-10}
    problems = [spec((1, c, s, s), (c, c, k, k)) for c, s, k in [(1, 8, 3), (4, 16, 3), (8, 32, 5), (16, 32, 3),
                                                                 (2, 64, 7)]]
    samples = [(p, None, cost.estimate_seconds("naive", p, constants={"naive": truth}, threads=constants.DEFAULT_THREADS))
               for p in problems]
    fitted = calibrate.fit_constants("naive", samples)
    for term, value in truth.items():
        assert fitted[term] == pytest.approx(value, rel=1e-6)


def test_fit_keeps_defaults_for_terms_no_sample_exercises():
    problems = [spec((1, 4, s, s), (4, 4, 3, 3)) for s in (8, 16, 32)]
    samples = [(p, None, 1e-5 * s) for p, s in zip(problems, (1, 2, 4))]
    fitted = calibrate.fit_constants("numba_cpu", samples, {"plane_flop": 5.0})
    assert fitted["plane_flop"] == 5.0 and "block_flop" in fitted


def test_shipped_constants_rank_obvious_cases():
    image_big_kernel = spec((1, 1, 1024, 1024), (1, 1, 63, 63), padding="same")
    assert cost.estimate_seconds("fft", image_big_kernel) < cost.estimate_seconds("numba_cpu", image_big_kernel)
    layer = spec((1, 64, 56, 56), (64, 64, 3, 3), padding=1)
    assert cost.estimate_seconds("naive", layer) > 10 * min(
        cost.estimate_seconds(name, layer) for name in ("im2col", "numba_cpu", "winograd"))
    assert np.isfinite([cost.estimate_seconds(name, layer) for name in MODELLED]).all()


def test_empty_batch_costs_one_call():
    empty = spec((0, 3, 12, 11), (2, 3, 3, 3))
    assert all(cost.work_terms(name, empty) == {"call": 1.0} for name in MODELLED)


def test_fft_pays_filter_transforms_when_their_spectra_overflow_its_cache():
    from fastconv.backends import fft

    small = spec((1, 64, 14, 14), (64, 64, 3, 3), padding=1)  # 64*64 filters: a few MB of spectra
    huge = spec((1, 512, 14, 14), (512, 512, 3, 3), padding=1)  # 512*512 filters: ~300 MB
    fft_flop = {name: cost.work_terms("fft", layer, module=fft)["fft_flop"] for name, layer in
                (("small", small), ("huge", huge))}
    # per-call transforms: small has 128 (its filter spectra are cached), huge has 1024 + 262144
    assert fft_flop["huge"] / fft_flop["small"] == pytest.approx((1024 + 512 * 512) / 128)


def test_separable_pays_the_svd_only_when_its_factor_cache_cannot_hold_the_factors():
    from fastconv.backends import separable

    blur = spec((1, 1, 256, 256), (1, 1, 31, 31), padding="same")
    assert "svd_flop" not in cost.work_terms("separable", blur, rank=1, module=separable)  # cached
    huge = spec((1, 512, 8, 8), (1024, 512, 5, 5))  # 524,288 kernels: ~210 MB of float64 factors
    assert cost.work_terms("separable", huge, rank=1, module=separable)["svd_flop"] == 1024 * 512 * 25 * 5


def test_fft_models_space_to_batch_for_large_dilations():
    from fastconv.backends import fft

    aspp = spec((1, 256, 65, 65), (256, 256, 3, 3), padding=12, dilation=12)
    assert fft._dilation_phases(aspp) == (12, 12)
    assert cost.work_terms("fft", aspp, module=fft)["tile"] >= 144  # one undilated problem per sub-image


def test_auto_stays_on_the_pool_that_ran_last_when_switching_costs_more_than_it_saves(cost_probe_stub):
    from fastconv.auto import choice

    # a 1x1 layer that BLAS runs fastest when nothing ran before
    spec = make_spec((1, 960, 7, 7), (160, 960, 1, 1), dtype="float32")
    assert choice.model_choice(spec, None) == "im2col"
    cost_probe_stub.switches = {"openmp>blas": 0.5, "blas>openmp": 0.5}
    assert choice.model_choice(spec, None, previous_pool="openmp") == "numba_cpu"
    assert choice.model_choice(spec, None, previous_pool="blas") == "im2col"


def test_conv2d_remembers_a_pick_per_previous_pool(cost_probe_stub):
    import fastconv
    from fastconv.thread_pools import last_pool

    cost_probe_stub.switches = {"openmp>blas": 0.5, "blas>openmp": 0.5}
    x = np.ones((1, 960, 7, 7), np.float32)
    w = np.ones((160, 960, 1, 1), np.float32)
    for warm_up, pool in [("numba_cpu", "openmp"), ("im2col", "blas"), ("numba_cpu", "openmp")]:
        expected = fastconv.conv2d(x, w, backend=warm_up)
        assert last_pool() == pool
        np.testing.assert_allclose(fastconv.conv2d(x, w), expected, rtol=1e-5)
        assert last_pool() == pool  # auto took the backend on the pool that was awake
