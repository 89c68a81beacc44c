"""README's Python examples run as written, in order, in one namespace (as a reader pastes them)."""

import re
from pathlib import Path

import pytest

from fastconv import backends

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_blocks():
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


def test_readme_has_python_examples():
    assert len(_python_blocks()) >= 4


def test_readme_examples_run(tmp_path, monkeypatch, capsys):
    pytest.importorskip("dask")
    monkeypatch.chdir(tmp_path)  # the dask example writes .npy files
    namespace = {}
    for block in _python_blocks():
        if "from numba import cuda" in block and backends.unavailable_reason("cuda") is not None:
            continue  # the GPU example needs a GPU (or the simulator, in a process of its own)
        exec(compile(block, str(README), "exec"), namespace)
    assert "(2, 32, 14, 14)" in capsys.readouterr().out
