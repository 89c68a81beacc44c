"""One function in a fresh Python process: how the comparison scripts keep libraries apart.

Every library a comparison times runs in a process of its own. An idle BLAS or OpenMP thread pool
left behind by one library keeps spinning on the cores the next one needs, so two libraries timed
in one process are each charged for the other's pools; and a peak resident size (``ru_maxrss``)
measured in a process of its own is that run's alone. :func:`run_isolated` runs any module-level
function there and returns its result; :func:`time_isolated` times the callables a function builds
there, by the rule of :func:`fastconv.tools.bench.time_call`. (``fastconv bench`` times its peers
the same way, one process per peer.)

Examples
--------
>>> from fastconv.tools.bench import sgemm_gflops
>>> run_isolated(sgemm_gflops, 64, 1, threads=1) > 0
True
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import subprocess
import sys

from fastconv import config
from fastconv.tools.bench import time_call
from fastconv.tools.cases import Skip

__all__ = ["run_isolated", "time_isolated"]


def run_isolated(function, *args, threads: int | None = None, peer: bool = True):
    """``function(*args)`` computed in a fresh Python process; its result.

    ``function`` is a module-level function of an importable module or of a script file (a script
    run as ``__main__`` is loaded again from its file, under another name, so that its
    ``if __name__ == "__main__"`` block does not run). ``args`` and the result travel as JSON; the
    result is the last line the process prints, so the function may print progress before it
    returns.

    The process runs with ``threads`` threads (``FASTCONV_NUM_THREADS``; by default
    ``config.threads``). A peer library (``peer=True``) runs in
    :func:`fastconv.config.peer_environment`, so that its OpenMP pool keeps its own defaults;
    ``peer=False``, for fastconv's own runs, keeps the environment an ``import fastconv`` sets up.

    Raises
    ------
    ValueError
        ``function`` is not a module-level function (a new process could not find it).
    RuntimeError
        The process failed; the message ends with the end of its error output.
    """
    request = json.dumps({**_reference(function), "args": list(args)})
    overrides = {"FASTCONV_NUM_THREADS": str(config.threads if threads is None else threads)}
    env = config.peer_environment(**overrides) if peer else dict(os.environ, **overrides)
    done = subprocess.run([sys.executable, "-m", "fastconv.tools.isolated"], input=request, capture_output=True,
                          text=True, env=env)
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        error = "\n".join(done.stderr.strip().splitlines()[-20:]) or "no error output"
        raise RuntimeError(f"{function.__qualname__} failed in its own process (exit code {done.returncode}):\n{error}")
    return json.loads(lines[-1])


def time_isolated(build, keys, *args, repeat: int = 5, budget_s: float = 1.0, threads: int | None = None,
                  peer: bool = True) -> dict[str, dict]:
    """Time the callable ``build(key, *args)`` returns, for every key, all in one fresh process.

    The process is :func:`run_isolated`'s (``threads`` and ``peer`` as there). ``build`` is a
    module-level function that returns a zero-argument callable, or raises
    :class:`~fastconv.tools.cases.Skip` saying why ``key`` cannot run here. Each callable is called
    once untimed (JIT compilation, FFT plans, caches), then timed by
    :func:`fastconv.tools.bench.time_call` (``repeat``, ``budget_s``).

    Returns
    -------
    dict
        ``{key: result}`` (keys as strings), each result as :func:`fastconv.tools.bench.measure`
        records one: ``{"status": "ok", "median_s", "runs"}`` or
        ``{"status": "skipped" | "failed", "reason"}``.
    """
    return run_isolated(_time_built, _reference(build), [str(key) for key in keys], list(args), repeat, budget_s,
                        threads=threads, peer=peer)


def _time_built(reference: dict, keys: list, args: list, repeat: int, budget_s: float) -> dict:
    """:func:`time_isolated`'s work, in the new process."""
    build = _resolve(reference)
    results = {}
    for key in keys:
        try:
            call = build(key, *args)
            call()  # warm-up, untimed
            seconds, runs = time_call(call, repeat, budget_s)
        except Skip as reason:
            results[key] = {"status": "skipped", "reason": str(reason)}
        except Exception as error:  # one broken key must not end the run: record it and go on
            results[key] = {"status": "failed", "reason": f"{type(error).__name__}: {error}"}
        else:
            results[key] = {"status": "ok", "median_s": seconds, "runs": runs}
    return results


def _reference(function) -> dict:
    """Where a new process finds ``function``: its module, the module's file, its qualified name."""
    name, module_name = getattr(function, "__qualname__", ""), getattr(function, "__module__", None)
    if not callable(function) or not name or "<" in name or not module_name:
        raise ValueError(f"function must be a module-level function (a new process finds it by name), "
                         f"got {function!r}")
    code = getattr(function, "__code__", None)
    file = getattr(sys.modules.get(module_name), "__file__", None) or getattr(code, "co_filename", None)
    return {"module": module_name, "file": file, "name": name}


def _resolve(reference: dict):
    module = None
    if reference["module"] != "__main__":
        try:
            module = importlib.import_module(reference["module"])
        except ImportError:
            if not reference["file"]:
                raise
    if module is None:  # a script: load its file again, under a name other than __main__
        spec = importlib.util.spec_from_file_location("_isolated_script", reference["file"])
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses and pickling look the module up by name
        spec.loader.exec_module(module)
    target = module
    for part in reference["name"].split("."):
        target = getattr(target, part)
    return target


def _main() -> None:
    """``python -m fastconv.tools.isolated``: read a call on stdin, print its result as one JSON line."""
    request = json.load(sys.stdin)
    result = _resolve(request)(*request["args"])
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    _main()
