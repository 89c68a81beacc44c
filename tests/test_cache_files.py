"""Hostile cache files: every path that reads or writes autotune.json, the cost constants or FFTW
wisdom gets a warning and recovers, never an exception.

Contents: nesting too deep for the parser, every value of a valid document replaced by a value of
each wrong type, truncated files, binary garbage, empty files. Places: a directory where the file
should be, a file where its directory should be, a directory that cannot be written. A reader may
drop data only with a RuntimeWarning, and the next write leaves a valid file.
"""

from __future__ import annotations

import copy
import json
import math
import os
import tempfile
import warnings

import numpy as np
import pytest

import fastconv
from fastconv import config
from fastconv.auto import calibrate, choice, constants, cost, timing, tuning_cache

X, W = np.ones((1, 1, 8, 8)), np.ones((1, 1, 3, 3))
WRONG_VALUES = [None, True, -1, 1.5, math.nan, "text", [1, 2], {"a": 1}]


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(config, "cache_dir", tmp_path / "cache")
    monkeypatch.setattr(constants, "_loaded", None)
    # tune=True measures every backend within a time budget; the files are what is tested here
    monkeypatch.setattr(choice, "measure", lambda spec, operands, budget=None: {"naive": 1e-3, "im2col": "skipped"})
    choice.clear_cache()
    tuning_cache._warned.clear()
    yield tmp_path / "cache"
    choice.clear_cache()
    monkeypatch.setattr(constants, "_loaded", None)


def _paths(document, prefix=()):
    """Key paths of every value in a JSON document (at most three keys of each object below the top)."""
    if isinstance(document, dict):
        keys = list(document)[:3] if prefix else list(document)
        for key in keys:
            yield prefix + (key,)
            yield from _paths(document[key], prefix + (key,))


def _replaced(document, path, value):
    changed = copy.deepcopy(document)
    target = changed
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return changed


