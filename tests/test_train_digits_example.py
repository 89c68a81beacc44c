"""examples/train_digits.py trains: a few epochs lower the loss and beat chance by far (scikit-learn's digits)."""

import importlib.util
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "train_digits.py"


def test_a_few_epochs_lower_the_loss_and_classify_digits():
    pytest.importorskip("sklearn")
    spec = importlib.util.spec_from_file_location("train_digits", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    result = module.train(epochs=3, log=lambda line: None)
    losses = result["losses"]
    assert losses[-1] < 0.5 * losses[0]
    assert result["test_accuracy"] > 0.8  # chance is 0.1
