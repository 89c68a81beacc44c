"""Train a small CNN on scikit-learn's 8×8 digits with NumPy SGD and fastconv for every convolution.

    conv 3×3 (1 → 16, same) → ReLU → max-pool 2×2 → conv 3×3 (16 → 32, same) → ReLU
    → average-pool 2×2 → flatten → linear (32·2·2 → 10) → softmax cross-entropy

Every convolution and pooling runs on fastconv, forward and backward (``conv2d_backward``,
``max_pool2d_backward``, ``avg_pool2d_backward``); the linear layer is a NumPy matrix product.
Weights start from ``fastconv.init`` (He normal for the ReLU layers, Glorot uniform for the
classifier) and are trained by minibatch SGD with momentum. The data is the 1,797 images of
``sklearn.datasets.load_digits`` (bundled with scikit-learn, no download), 80% for training and
20% held out for the test accuracy.

    python examples/train_digits.py                 # 15 epochs: about 98-99% test accuracy
    python examples/train_digits.py --epochs 2      # a quick run
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import fastconv


def load_data(seed: int = 0):
    """(train images, train labels, test images, test labels); images (N, 1, 8, 8) float32 in [0, 1]."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[:, None]
    order = np.random.default_rng(seed).permutation(len(images))
    split = int(0.8 * len(images))
    train, test = order[:split], order[split:]
    return images[train], digits.target[train], images[test], digits.target[test]


def make_network(rng: np.random.Generator) -> dict:
    return {
        "conv1": fastconv.init.he_normal((16, 1, 3, 3), rng=rng), "bias1": np.zeros(16, np.float32),
        "conv2": fastconv.init.he_normal((32, 16, 3, 3), rng=rng), "bias2": np.zeros(32, np.float32),
        "linear": fastconv.init.glorot_uniform((10, 32 * 2 * 2), rng=rng), "bias3": np.zeros(10, np.float32),
    }


def forward(net: dict, images: np.ndarray):
    """Class scores (N, 10), and what the backward pass needs."""
    a1 = fastconv.conv2d(images, net["conv1"], net["bias1"], padding="same")
    r1 = np.maximum(a1, 0)
    p1 = fastconv.max_pool2d(r1, 2)                                   # 8x8 -> 4x4
    a2 = fastconv.conv2d(p1, net["conv2"], net["bias2"], padding="same")
    r2 = np.maximum(a2, 0)
    p2 = fastconv.avg_pool2d(r2, 2)                                   # 4x4 -> 2x2
    flat = p2.reshape(len(images), -1)
    scores = flat @ net["linear"].T + net["bias3"]
    return scores, (images, a1, r1, p1, a2, r2, flat)


def loss_and_gradients(net: dict, images: np.ndarray, labels: np.ndarray):
    """Mean cross-entropy of the batch and the gradient of every weight."""
    scores, (x, a1, r1, p1, a2, r2, flat) = forward(net, images)
    shifted = scores - scores.max(axis=1, keepdims=True)
    probabilities = np.exp(shifted)
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    count = len(labels)
    loss = -np.log(probabilities[np.arange(count), labels] + 1e-12).mean()
    d_scores = probabilities
    d_scores[np.arange(count), labels] -= 1
    d_scores /= count
    grads = {"linear": d_scores.T @ flat, "bias3": d_scores.sum(axis=0)}
    d_p2 = (d_scores @ net["linear"]).reshape(r2.shape[0], r2.shape[1], 2, 2)
    d_a2 = fastconv.avg_pool2d_backward(r2.shape, d_p2, 2) * (a2 > 0)
    d_p1, grads["conv2"], grads["bias2"] = fastconv.conv2d_backward(p1, net["conv2"], d_a2, padding="same")
    d_a1 = fastconv.max_pool2d_backward(r1, d_p1, 2) * (a1 > 0)
    _, grads["conv1"], grads["bias1"] = fastconv.conv2d_backward(x, net["conv1"], d_a1, padding="same",
                                                                 needs=(False, True, True))
    return loss, grads


def accuracy(net: dict, images: np.ndarray, labels: np.ndarray) -> float:
    return float((forward(net, images)[0].argmax(axis=1) == labels).mean())


def train(epochs: int = 15, batch: int = 32, learning_rate: float = 0.05, momentum: float = 0.9, seed: int = 0,
          log=print) -> dict:
    """Train and return {"losses": mean loss per epoch, "test_accuracy", "seconds"}."""
    rng = np.random.default_rng(seed)
    train_x, train_y, test_x, test_y = load_data(seed)
    net = make_network(rng)
    velocity = {name: np.zeros_like(value) for name, value in net.items()}
    losses = []
    start = time.perf_counter()
    for epoch in range(epochs):
        order = rng.permutation(len(train_x))
        total = 0.0
        for first in range(0, len(order), batch):
            chosen = order[first:first + batch]
            loss, grads = loss_and_gradients(net, train_x[chosen], train_y[chosen])
            total += loss * len(chosen)
            for name, grad in grads.items():
                velocity[name] = momentum * velocity[name] - learning_rate * grad.astype(np.float32)
                net[name] += velocity[name]
        losses.append(total / len(order))
        log(f"epoch {epoch + 1:2d}: loss {losses[-1]:.4f}, test accuracy {accuracy(net, test_x, test_y):.3f}")
    seconds = time.perf_counter() - start
    return {"losses": losses, "test_accuracy": accuracy(net, test_x, test_y), "seconds": seconds}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=15, help="passes over the training set (default 15)")
    parser.add_argument("--batch", type=int, default=32, help="images per SGD step (default 32)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    result = train(args.epochs, args.batch, seed=args.seed)
    print(f"test accuracy {result['test_accuracy']:.3f} after {args.epochs} epochs in {result['seconds']:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
