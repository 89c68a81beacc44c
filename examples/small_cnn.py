"""A small CNN forward pass built only from fastconv operations, run on every available backend.

    conv 3×3 (3 → 16, same) → ReLU → max-pool 2×2 → conv 3×3 (16 → 32, same) → ReLU
    → average-pool 2×2 → flatten → fully connected (32·H/4·W/4 → 10)

The fully connected layer is a convolution whose kernel covers the whole feature map, so every
multiply-add of the network goes through fastconv. Weights come from ``fastconv.init`` (He
normal for the ReLU layers, Glorot uniform for the classifier), the input is synthetic. The
network runs once per available conv2d backend; each result is checked against the ``naive``
backend's and the best-of-``--repeat`` time is printed.

    python examples/small_cnn.py                      # 8 images of 32×32
    python examples/small_cnn.py --batch 1 --size 8   # a quick smoke run
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import fastconv


def make_network(size: int, rng: np.random.Generator) -> dict:
    """Weights of the network for size×size RGB inputs (float32)."""
    return {
        "conv1": fastconv.init.he_normal((16, 3, 3, 3), rng=rng), "bias1": np.zeros(16, np.float32),
        "conv2": fastconv.init.he_normal((32, 16, 3, 3), rng=rng), "bias2": np.zeros(32, np.float32),
        "fc": fastconv.init.glorot_uniform((10, 32, size // 4, size // 4), rng=rng),
        "fc_bias": np.zeros(10, np.float32),
    }


def forward(images: np.ndarray, net: dict, backend: str) -> np.ndarray:
    """Class scores (N, 10) for images (N, 3, size, size)."""
    hidden = fastconv.conv2d(images, net["conv1"], net["bias1"], padding="same", backend=backend)
    hidden = fastconv.max_pool2d(np.maximum(hidden, 0), 2)
    hidden = fastconv.conv2d(hidden, net["conv2"], net["bias2"], padding="same", backend=backend)
    hidden = fastconv.avg_pool2d(np.maximum(hidden, 0), 2)
    scores = fastconv.conv2d(hidden, net["fc"], net["fc_bias"], backend=backend)  # (N, 10, 1, 1)
    return scores.reshape(len(images), -1)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8, help="images per forward pass (default 8)")
    parser.add_argument("--size", type=int, default=32, help="image side, a multiple of 4 (default 32)")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per backend (default 3)")
    args = parser.parse_args(argv)
    if args.size < 4 or args.size % 4:
        parser.error(f"--size must be a positive multiple of 4, got {args.size}")

    rng = np.random.default_rng(0)
    net = make_network(args.size, rng)
    images = rng.standard_normal((args.batch, 3, args.size, args.size), dtype=np.float32)
    reference = forward(images, net, "naive")

    print(f"small CNN, {args.batch} images of {args.size}×{args.size}, float32; best of {args.repeat} runs")
    print(f"{'backend':<12}{'time (ms)':>12}{'max rel. diff vs naive':>26}")
    disagreements = 0
    for row in fastconv.list_backends():
        if not row.available:
            print(f"{row.name:<12}{'unavailable':>12}   {row.reason}")
            continue
        try:
            scores = forward(images, net, row.name)  # also compiles / plans: not timed
        except ValueError as error:  # the backend declines one of the layers
            print(f"{row.name:<12}{'declined':>12}   {error}")
            continue
        best = float("inf")
        for _ in range(args.repeat):
            start = time.perf_counter()
            forward(images, net, row.name)
            best = min(best, time.perf_counter() - start)
        difference = np.abs(scores - reference).max() / np.abs(reference).max()
        agrees = difference <= 1e-4
        disagreements += not agrees
        print(f"{row.name:<12}{best * 1e3:>12.2f}{difference:>26.1e}{'' if agrees else '   DISAGREES'}")
    print(f"predicted classes: {np.argmax(reference, axis=1).tolist()}")
    return 1 if disagreements else 0


if __name__ == "__main__":
    raise SystemExit(main())
