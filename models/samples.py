"""Write the small MNIST samples packaged with ttcompile (calibration and demo data).

    python -m ttcompile.models.samples [--out-dir models]

- ``mnist_calib.npz``: 1000 images of MNIST val, 100 per class (seeded random pick);
- ``mnist_test_sample.npz``: 2000 images of MNIST test (seeded random pick, natural class mix).
Both hold ``x`` float32 (N, 1, 28, 28) in [0, 1] and ``y`` int64 (N,), saved compressed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from ttcompile.atomic import atomic_path
from ttcompile.models.data import Dataset, load_mnist

CALIB_PER_CLASS = 100
TEST_SAMPLE = 2000


def stratified_indices(y: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices with ``per_class`` random picks of every label in ``y``."""
    picks = [rng.choice(np.flatnonzero(y == c), per_class, replace=False) for c in np.unique(y)]
    return np.sort(np.concatenate(picks))


def save_sample(ds: Dataset, idx: np.ndarray, path: Path) -> None:
    with atomic_path(path, parents=True) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, x=ds.x[idx], y=ds.y[idx])
    print(f"wrote {path}: {len(idx)} images, {path.stat().st_size / 1e6:.2f} MB")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ttcompile.models.samples", description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=Path(__file__).parent)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    val, test = load_mnist("val"), load_mnist("test")
    save_sample(val, stratified_indices(val.y, CALIB_PER_CLASS, rng), args.out_dir / "mnist_calib.npz")
    test_idx = np.sort(rng.choice(len(test.y), TEST_SAMPLE, replace=False))
    save_sample(test, test_idx, args.out_dir / "mnist_test_sample.npz")
    return 0


if __name__ == "__main__":
    sys.exit(main())
