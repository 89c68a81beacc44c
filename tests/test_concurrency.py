"""fastconv under threads and processes: thread-safe calls, thread pools left as found, fork pools.

What could hang (a worker process that never answers) runs in a child process with a timeout, so
a regression fails the test instead of hanging the suite.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

import fastconv
from fastconv import config
from fastconv.auto import calibrate, choice, constants, cost, timing, tuning_cache
from fastconv import thread_pools
from fastconv.geometry import make_spec

threadpoolctl = pytest.importorskip("threadpoolctl")


def _thread_settings():
    """What a user's own code would notice: BLAS/OpenMP pool sizes, and numba's count for this thread."""
    import numba

    pools = sorted((info["filepath"], info["num_threads"]) for info in threadpoolctl.threadpool_info())
    return pools, numba.get_num_threads()


def _problems():
    """(backend, x, weight, keywords): every host backend, on shapes that take its different paths."""
    rng = np.random.default_rng(7)
    g = np.exp(-np.linspace(-2, 2, 7) ** 2)
    shapes = [((2, 3, 20, 17), (4, 3, 3, 3), {"padding": 1}),
              ((1, 4, 24, 24), (4, 1, 3, 3), {"padding": 1, "groups": 4}),
              ((1, 3, 33, 30), (3, 3, 7, 7), {"padding": "same"}),
              ((1, 3, 33, 30), (3, 3, 7, 7), {"padding": "same", "low rank": True})]
    problems = []
    for backend in ("naive", "im2col", "numba_cpu", "fft", "winograd", "separable", "auto"):
        for shape, weight_shape, keywords in shapes:
            keywords = dict(keywords)
            weight = (np.outer(g, g) * np.ones(weight_shape) if keywords.pop("low rank", False)
                      else rng.standard_normal(weight_shape))
            x = rng.standard_normal(shape)
            try:
                fastconv.conv2d(x, weight, backend=backend, **keywords)
            except ValueError:  # the backend declines this one
                continue
            problems.append((backend, x, weight, keywords))
    assert {problem[0] for problem in problems} >= {"im2col", "numba_cpu", "fft", "winograd", "separable"}
    return problems


def test_threads_calling_every_backend_at_once_get_the_single_threaded_results(monkeypatch, tmp_path):
    monkeypatch.setattr(config, "cache_dir", tmp_path)
    problems = _problems()
    expected = [fastconv.conv2d(x, w, backend=backend, **keywords) for backend, x, w, keywords in problems]
    before = _thread_settings()
    failures, results = [], {}

    def worker(index):
        try:
            for round_ in range(3):
                for number in np.random.default_rng(index + 10 * round_).permutation(len(problems)):
                    backend, x, w, keywords = problems[number]
                    results[index, round_, number] = fastconv.conv2d(x, w, backend=backend, **keywords)
        except Exception as error:  # noqa: BLE001 - reported below, with the thread it happened in
            failures.append((index, repr(error)))

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible: races show up sooner
    try:
        threads = [threading.Thread(target=worker, args=(index,)) for index in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=240)
    finally:
        sys.setswitchinterval(interval)
    assert not any(thread.is_alive() for thread in threads)
    assert failures == []
    assert len(results) == 4 * 3 * len(problems)
    for (_, _, number), result in results.items():
        np.testing.assert_allclose(result, expected[number], rtol=1e-10, atol=1e-10, err_msg=problems[number][0])
    assert _thread_settings() == before  # BLAS and numba thread counts as the user had them


def _numpy_blas_counts():
    return [info["num_threads"] for info in threadpoolctl.threadpool_info() if info["user_api"] == "blas"]


def test_overlapping_blas_limits_restore_the_counts_from_before_the_first():
    before = _numpy_blas_counts()
    if max(before, default=1) < 2:
        pytest.skip("BLAS runs one thread here: a limit to one thread changes nothing")
    first, second = thread_pools.blas_threads(1), thread_pools.blas_threads(2)
    first.__enter__()
    assert set(_numpy_blas_counts()) == {1}
    second.__enter__()  # the smallest count asked for stays in force
    assert set(_numpy_blas_counts()) == {1}
    first.__exit__(None, None, None)  # the first one leaves before the second: the bug's order
    assert set(_numpy_blas_counts()) == {2}
    second.__exit__(None, None, None)
    assert _numpy_blas_counts() == before


def test_threads_running_winograd_and_im2col_leave_blas_as_found():
    before = _thread_settings()
    x, w = np.random.default_rng(0).standard_normal((1, 32, 40, 40)), np.ones((32, 32, 3, 3))
    barrier = threading.Barrier(4)

    def worker(index):
        barrier.wait()
        for _ in range(20):
            fastconv.conv2d(x, w, padding=1, backend=("winograd", "im2col")[index % 2])

    threads = [threading.Thread(target=worker, args=(index,)) for index in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert _thread_settings() == before


class _ForgetfulTable(dict):
    """A cache table that another thread empties right after every insertion."""

    def __setitem__(self, key, value):
        pass


def test_caches_emptied_by_another_thread_at_any_moment_still_give_answers(monkeypatch):
    for table in ("_weight_verdicts", "_ranks", "_decisions"):
        monkeypatch.setattr(choice, table, _ForgetfulTable())
    g = np.exp(-np.linspace(-2, 2, 9) ** 2)
    rank_one, full_rank = np.outer(g, g)[None, None], np.eye(9)[None, None]
    spec = make_spec((1, 1, 40, 40), (1, 1, 9, 9))
    assert choice.weight_decline_reason("separable", rank_one, spec) is None
    assert "rank" in choice.weight_decline_reason("separable", full_rank, spec)
    x = np.random.default_rng(0).standard_normal((1, 1, 40, 40))
    for weight in (rank_one, full_rank):
        np.testing.assert_allclose(fastconv.conv2d(x, weight), fastconv.conv2d(x, weight, backend="naive"),
                                   atol=1e-12)


def test_a_parallel_kernel_runs_on_config_threads_and_restores_the_callers_count(monkeypatch):
    import numba

    @numba.njit(parallel=True)
    def threads_seen(out):
        for i in numba.prange(out.shape[0]):
            out[i] = numba.get_num_threads()

    kernel = thread_pools.ParallelKernel(threads_seen)
    out = np.zeros(4)
    numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    monkeypatch.setattr(config, "threads", 1)
    kernel(out)
    assert set(out) == {1} and numba.get_num_threads() == numba.config.NUMBA_NUM_THREADS
    monkeypatch.setattr(thread_pools, "_parallel_unusable", True)  # as in a child forked from GNU OpenMP
    out[:] = 0
    kernel(out)
    assert kernel._serial is not None and set(out) == {numba.config.NUMBA_NUM_THREADS}


# --------------------------------------------------------------------------------------------
# processes

_POOL_SCRIPT = """
import multiprocessing, sys
import numpy as np
import fastconv

