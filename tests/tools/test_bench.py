"""The timing harness: cases, inputs, the peer baselines (checked against fastconv's answer), skips."""

import sys
import types

import numpy as np
import pytest

import fastconv
from fastconv import backends
from fastconv.auto import choice
from fastconv.tools import bench
from fastconv.tools.cases import Case, SUITES, Skip, make_inputs, suite_cases


def test_case_round_trips_through_json_form():
    case = Case("c", (1, 2, 9, 9), (4, 1, 3, 2), stride=(2, 1), padding=((1, 0), (2, 1)), groups=2,
                      kernel="gaussian", dtype="float64")
    assert Case.from_dict(case.to_dict()) == case
    assert hash(Case.from_dict(case.to_dict())) == hash(case)


def test_flops_count_one_multiply_and_one_add_per_tap():
    conv = Case("c", (2, 4, 8, 8), (6, 2, 3, 3), groups=2)
    assert conv.flops == 2 * 2 * 6 * 6 * 6 * (2 * 3 * 3)
    # transposed: each of N*C*H*W inputs meets (K / groups) * kh * kw weights
    transposed = Case("t", (1, 8, 4, 4), (8, 3, 4, 4), stride=2, op="conv_transpose2d")
    assert transposed.flops == 2 * 8 * 4 * 4 * 3 * 4 * 4


def test_gaussian_kernels_are_rank_one_and_random_ones_full_rank():
    x, w = make_inputs(Case("g", (1, 2, 16, 16), (3, 2, 7, 5), kernel="gaussian"))
    assert x.dtype == w.dtype == np.float32
    assert all(np.linalg.matrix_rank(w[k, c]) == 1 for k in range(3) for c in range(2))
    _, w = make_inputs(Case("r", (1, 1, 16, 16), (1, 1, 5, 5)))
    assert np.linalg.matrix_rank(w[0, 0]) == 5
    with pytest.raises(ValueError, match="kernel must be"):
        make_inputs(Case("bad", (1, 1, 4, 4), (1, 1, 3, 3), kernel="box"))


@pytest.mark.parametrize("suite", SUITES)
@pytest.mark.parametrize("quick", [False, True])
def test_every_suite_case_is_a_valid_problem(suite, quick):
    cases = suite_cases(suite, quick=quick, dtype="float64")
    assert cases and all(case.dtype == "float64" and case.flops > 0 for case in cases)
    for case in cases:
        if case.op == "conv2d":
            case.spec()


def test_unknown_suite_is_rejected():
    with pytest.raises(ValueError, match="unknown suite 'nope'"):
        suite_cases("nope")


PEER_CASES = [
    Case("same, even kernel, groups", (2, 4, 9, 8), (6, 2, 4, 2), padding="same", groups=2, dtype="float64"),
    Case("strided, dilated, reflect", (1, 3, 12, 11), (2, 3, 3, 3), stride=(2, 1), dilation=(1, 2),
               padding=2, padding_mode="reflect", dtype="float64"),
]


@pytest.mark.parametrize("peer", bench.PEERS)
@pytest.mark.parametrize("case", PEER_CASES, ids=lambda case: case.name)
def test_peer_baselines_compute_what_fastconv_computes(peer, case):
    if peer in ("torch", "opencv"):
        pytest.importorskip({"torch": "torch", "opencv": "cv2"}[peer])
    x, w = make_inputs(case)
    try:
        call = bench.prepare_call(case, peer, x, w)
    except Skip as reason:
        assert (peer == "scipy" and "stride" in str(reason)) or (peer == "opencv" and "single-channel" in str(reason))
        return
    expected = fastconv.conv2d(x, w, backend="naive", **case.conv_kwargs())
    np.testing.assert_allclose(np.asarray(call()), expected, rtol=1e-10, atol=1e-10)


OPENCV_CASES = [
    Case("same, even kernel, batch", (2, 1, 9, 8), (1, 1, 4, 2), padding="same", dtype="float64"),
    Case("same, odd kernel", (1, 1, 12, 10), (1, 1, 5, 3), padding="same", dtype="float64"),
    Case("valid", (1, 1, 12, 10), (1, 1, 3, 4), dtype="float64"),
    Case("asymmetric, reflect", (1, 1, 12, 10), (1, 1, 3, 3), padding=((2, 0), (1, 3)), padding_mode="reflect",
         dtype="float64"),
    Case("large kernel (filter2D's DFT path)", (1, 1, 40, 36), (1, 1, 15, 13), padding="same", dtype="float64"),
    Case("gaussian (sepFilter2D)", (1, 1, 20, 18), (1, 1, 7, 5), padding="same", kernel="gaussian", dtype="float64"),
    Case("colour: three planes as one image", (3, 1, 20, 18), (1, 1, 5, 5), padding="same", dtype="float64"),
    Case("colour, large kernel", (3, 1, 40, 36), (1, 1, 15, 13), padding="same", dtype="float64"),
    Case("colour, gaussian, valid", (3, 1, 20, 18), (1, 1, 5, 3), kernel="gaussian", dtype="float64"),
]