def _hostile_texts(document):
    """(label, bytes) of hostile versions of a valid JSON document."""
    text = json.dumps(document)
    yield "nested 100000 deep", b"[" * 100_000 + b"]" * 100_000
    for path in list(_paths(document))[:2]:
        placeholder = json.dumps(_replaced(document, path, "PLACEHOLDER"))
        yield (f"{'.'.join(map(str, path))} nested 1000 deep",
               placeholder.replace('"PLACEHOLDER"', "[" * 1000 + "]" * 1000).encode())
    yield "truncated", text[:len(text) // 2].encode()
    yield "binary garbage", bytes(range(256)) * 4
    yield "empty", b""
    for type_name, value in [("list", [1]), ("string", "x"), ("number", 3), ("null", None)]:
        yield f"top level {type_name}", json.dumps(value).encode()
    for path in _paths(document):
        for value in WRONG_VALUES:
            yield f"{'.'.join(map(str, path))} = {value!r}", json.dumps(_replaced(document, path, value)).encode()


def _valid_autotune_document():
    tuning_cache.store_entries({"some signature": {"backend": "naive",
                                             "seconds": {"naive": 1e-3, "fft": "skipped: estimated 1 s"}}})
    return json.loads(open(tuning_cache.cache_path()).read())


def _valid_constants_document():
    constants.save_constants({"naive": {"call": 1e-6, "mac": 1e-9}, "im2col": {"call": 2e-6}}, 2)
    return json.loads(open(constants.constants_path()).read())


def _read_everything():
    """Every reader of the two JSON files, as users reach them; returns what they saw."""
    from fastconv.tools.cli import main

    entries = tuning_cache.read_cache()
    report = fastconv.explain(X.shape, W.shape)
    choice.clear_cache()
    result = fastconv.conv2d(X, W, tune=True)  # reads autotune.json, then writes it
    np.testing.assert_allclose(result, 9.0)
    assert main(["tune", "--show"]) == 0
    return entries, (constants.fitted_constants(), constants.constants_source()), report.choice


def test_the_hostile_documents_cover_every_level():
    labels = [label for label, _ in _hostile_texts({"a": {"b": {"c": 1}}})]
    assert "a.b.c = None" in labels and "a = 'text'" in labels and "truncated" in labels


@pytest.mark.parametrize("which", ["autotune.json", "cost constants"])
def test_hostile_json_files_warn_and_recover(cache_dir, which, capsys):
    valid = _valid_autotune_document() if which == "autotune.json" else _valid_constants_document()
    path = tuning_cache.cache_path() if which == "autotune.json" else constants.constants_path()
    choice.clear_cache()
    constants._loaded = None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        expected = _read_everything()[:2]  # the valid file is read without a warning
    failures = []
    for label, content in _hostile_texts(valid):
        with open(path, "wb") as file:
            file.write(content)
        choice.clear_cache()
        tuning_cache._warned.clear()
        constants._loaded = None
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                seen = _read_everything()[:2]
        except Exception as error:  # noqa: BLE001 - collected, so one run lists every failing case
            failures.append(f"{label}: {type(error).__name__}: {str(error)[:120]}")
            continue
        warned = any(issubclass(warning.category, RuntimeWarning) for warning in caught)
        # a value replaced by another valid one is not lost: an entry or the file's constants are
        lost = set(seen[0]) != set(expected[0]) if which == "autotune.json" else seen[1][1] != expected[1][1]
        if lost and not warned:
            failures.append(f"{label}: data dropped without a warning")
        if which == "autotune.json":  # the tune=True call above rewrote it: valid again
            assert tuning_cache.read_cache(path), label
    capsys.readouterr()
    assert failures == [], "\n".join(failures)


def test_a_malformed_entry_is_dropped_and_explain_still_works(cache_dir):
    document = _valid_autotune_document()
    spec_key = tuning_cache.signature(fastconv.geometry.make_spec(X.shape, W.shape))
    document["entries"][spec_key] = {"backend": "naive", "seconds": [1, 2]}
    with open(tuning_cache.cache_path(), "w") as file:
        json.dump(document, file)
    choice.clear_cache()
    with pytest.warns(RuntimeWarning, match="1 malformed entries"):
        assert spec_key not in tuning_cache.read_cache()
    fastconv.autotune(True)
    try:
        choice_made = fastconv.explain(X, W).choice  # measured again: a compiled backend, not the reference
        assert choice_made in fastconv.backends.backend_names() and not fastconv.backends.is_reference(choice_made)
    finally:
        fastconv.autotune(False)


def _unwritable(tmp_path, monkeypatch):
    directory = tmp_path / "read-only"
    (directory / "cache").mkdir(parents=True)
    (directory / "cache").chmod(0o555)
    if os.access(directory / "cache", os.W_OK):  # root ignores permissions: refuse new files instead
        def refuse(*args, **kwargs):
            raise PermissionError(13, "Permission denied")

        monkeypatch.setattr(tempfile, "mkstemp", refuse)
    return directory / "cache"


PLACES = ["a directory where the file goes", "a file where the directory goes", "a directory that cannot be written"]


def _place(kind, tmp_path, monkeypatch):
    """Point the cache directory at a hostile place; return the file name to make a directory of."""
    if kind == "a file where the directory goes":
        (tmp_path / "a_file").write_text("")
        monkeypatch.setattr(config, "cache_dir", tmp_path / "a_file" / "cache")
    elif kind == "a directory that cannot be written":
        monkeypatch.setattr(config, "cache_dir", _unwritable(tmp_path, monkeypatch))
    else:
        monkeypatch.setattr(config, "cache_dir", tmp_path / "cache")
        for name in (tuning_cache.CACHE_FILE, constants.CONSTANTS_FILE, "fftw_wisdom"):
            (tmp_path / "cache" / name).mkdir(parents=True)


@pytest.mark.parametrize("kind", PLACES)
def test_every_reader_and_writer_in_a_hostile_place_warns_and_the_call_still_works(kind, tmp_path, monkeypatch,
                                                                                   capsys):
    from fastconv.tools.cli import main

    _place(kind, tmp_path, monkeypatch)
    choice.clear_cache()
    constants._loaded = None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        np.testing.assert_allclose(fastconv.conv2d(X, W, tune=True), 9.0)  # reads and writes autotune.json
        fastconv.explain(X.shape, W.shape)
        assert main(["tune", "--show"]) == 0
        assert constants.save_constants({"naive": {"call": 1e-6}}, 2) is None
        assert constants.constants_source() == "shipped defaults"
        fastconv.conv2d(X, W, backend="fft")
        assert fastconv.fftw.save_wisdom() is None
        assert fastconv.fftw.load_wisdom() is False
        choice.clear_cache(disk=True)
    capsys.readouterr()
    messages = [str(warning.message) for warning in caught if issubclass(warning.category, RuntimeWarning)]
    assert any("autotuning cache" in message for message in messages), messages
    assert any("cost constants" in message for message in messages), messages
    assert any("wisdom" in message for message in messages), messages
    if kind == "a file where the directory goes":  # named as what it is, not "File exists"
        assert any(f"{tmp_path / 'a_file'} is a file, not a directory" in message for message in messages), messages
    if kind == "a directory where the file goes":
        assert any("is a directory" in message for message in messages), messages


@pytest.mark.parametrize("content", [b"", bytes(range(256)) * 4, b"fastconv-fftw-wisdom 1\n" + b"\xff" * 8,
                                     b"fastconv-fftw-wisdom 1\n" + b"\x00" * 7, b"[" * 100_000])
def test_hostile_wisdom_files_warn_and_are_replaced_by_the_next_save(tmp_path, content):
    path = tmp_path / "wisdom"
    path.write_bytes(content)
    with pytest.warns(RuntimeWarning, match="wisdom"):
        assert fastconv.fftw.load_wisdom(path) is False
    assert fastconv.fftw.save_wisdom(path) == path
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert fastconv.fftw.load_wisdom(path) is True


def test_the_cli_reports_a_cache_it_cannot_remove(tmp_path, monkeypatch, capsys):
    from fastconv.tools.cli import main

    _place("a directory where the file goes", tmp_path, monkeypatch)
    with pytest.warns(RuntimeWarning, match="could not remove the autotuning cache"):
        assert main(["tune", "--clear"]) == 1
    assert "removed" not in capsys.readouterr().out
