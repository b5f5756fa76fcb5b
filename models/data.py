"""Datasets for training, calibration and evaluation, as in-memory numpy arrays.

Specs understood by ``load_dataset``:
- a path to an ``.npz`` file with ``x`` (required) and ``y`` (optional), see ``load_npz``;
- ``mnist`` (= ``mnist:test``), ``mnist:train`` (50k), ``mnist:val`` (10k), ``mnist:test`` (10k):
  ``x`` is (N, 1, 28, 28) float32 in [0, 1]; pass ``image_shape=(784,)`` for a flat-input model;
- ``digits`` (= ``digits:test``), ``digits:train``: scikit-learn's 8x8 digits, (N, 1, 8, 8) float32 in
  [0, 1], a fixed stratified 75/25 split.
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from math import prod
from pathlib import Path

import numpy as np

from ttcompile.errors import UserError
from ttcompile.models import mnist

EMBEDDED = ("lenet5_mnist.onnx", "mnist_calib.npz", "mnist_test_sample.npz")
DIGITS_SPLITS = ("train", "test")


@dataclass
class Dataset:
    """Model inputs ``x`` (float32, (N, ...)) and optional int64 labels ``y`` (N,)."""

    x: np.ndarray
    y: np.ndarray | None
    name: str


MAX_DATA_BYTES = 1 << 30  # all arrays of one .npz together, as declared in their headers


def check_npz_sizes(path: Path) -> None:
    """Before loading: every array's header is readable, declares at most what its zip entry holds, and
    all declared arrays together stay within MAX_DATA_BYTES (a small compressed file can expand to GBs)."""
    if not zipfile.is_zipfile(path):
        return  # np.load tells a plain .npy or garbage apart below
    total = 0
    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                with zf.open(info) as fh:
                    version = np.lib.format.read_magic(fh)
                    fmt = np.lib.format
                    read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
                    shape, _, dtype = read(fh)
                    if dtype.hasobject:
                        raise UserError(f"{path}: unreadable array {info.filename!r} (Python objects; only "
                                        "numbers are read)")
                    declared = prod(shape) * dtype.itemsize
                    if declared > info.file_size:
                        raise UserError(f"{path}: array {info.filename!r} declares shape {shape} "
                                        f"({declared} bytes) but holds {info.file_size} bytes")
                    total += declared
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, NotImplementedError) as exc:
        raise UserError(f"{path}: not an .npz file ({exc})") from None
    if total > MAX_DATA_BYTES:
        raise UserError(f"{path}: its arrays take {total / 2**30:.2f} GiB uncompressed, more than the "
                        f"{MAX_DATA_BYTES / 2**30:g} GiB limit")


def load_npz(path: str | os.PathLike) -> Dataset:
    """Load and validate an ``.npz`` with ``x`` (numeric, N >= 1 samples) and optional ``y`` (int, (N,))."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    check_npz_sizes(path)
    try:
        archive = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise UserError(f"{path}: not an .npz file ({exc})") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise UserError(f"{path}: holds a single array, not an .npz archive with 'x' (and 'y')")
    with archive:
        try:
            arrays = {key: archive[key] for key in archive.files}
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
            raise UserError(f"{path}: unreadable array in the archive ({exc})") from exc
    if "x" not in arrays:
        raise UserError(f"{path}: no array named 'x' (found: {', '.join(arrays) or 'none'})")
    x, y = arrays["x"], arrays.get("y")
    if not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
        raise UserError(f"{path}: 'x' must be numeric, got dtype {x.dtype}")
    if x.ndim == 0 or x.size == 0:
        raise UserError(f"{path}: 'x' is empty (shape {x.shape})")
    x = x.astype(np.float32)
    if not np.isfinite(x).all():
        raise UserError(f"{path}: 'x' has NaN or infinite values")
    if y is not None:
        if not np.issubdtype(y.dtype, np.integer):
            raise UserError(f"{path}: labels 'y' must be integers, got dtype {y.dtype}")
        if y.ndim != 1 or len(y) != len(x):
            raise UserError(f"{path}: 'y' must have shape ({len(x)},) to match 'x', got {y.shape}")
        y = y.astype(np.int64)
    return Dataset(x=x, y=y, name=path.stem)


def load_mnist(split: str = "test") -> Dataset:
    """Real MNIST ``split`` (train|val|test): x (N, 1, 28, 28) float32 in [0, 1], y int64 (N,).

    The first call downloads and caches it (see ``ttcompile.models.mnist``).
    """
    x, y = mnist.load_split(split)
    return Dataset(x=x, y=y, name=f"mnist:{split}")


def load_digits(split: str = "test") -> Dataset:
    """scikit-learn 8x8 digits ``split`` (train|test): x (N, 1, 8, 8) float32 in [0, 1], y int64 (N,).

    The split is stratified 75/25 with a fixed seed, so it is the same on every call.
    """
    if split not in DIGITS_SPLITS:
        raise UserError(f"unknown digits split {split!r}: choose one of {', '.join(DIGITS_SPLITS)}")
    try:
        from sklearn.datasets import load_digits as sk_load_digits
        from sklearn.model_selection import train_test_split
    except ImportError as exc:
        raise UserError("the digits dataset needs scikit-learn: pip install 'ttcompile[train]'") from exc
    bunch = sk_load_digits()
    x = (bunch.images / 16.0).astype(np.float32)[:, None]
    y = bunch.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.25, stratify=y, random_state=0)
    x, y = (x_train, y_train) if split == "train" else (x_test, y_test)
    return Dataset(x=x, y=y, name=f"digits:{split}")


LOADERS = {"mnist": load_mnist, "digits": load_digits}


def dataset(spec: str | Dataset) -> Dataset:
    """``spec`` loaded (``load_dataset``), or the Dataset itself."""
    return spec if isinstance(spec, Dataset) else load_dataset(spec)


def load_dataset(spec: str, *, image_shape: tuple[int, ...] | None = None) -> Dataset:
    """Load ``spec`` (an .npz path, or ``name[:split]``, see the module docstring).

    ``image_shape`` reshapes every sample, e.g. ``(784,)`` for a flat-input model or ``(1, 28, 28)``
    for flat pixels stored in an .npz; its size must equal the sample size.
    """
    name, _, split = spec.partition(":")
    if name in LOADERS:
        data = LOADERS[name](split) if split else LOADERS[name]()
    elif spec.endswith(".npz") or Path(spec).is_file():
        data = load_npz(spec)
    else:
        raise UserError(f"unknown dataset {spec!r}: give an .npz path, or one of "
                        "mnist[:train|val|test], digits[:train|test]")
    if image_shape is not None:
        image_shape = tuple(image_shape)
        sample = data.x.shape[1:]
        if int(np.prod(sample)) != int(np.prod(image_shape)):
            raise UserError(f"{data.name}: samples of shape {sample} cannot be reshaped to {image_shape}")
        data.x = data.x.reshape(len(data.x), *image_shape)
    return data


def embedded(name: str) -> Path:
    """Path of a file packaged with ttcompile.models: one of ``EMBEDDED``."""
    if name not in EMBEDDED:
        raise UserError(f"no embedded file {name!r}: choose one of {', '.join(EMBEDDED)}")
    path = Path(__file__).parent / name
    if not path.is_file():
        raise UserError(f"embedded file {name} is missing from the installation ({path})")
    return path
