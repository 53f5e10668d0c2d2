"""A fake, learnable MNIST written where the offline loader caches the real one (`mnist.npz`), so that tests
train on it without downloading anything."""

from pathlib import Path

import numpy as np
import pytest

import bnrepro.data
from bnrepro.data import mnist_offline


def learnable_images(labels: np.ndarray, seed: int) -> np.ndarray:
    """uint8 (N, 28, 28) images: a fixed random pattern per class with 30% of the pixels replaced by noise."""
    rng = np.random.default_rng(seed)
    prototypes = np.random.default_rng(1234).integers(0, 256, (10, 28, 28), dtype=np.uint8)
    noise = rng.integers(0, 256, (len(labels), 28, 28), dtype=np.uint8)
    return np.where(rng.random((len(labels), 28, 28)) < 0.3, noise, prototypes[labels])


def write_fake_mnist(directory: Path, sizes: dict[str, int]) -> Path:
    """An `mnist.npz` cache as the offline loader writes it, with learnable fake data."""
    rng = np.random.default_rng(0)
    arrays = {}
    for i, (name, size) in enumerate(sizes.items()):
        labels = rng.integers(0, 10, size).astype(np.uint8)
        arrays[f"{name}_images"], arrays[f"{name}_labels"] = learnable_images(labels, seed=i), labels
    directory.mkdir(parents=True, exist_ok=True)
    np.savez(directory / mnist_offline.CACHE_FILENAME, **arrays)
    return directory


SMALL_SIZES = {"train": 1_000, "valid": 200, "test": 300}  # 1,200 + 300 examples


def write_small_fake_mnist(directory: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """`SMALL_SIZES`' fake MNIST in `directory`, accepted by `load_dataset` in this process while `monkeypatch` lasts
    (it checks the real dataset's counts)."""
    counts = {"train": SMALL_SIZES["train"] + SMALL_SIZES["valid"], "test": SMALL_SIZES["test"]}
    monkeypatch.setattr(bnrepro.data, "EXPECTED_COUNTS", counts)
    return write_fake_mnist(directory, SMALL_SIZES)