def problems():
    rng = np.random.default_rng(0)
    g = np.exp(-np.linspace(-2, 2, 5) ** 2)
    x = rng.standard_normal((1, 4, 24, 24))
    return [("naive", x, rng.standard_normal((4, 4, 3, 3))), ("im2col", x, rng.standard_normal((4, 4, 3, 3))),
            ("numba_cpu", x, rng.standard_normal((4, 4, 3, 3))), ("fft", x, rng.standard_normal((4, 4, 5, 5))),
            ("winograd", x, rng.standard_normal((4, 4, 3, 3))),
            ("separable", x, np.outer(g, g)[None, None].repeat(4, 0).repeat(4, 1))]

def compute(_):
    results = [fastconv.conv2d(x, w, padding=1, backend=name) for name, x, w in problems()]
    return results + [fastconv.max_pool2d(problems()[0][1], 3, stride=2)]

def square(number):
    return number * number

if __name__ == "__main__":
    method, call_fastconv = sys.argv[1], sys.argv[2] == "1"
    fastconv.config.set_threads(2)
    expected = compute(None)  # every backend has run (threaded FFTW, numba, BLAS) before the pool starts
    with multiprocessing.get_context(method).Pool(2) as pool:
        if call_fastconv:
            for results in pool.map_async(compute, range(4)).get(timeout=150):
                assert all(np.allclose(got, want, atol=1e-12) for got, want in zip(results, expected))
        else:
            assert pool.map_async(square, range(8)).get(timeout=60) == [n * n for n in range(8)]
    print("pool finished")