@pytest.mark.parametrize("case", OPENCV_CASES, ids=lambda case: case.name)
def test_the_opencv_peer_computes_what_fastconv_computes(case):
    pytest.importorskip("cv2")
    x, w = make_inputs(case)
    expected = fastconv.conv2d(x, w, backend="naive", **case.conv_kwargs())
    np.testing.assert_allclose(bench.prepare_call(case, "opencv", x, w)(), expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("case, words", [
    (Case("channels", (1, 2, 8, 8), (1, 2, 3, 3)), "single-channel"),
    (Case("per-channel kernels", (1, 3, 8, 8), (3, 1, 3, 3), groups=3), "single-channel"),
    (Case("too many planes", (513, 1, 4, 4), (1, 1, 3, 3)), "OpenCV's limit"),
    (Case("strided", (1, 1, 8, 8), (1, 1, 3, 3), stride=2), "no stride or dilation"),
    (Case("transposed", (1, 1, 4, 4), (1, 1, 3, 3), op="conv_transpose2d"), "OpenCV has no conv_transpose2d"),
])
def test_the_opencv_peer_skips_what_filter2d_cannot_do(case, words):
    pytest.importorskip("cv2")
    x, w = make_inputs(case)
    with pytest.raises(Skip, match=words):
        bench.prepare_call(case, "opencv", x, w)


def test_the_opencv_peer_hands_gaussians_to_sepfilter2d(monkeypatch):
    cv2 = pytest.importorskip("cv2")

    def refuse(*args, **kwargs):
        raise AssertionError("a Gaussian kernel went to filter2D, not to sepFilter2D with its factors")

    monkeypatch.setattr(cv2, "filter2D", refuse)
    case = Case("gaussian", (1, 1, 16, 16), (1, 1, 5, 5), padding="same", kernel="gaussian", dtype="float64")
    x, w = make_inputs(case)
    np.testing.assert_allclose(bench.prepare_call(case, "opencv", x, w)(),
                               fastconv.conv2d(x, w, backend="naive", padding="same"), rtol=1e-10, atol=1e-10)


def test_a_missing_opencv_is_a_skip_not_an_error(monkeypatch):
    find_spec = bench.importlib.util.find_spec
    monkeypatch.setattr(bench.importlib.util, "find_spec", lambda name, *a: None if name == "cv2" else find_spec(name, *a))
    assert "opencv" not in bench.installed_peers()
    case = Case("image", (1, 1, 8, 8), (1, 1, 3, 3), padding="same")
    with pytest.raises(Skip, match="not installed"):
        bench.prepare_call(case, "opencv", *make_inputs(case))


def test_skips_say_why():
    case = Case("big", (1, 64, 128, 128), (64, 64, 3, 3), padding=1)
    x, w = make_inputs(Case("small", (1, 1, 4, 4), (1, 1, 3, 3)))
    with pytest.raises(Skip, match="too slow for the reference loops"):
        bench.prepare_call(case, "naive", x, w)
    transposed = Case("t", (1, 1, 4, 4), (1, 1, 3, 3), op="conv_transpose2d")
    if not hasattr(fastconv, "conv_transpose2d"):
        with pytest.raises(Skip, match="not in this version"):
            bench.prepare_call(transposed, "naive", x, w)
    with pytest.raises(Skip, match="scipy has no conv_transpose2d"):
        bench.prepare_call(transposed, "scipy", x, w)


def test_a_backend_that_declines_the_weight_is_skipped_not_failed():
    case = Case("full-rank 3x3", (1, 2, 8, 8), (2, 2, 3, 3), padding=1)
    x, w = make_inputs(case)
    with pytest.raises(Skip, match="declines: .*numerical rank"):
        bench.prepare_call(case, "separable", x, w)


def test_time_call_stops_at_the_budget():
    calls = []
    seconds, runs = bench.time_call(lambda: calls.append(1), repeat=3, budget_s=10)
    assert runs > 3 and seconds >= 0  # short calls: timed until they add up to 30 ms
    _, runs = bench.time_call(lambda: __import__("time").sleep(0.02), repeat=3, budget_s=10)
    assert runs == 3  # 60 ms of calls: the repeat count decides
    _, runs = bench.time_call(lambda: __import__("time").sleep(0.03), repeat=50, budget_s=0.05)
    assert 1 <= runs <= 3


def test_time_call_warms_up_short_calls_only():
    short, long = [], []
    bench.time_call(lambda: short.append(1), repeat=3)
    assert len(short) > 3 + 1  # untimed calls for ~30 ms before the three timed ones
    bench.time_call(lambda: (long.append(1), __import__("time").sleep(0.035)), repeat=2)
    assert len(long) == 2  # a call longer than the warm-up is its own warm-up: timed as it comes


@pytest.fixture
def broken_run_backend(monkeypatch):
    """A registered backend whose run() raises: measure must record it and go on."""
    module = types.ModuleType("fastconv_broken_run_backend")
    module.name = "broken_run"
    module.available = lambda: None
    module.supports = lambda spec: None

    def run(x, w, b, spec):
        raise RuntimeError("kernel exploded")

    module.run = run
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setitem(backends._MODULES, "broken_run", (module.__name__, ("conv2d",)))
    yield
    backends._unavailable.pop("broken_run", None)
    backends._loaded.pop("broken_run", None)
    choice.clear_cache()


def test_measure_records_failures_and_finds_the_winner(broken_run_backend):
    case = Case("tiny", (1, 2, 6, 6), (2, 2, 3, 3))
    with fastconv.use_backend("naive"):  # auto's pick must be one of the two measured backends
        results = bench.measure([case], ["broken_run", "naive"], peers=["scipy"], repeat=2, progress=False)
    entry = results["cases"][0]
    assert entry["results"]["broken_run"] == {"status": "failed", "reason": "RuntimeError: kernel exploded"}
    assert entry["results"]["naive"]["status"] == entry["results"]["scipy"]["status"] == "ok"
    assert bench.fastest(entry, ["broken_run", "naive"]) == "naive"
    assert results["machine"]["cores"] >= 1 and results["peers"] == ["scipy"]
    assert "within 10% of the fastest backend on 1 of 1 cases" in bench.auto_summary(results)


def test_sgemm_ceiling_is_measured():
    assert bench.sgemm_gflops(64, repeat=2) > 0


def test_measure_times_each_case_on_the_requested_backends_of_its_operation():
    conv = Case("tiny conv", (1, 2, 6, 6), (2, 2, 3, 3))
    transposed = Case("tiny transposed", (1, 2, 4, 4), (2, 2, 3, 3), stride=2, op="conv_transpose2d")
    results = bench.measure([conv, transposed], ["naive"], repeat=1, budget_s=0.01, progress=False)
    assert [entry["backends"] for entry in results["cases"]] == [["naive"], ["naive"]]
    assert [list(entry["results"]) for entry in results["cases"]] == [["naive"], ["naive"]]
    results = bench.measure([conv, transposed], ["col2im", "im2col"], repeat=1, budget_s=0.01, progress=False)
    assert [entry["backends"] for entry in results["cases"]] == [["im2col"], ["col2im"]]
    assert bench.op_backends("conv_transpose2d") == list(backends.backend_names("conv_transpose2d"))


def test_auto_is_timed_as_users_call_it_and_is_never_the_fastest_backend():
    case = suite_cases("calls")[0]
    assert case.input_shape == (1, 1, 8, 8) and case.weight_shape == (1, 1, 3, 3)
    results = bench.measure([case], [bench.AUTO, "naive"], peers=[], repeat=1, progress=False)
    entry = results["cases"][0]
    assert bench.median_seconds(entry, bench.AUTO) > 0 and entry["backends"] == [bench.AUTO, "naive"]
    entry["results"][bench.AUTO]["median_s"] = 0.0  # faster than everything: still not a backend
    assert bench.fastest(entry, [bench.AUTO, "naive"]) == "naive"
    entry["results"]["torch"] = {"status": "ok", "median_s": 1e-6, "runs": 1}
    entry["results"][bench.AUTO]["median_s"] = 5e-7
    assert bench.call_overhead_summary(results) == (f"{case.name}: conv2d(backend='auto') 0.50 µs per call, torch "
                                                    f"1.00 µs: 0.50× torch's time")


@pytest.mark.parametrize("pass_", ["input", "weight"])
@pytest.mark.parametrize("case", PEER_CASES, ids=lambda case: case.name)
def test_torch_autograd_peer_computes_the_pass_fastconv_computes(pass_, case):
    pytest.importorskip("torch")
    from fastconv.tools.cases import make_grad_output, pass_cases

    case = pass_cases([case], pass_)[0]
    x, w = make_inputs(case)
    (got,) = bench.prepare_call(case, "torch", x, w)()
    g = make_grad_output(case)
    if pass_ == "input":
        expected = fastconv.conv2d_input(x.shape, w, g, backend="naive", **case.conv_kwargs())
    else:
        expected = fastconv.conv2d_weight(x, w.shape, g, backend="naive", **case.conv_kwargs())
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-10, atol=1e-10)
    measured = bench.measure([case], ["naive", "col2im" if pass_ == "input" else "im2col"], repeat=1,
                             progress=False)["cases"][0]
    assert measured["auto"] in bench.op_backends(case.op)
    assert all(result["status"] == "ok" for result in measured["results"].values())


def test_pass_cases_keep_conv2d_cases_only():
    from fastconv.tools.cases import pass_cases

    cases = suite_cases("default", quick=True)
    assert pass_cases(cases, "forward") == cases
    weight_cases = pass_cases(cases, "weight")
    assert {case.op for case in weight_cases} == {"conv2d_weight"}
    assert len(weight_cases) == sum(case.op == "conv2d" for case in cases)
    with pytest.raises(ValueError, match="pass must be one of"):
        pass_cases(cases, "bias")
