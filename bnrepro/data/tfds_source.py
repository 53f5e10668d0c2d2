"""MNIST and Fashion-MNIST read from prepared TFDS ArrayRecord datasets with ``tfds.data_source``.

Reading needs no TensorFlow. Preparing tfds's own ``mnist``/``fashion_mnist`` builders does (and internet), so on a
machine without a prepared dataset the error says how to prepare one or to use the offline source instead.
"""

import os

import numpy as np
import tensorflow_datasets as tfds

from bnrepro.data.core import DataError, Split, make_split

TFDS_NAMES = ("mnist", "fashion_mnist")
TFDS_SPLITS = ("train", "test")


def _not_prepared_message(name: str, data_dir: str | os.PathLike[str] | None) -> str:
    where = data_dir if data_dir is not None else "the default tfds data_dir ($TFDS_DATA_DIR or ~/tensorflow_datasets)"
    dir_flag = f" --data_dir={data_dir}" if data_dir is not None else ""
    return (
        f"tfds dataset '{name}' is not prepared in ArrayRecord format in {where}. Preparing tfds's own '{name}' "
        "builder needs TensorFlow and internet: `pip install -e .[tensorflow]`, then "
        f"`tfds build {name} --file_format=array_record{dir_flag}`. "
        "Or use source='offline', which needs neither."
    )


def load_tfds_split(name: str, split: str, data_dir: str | os.PathLike[str] | None = None) -> Split:
    """Reads one split of a prepared tfds dataset into uint8 (N, 28, 28) images and int32 labels.

    Args:
      name: "mnist" or "fashion_mnist".
      split: a tfds split name, e.g. "train" or "test".
      data_dir: the tfds data directory; None for tfds's default.

    Raises:
      ValueError: if ``name`` is not supported.
      DataError: if the dataset is not prepared as ArrayRecord, is empty, or holds unexpected features.
    """
    if name not in TFDS_NAMES:
        raise ValueError(f"Unsupported tfds dataset {name!r}; expected one of {TFDS_NAMES}.")
    try:
        source = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
    except NotImplementedError as e:  # tfds's answer when no random-access (ArrayRecord) files are there.
        raise DataError(_not_prepared_message(name, data_dir)) from e
    what = f"tfds {name} {split}"
    if len(source) == 0:
        raise DataError(f"{what} is empty; re-prepare it (`tfds build {name} --file_format=array_record`).")
    # One index at a time: the batched `__getitems__` fails under tfds.testing.mock_data in tfds 4.9.10.
    examples = [source[i] for i in range(len(source))]
    images = np.stack([example["image"] for example in examples])
    if images.shape[1:] != (28, 28, 1):
        raise DataError(f"{what}: expected images of shape (28, 28, 1), got {images.shape[1:]}.")
    labels = np.array([example["label"] for example in examples])
    return make_split(images[..., 0], labels, what)


def load_tfds(name: str, data_dir: str | os.PathLike[str] | None = None) -> dict[str, Split]:
    """Returns the ``train`` and ``test`` splits of a prepared tfds ``mnist`` or ``fashion_mnist``."""
    return {split: load_tfds_split(name, split, data_dir) for split in TFDS_SPLITS}