"""


def _run_script(tmp_path, script, *arguments, timeout=200, **environment):
    path = tmp_path / "script.py"
    path.write_text(textwrap.dedent(script))
    env = {**os.environ, **environment}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [os.getcwd(), env.get("PYTHONPATH")]))
    try:
        child = subprocess.run([sys.executable, str(path), *arguments], capture_output=True, text=True,
                               timeout=timeout, env=env)
    except subprocess.TimeoutExpired as expired:
        pytest.fail(f"the script hung (killed after {timeout} s); output so far: {expired.stdout!r} {expired.stderr!r}")
    assert child.returncode == 0, child.stdout + child.stderr
    return child


@pytest.mark.parametrize("call_fastconv", [True, False], ids=["workers-call-fastconv", "workers-do-not"])
def test_a_fork_pool_finishes_after_every_backend_ran(tmp_path, call_fastconv):
    if "fork" not in __import__("multiprocessing").get_all_start_methods():
        pytest.skip("no fork on this platform")
    child = _run_script(tmp_path, _POOL_SCRIPT, "fork", "1" if call_fastconv else "0")
    assert "pool finished" in child.stdout and "Terminating" not in child.stderr


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_spawn_and_forkserver_pools_work(tmp_path, method):
    if method not in __import__("multiprocessing").get_all_start_methods():
        pytest.skip(f"no {method} on this platform")
    assert "pool finished" in _run_script(tmp_path, _POOL_SCRIPT, method, "1").stdout


_WORKQUEUE_SCRIPT = """
import threading
import numba, numpy as np
import fastconv

x = np.random.default_rng(0).standard_normal((1, 8, 64, 64))
g = np.exp(-np.linspace(-2, 2, 5) ** 2)
weights = {"numba_cpu": np.ones((8, 8, 3, 3)), "separable": np.outer(g, g)[None, None].repeat(8, 0).repeat(8, 1)}
expected = {name: fastconv.conv2d(x, w, padding=1, backend=name) for name, w in weights.items()}
assert numba.threading_layer() == "workqueue"
errors = []

def worker(name):
    for _ in range(30):
        if not np.allclose(fastconv.conv2d(x, weights[name], padding=1, backend=name), expected[name]):
            errors.append(name)

threads = [threading.Thread(target=worker, args=(name,)) for name in ["numba_cpu", "separable"] * 2]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
assert not errors, errors
print("threads finished")
"""


def test_the_workqueue_layer_is_not_entered_by_two_threads_at_once(tmp_path):
    # numba's workqueue layer (no TBB, no OpenMP) aborts the process when two threads enter it
    child = _run_script(tmp_path, _WORKQUEUE_SCRIPT, NUMBA_THREADING_LAYER="workqueue")
    assert "threads finished" in child.stdout


def test_forked_children_get_fresh_locks():
    import multiprocessing

    if "fork" not in multiprocessing.get_all_start_methods():
        pytest.skip("no fork on this platform")
    lock = thread_pools.reinitialise_after_fork(threading.Lock())
    held = threading.Event()
    release = threading.Event()

    def holder():
        with lock:
            held.set()
            release.wait()

    thread = threading.Thread(target=holder)
    thread.start()
    held.wait()
    try:
        pid = os.fork()
        if pid == 0:  # the child: the thread holding the lock does not exist here
            os._exit(0 if lock.acquire(timeout=5) else 1)
        _, status = os.waitpid(pid, 0)
    finally:
        release.set()
        thread.join()
    assert os.waitstatus_to_exitcode(status) == 0


def test_blas_counts_in_a_child_forked_during_a_limit_are_restored_on_its_next_use():
    import multiprocessing

    if "fork" not in multiprocessing.get_all_start_methods():
        pytest.skip("no fork on this platform")
    before = _numpy_blas_counts()
    with thread_pools.blas_threads(1):
        pid = os.fork()
        if pid == 0:
            try:
                with thread_pools.blas_threads(1):
                    pass
                os._exit(0 if _numpy_blas_counts() == before else 1)
            except BaseException:
                os._exit(2)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert _numpy_blas_counts() == before

