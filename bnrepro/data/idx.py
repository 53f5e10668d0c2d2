"""IDX files (the (Fashion-)MNIST distribution format), plain or gzipped, and the Fashion-MNIST loader.

An IDX file is a big-endian header -- a 4-byte magic number whose third byte is the element type (0x08 for
uint8) and whose fourth byte is the number of dimensions, then one uint32 per dimension -- followed by the
elements in C order.
"""

import gzip
import math
import os
import zlib
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from bnrepro.data.core import DataError, Split, make_split

LABELS_MAGIC = 0x801  # uint8, 1-D.
IMAGES_MAGIC = 0x803  # uint8, 3-D.
FASHION_MNIST_APT_PACKAGE = "dataset-fashion-mnist"
FASHION_MNIST_DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_ENV = "BNREPRO_FASHION_MNIST_DIR"
# Split name -> (images file, labels file), each found with or without a ".gz" suffix.
FASHION_MNIST_FILES: Mapping[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

_GZIP_MAGIC = b"\x1f\x8b"


def _read_idx(path: Path, expected_magic: int) -> np.ndarray:
    """Reads a uint8 IDX file whose magic number must be ``expected_magic``; gzip is detected from the content."""
    raw = path.read_bytes()
    if raw[:2] == _GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (EOFError, gzip.BadGzipFile, zlib.error) as e:
            raise DataError(f"{path}: the gzip stream is truncated or corrupt ({e}); replace the file.") from e
    if len(raw) < 4:
        raise DataError(f"{path}: {len(raw)} bytes is too short for an IDX header; the file is truncated.")
    magic = int.from_bytes(raw[:4], "big")
    if magic != expected_magic:
        raise DataError(
            f"{path}: IDX magic number {magic:#x}, expected {expected_magic:#x} "
            f"({expected_magic & 0xFF}-D uint8); this is not the file it is named as."
        )
    ndim = magic & 0xFF
    header_size = 4 + 4 * ndim
    if len(raw) < header_size:
        raise DataError(
            f"{path}: the IDX header is cut short ({len(raw)} of {header_size} bytes); the file is truncated."
        )
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    data_size = len(raw) - header_size
    if data_size != math.prod(shape):
        raise DataError(
            f"{path}: the header declares shape {shape} ({math.prod(shape)} bytes of data) but the file holds "
            f"{data_size}; it is truncated or corrupt, replace it."
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header_size).reshape(shape).copy()


def read_idx_images(path: str | os.PathLike[str]) -> np.ndarray:
    """Returns the uint8 array of shape (N, rows, cols) stored in an IDX images file (magic 0x803).

    Raises:
      DataError: on a wrong magic number, a truncated file or a corrupt gzip stream.
    """
    return _read_idx(Path(path), IMAGES_MAGIC)


def read_idx_labels(path: str | os.PathLike[str]) -> np.ndarray:
    """Returns the uint8 array of shape (N,) stored in an IDX labels file (magic 0x801).

    Raises:
      DataError: on a wrong magic number, a truncated file or a corrupt gzip stream.
    """
    return _read_idx(Path(path), LABELS_MAGIC)


def _find_file(directory: Path, stem: str) -> Path | None:
    """Returns ``directory/stem`` or ``directory/stem.gz``, whichever exists first, else None."""
    for candidate in (directory / stem, directory / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def fashion_mnist_files(data_dir: str | os.PathLike[str] | None = None) -> dict[str, tuple[Path, Path]]:
    """Locates the four Fashion-MNIST IDX files.

    The folder is ``data_dir`` if given, else ``$BNREPRO_FASHION_MNIST_DIR``, else the folder the Debian package
    ``dataset-fashion-mnist`` installs (``/usr/share/datasets/fashion-mnist``).

    Returns:
      Split name -> (images path, labels path).

    Raises:
      DataError: naming the folder, the missing files, the apt package and the environment variable.
    """
    if data_dir is not None:
        directory, origin = Path(data_dir), "data_dir"
    elif env_dir := os.environ.get(FASHION_MNIST_ENV):
        directory, origin = Path(env_dir), f"${FASHION_MNIST_ENV}"
    else:
        directory, origin = FASHION_MNIST_DEBIAN_DIR, f"the {FASHION_MNIST_APT_PACKAGE} default"
    found = {stem: _find_file(directory, stem) for stems in FASHION_MNIST_FILES.values() for stem in stems}
    missing = [f"{stem}[.gz]" for stem, path in found.items() if path is None]
    if missing:
        raise DataError(
            f"Fashion-MNIST IDX files not found in {directory} (from {origin}): missing {', '.join(missing)}. "
            f"Install them with `apt-get install {FASHION_MNIST_APT_PACKAGE}` (into {FASHION_MNIST_DEBIAN_DIR}), "
            f"or set {FASHION_MNIST_ENV} (or pass data_dir) to a folder holding them."
        )
    return {split: (found[images], found[labels]) for split, (images, labels) in FASHION_MNIST_FILES.items()}


def load_fashion_mnist(data_dir: str | os.PathLike[str] | None = None) -> dict[str, Split]:
    """Returns the Fashion-MNIST ``train`` and ``test`` splits read from IDX files.

    Args:
      data_dir: folder holding the IDX files; see :func:`fashion_mnist_files` for the default.

    Raises:
      DataError: if a file is missing, truncated, or images and labels disagree.
    """
    return {
        split: make_split(read_idx_images(images), read_idx_labels(labels), f"fashion_mnist {split} ({images.parent})")
        for split, (images, labels) in fashion_mnist_files(data_dir).items()
    }
