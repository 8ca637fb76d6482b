"""Cut the small stratified Fashion-MNIST sample shipped inside the package.

    python scripts/make_bundled_sample.py /work/shared/data/fashion_mnist.npz

Draws ``--train-per-class`` training and ``--test-per-class`` test images of every class
without replacement (seeded), keeps them in their official relative order and writes
``src/psfl/data/bundled/fashion_mnist_sample.npz`` (Keras layout, uint8) with
``np.savez_compressed``. The package limit for this file is 3 MB (3,000,000 bytes):
600 training images per class compress to 3.09 MB, so the default is 570 per class
(5700 train + 1000 test, about 2.95 MB).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parents[1] / "src" / "psfl" / "data" / "bundled" / "fashion_mnist_sample.npz"
LIMIT_BYTES = 3_000_000


def stratified_indices(labels: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    """``per_class`` indices of every class, drawn without replacement, sorted ascending."""
    picks = [rng.choice(np.flatnonzero(labels == c), size=per_class, replace=False)
             for c in np.unique(labels)]
    return np.sort(np.concatenate(picks))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("source", type=Path, help="full fashion_mnist.npz (Keras layout)")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--train-per-class", type=int, default=570)
    ap.add_argument("--test-per-class", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    rng = np.random.default_rng(args.seed)
    with np.load(args.source) as src:
        arrays = {}
        for split, per_class in (("train", args.train_per_class), ("test", args.test_per_class)):
            y = src[f"y_{split}"]
            idx = stratified_indices(y, per_class, rng)
            arrays[f"x_{split}"] = src[f"x_{split}"][idx].astype(np.uint8)
            arrays[f"y_{split}"] = y[idx].astype(np.uint8)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, **arrays)
    size = args.out.stat().st_size
    print(f"wrote {args.out}: {size} bytes, train {arrays['x_train'].shape}, test {arrays['x_test'].shape}")
    if size > LIMIT_BYTES:
        raise SystemExit(f"{args.out} is {size} bytes, over the {LIMIT_BYTES} byte limit: use fewer per class")


if __name__ == "__main__":
    main()
