"""examples/small_cnn.py runs on every available backend and they agree (small sizes)."""

import importlib.util
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "small_cnn.py"


def test_small_cnn_example_runs_and_backends_agree(capsys):
    spec = importlib.util.spec_from_file_location("small_cnn", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--batch", "2", "--size", "8", "--repeat", "1"]) == 0
    printed = capsys.readouterr().out
    assert "naive" in printed and "DISAGREES" not in printed and "predicted classes" in printed
