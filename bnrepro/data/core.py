"""Types, checks and the download cache shared by the dataset loaders.

Every loader returns images as uint8 arrays of shape (N, 28, 28) and labels as int32 arrays of shape (N,)
with values in 0..9, wrapped in a :class:`Split`. Downloaded datasets live in one cache directory
(:func:`resolve_cache_dir`).
"""

import os
from pathlib import Path
from typing import NamedTuple

import numpy as np

IMAGE_SHAPE = (28, 28)
NUM_CLASSES = 10
CACHE_DIR_ENV = "BNREPRO_DATA_DIR"


class DataError(RuntimeError):
    """A dataset is missing, corrupt or not what was expected; the message says what to do."""


class Split(NamedTuple):
    """One split of an image-classification dataset."""

    images: np.ndarray  # uint8 (N, 28, 28)
    labels: np.ndarray  # int32 (N,)


class Splits(NamedTuple):
    """The splits the trainer uses; ``validation`` is None unless a hold-out was asked for."""

    train: Split
    test: Split
    validation: Split | None


def labels_to_int32(labels: np.ndarray, what: str) -> np.ndarray:
    """Returns integer class labels as int32 after checking they form a 1-D array with values in 0..9.

    Args:
      labels: the labels, any integer dtype.
      what: a description used in error messages, e.g. "mnist train labels".

    Raises:
      DataError: if ``labels`` is not 1-D, not integer, or out of range.
    """
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{what}: expected 1-D integer labels, got {labels.dtype} {labels.shape}.")
    if labels.size and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        raise DataError(f"{what}: labels must lie in 0..{NUM_CLASSES - 1}, got {labels.min()}..{labels.max()}.")
    return labels.astype(np.int32)


def make_split(images: np.ndarray, labels: np.ndarray, what: str) -> Split:
    """Builds a :class:`Split` after checking images are uint8 (N, 28, 28) and labels match them.

    Args:
      images: uint8 images of shape (N, 28, 28).
      labels: N integer labels in 0..9, converted to int32.
      what: a description used in error messages, e.g. "mnist train".

    Raises:
      DataError: if the dtypes, shapes, counts or label values are wrong.
    """
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != IMAGE_SHAPE:
        raise DataError(f"{what}: expected uint8 images of shape (N, 28, 28), got {images.dtype} {images.shape}.")
    labels = labels_to_int32(labels, f"{what} labels")
    if labels.shape[0] != images.shape[0]:
        raise DataError(f"{what}: {images.shape[0]} images but {labels.shape[0]} labels.")
    return Split(images, labels)


def _cache_dir_origin(cache_dir: str | os.PathLike[str] | None) -> tuple[Path, str, str]:
    """Returns the cache directory, where it came from (for messages) and how to choose another one."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser(), f"cache_dir={cache_dir}", "Pass a writable directory as cache_dir."
    if env_dir := os.environ.get(CACHE_DIR_ENV):
        return (
            Path(env_dir).expanduser(),
            f"{CACHE_DIR_ENV}={env_dir}",
            f"Point {CACHE_DIR_ENV} at a writable directory.",
        )
    if xdg_cache := os.environ.get("XDG_CACHE_HOME"):
        directory = Path(xdg_cache) / "bnrepro"
        return (
            directory,
            f"XDG_CACHE_HOME={xdg_cache} (data cache {directory})",
            f"Point {CACHE_DIR_ENV} (or XDG_CACHE_HOME) at a writable directory.",
        )
    directory = Path.home() / ".cache" / "bnrepro"
    return directory, f"the default data cache {directory}", f"Point {CACHE_DIR_ENV} at a writable directory."


def resolve_cache_dir(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Returns the cache directory: ``cache_dir`` if given, else ``$BNREPRO_DATA_DIR``, else
    ``$XDG_CACHE_HOME/bnrepro`` (``~/.cache/bnrepro`` when XDG_CACHE_HOME is unset)."""
    return _cache_dir_origin(cache_dir)[0]


def make_cache_dir(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Creates the cache directory of :func:`resolve_cache_dir` if needed and returns it.

    Raises:
      DataError: if it cannot be created or is not writable, naming the variable (or argument) it came from.
    """
    directory, origin, fix = _cache_dir_origin(cache_dir)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        problem = str(e)
    else:
        if os.access(directory, os.W_OK | os.X_OK):
            return directory
        problem = f"{directory} is not writable"
    raise DataError(f"{origin}: cannot create the data cache there ({problem}). {fix}")
