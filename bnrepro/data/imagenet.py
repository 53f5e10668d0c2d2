"""ImageNet (ILSVRC-2012) for BN-Inception, read without TensorFlow: tfds ArrayRecord files through grain.

Sec. 4.2 trains on ImageNet with the Inception input pipeline; this module rebuilds it from light pieces:

* Source: ``tfds.data_source('imagenet2012', split=...)`` over a dataset prepared once in ArrayRecord format
  (:func:`open_split`). Each record is ``{'image': uint8 (H, W, 3), 'label': int, 'file_name': bytes}``: tfds
  decodes the stored JPEG itself, in NumPy, with OpenCV when installed and otherwise with PIL (Pillow, already
  here as a dependency of matplotlib), so no TensorFlow is involved in reading. Under
  ``tfds.testing.mock_data`` the source instead yields random uint8 images of random small sizes, undecoded.
  Preparing does need TensorFlow (see :func:`open_split`'s error).
* Training (:func:`train_dataset`): an epoch order from :class:`ShuffledOrder` (Sec. 4.2.1's within-shard
  shuffling, the baseline's shard-order-only shuffling, or a global shuffle), then per example Inception's
  augmentation (`bnrepro.data.augmentation.TrainPreprocess`: random-size crop, resize to ``image_size``, random
  flip, optional photometric distortion, per-channel normalization); batches of ``batch_size`` examples per
  process, the incomplete last one dropped.
* Evaluation (:func:`eval_dataset`): resize the shorter side to ``image_size / 0.875`` and take the central
  ``image_size`` square (`bnrepro.data.image_decoding.EvalPreprocess`, single-crop evaluation, Sec. 4.2), every
  example exactly once, padded with masked examples so that every process runs the same number of full batches.

Both are deterministic given the seed (augmentation randomness is keyed by the example's position in the
global stream, not by thread timing) and return grain ``IterDataset``s whose iterators checkpoint with
``get_state()`` / ``set_state()``. They read in this process (reader threads, which share the GIL) or, with
``worker_count``, in grain worker processes that each assemble whole batches: the batches are the same either
way (:func:`read_batches`). :func:`train_iterator`, :func:`eval_iterator` and :func:`num_examples` are
the trainer's interface.
"""

from __future__ import annotations

import dataclasses
import functools
import operator
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from absl import flags

from bnrepro.data.augmentation import DISTORTIONS, ColorJitter, TrainPreprocess
from bnrepro.data.core import DataError
from bnrepro.data.image_decoding import CROP_FRACTION, MEAN_RGB, STDDEV_RGB, EvalPreprocess

if TYPE_CHECKING:
    import grain

DATASET_NAME = "imagenet2012"
# What tfds's imagenet2012 builder reads from its manual_dir (by default <data_dir>/downloads/manual/).
MANUAL_FILES = ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar")
# Training examples per tfds imagenet2012 file shard (1,281,167 over 1024 files), used as the shard size when
# the source does not say how its files are split (sub-splits such as 'train[:10%]', mock data).
DEFAULT_SHARD_SIZE = 1251
SHUFFLE_MODES = ("global", "within_shard", "shard_order")
# grain and PIL are imported where a pipeline is built or an image resized: the trainer's other datasets (and the
# config check, which reads the names above) do not pay their ~0.2 s of imports at start-up.


# --- Source ----------------------------------------------------------------------------------------------------


def _tfds():
    """tensorflow_datasets, imported when ImageNet is read (its ~0.5 s import is not paid by every command)."""
    import tensorflow_datasets

    return tensorflow_datasets


def _resolved_data_dir(data_dir: str | os.PathLike[str] | None) -> str:
    return os.fspath(data_dir) if data_dir is not None else _tfds().core.constants.DATA_DIR


def _not_prepared_message(data_dir: str | os.PathLike[str] | None) -> str:
    root = _resolved_data_dir(data_dir)
    manual_dir = os.path.join(root, "downloads", "manual")
    present = [name for name in MANUAL_FILES if os.path.isfile(os.path.join(manual_dir, name))]
    missing = [name for name in MANUAL_FILES if name not in present]
    if missing:
        where = (
            f"Download {' and '.join(missing)} from https://image-net.org/download-images (registration needed) "
            f"and put them in tfds's manual_dir, {manual_dir}/ (or pass --manual_dir=DIR to `tfds build`)."
        )
    else:
        where = f"The manual download is in place ({' and '.join(MANUAL_FILES)} in {manual_dir}/)."
    return (
        f"ImageNet ('{DATASET_NAME}') is not prepared in ArrayRecord format in {root}. imagenet2012 is a manual "
        f"download: {where} Then prepare it once (needs TensorFlow and about 300 GB of disk; reading it afterwards "
        "needs neither TensorFlow nor the tar files): `pip install -e .[tensorflow]`, then "
        f"`tfds build {DATASET_NAME} --file_format=array_record --data_dir={root}` (equivalently "
        f"`tfds.builder('{DATASET_NAME}', data_dir=...).download_and_prepare(file_format='array_record')`)."
    )


def open_split(split: str, data_dir: str | os.PathLike[str] | None = None) -> Sequence[Mapping[str, Any]]:
    """Opens a prepared imagenet2012 split as a random-access source of decoded examples.

    Args:
      split: a tfds split, e.g. "train", "validation" or "train[:1%]".
      data_dir: the tfds data directory; None for tfds's default ($TFDS_DATA_DIR or ~/tensorflow_datasets).

    Returns:
      A sequence whose items are ``{'image': uint8 (H, W, 3), 'label': int, 'file_name': bytes}``; the JPEG is
      decoded when an item is read (by tfds, with OpenCV or PIL).

    Raises:
      DataError: if the dataset is not prepared as ArrayRecord in ``data_dir`` (the message says where the manual
        download goes and how to prepare it), or the split is empty.
    """
    try:
        source = _tfds().data_source(DATASET_NAME, split=split, data_dir=data_dir, download=False)
    except NotImplementedError as e:  # tfds's answer when no random-access (ArrayRecord) files are there.
        raise DataError(_not_prepared_message(data_dir)) from e
    if len(source) == 0:
        raise DataError(f"tfds {DATASET_NAME} {split} is empty; re-prepare it. {_not_prepared_message(data_dir)}")
    return source


def num_examples(split: str, data_dir: str | os.PathLike[str] | None = None) -> int:
    """Number of examples in a prepared imagenet2012 split (1,281,167 for "train", 50,000 for "validation")."""
    return len(open_split(split, data_dir))


# --- Example order ---------------------------------------------------------------------------------------------


def epoch_order(shard_lengths: Sequence[int], mode: str, seed: int, epoch: int) -> np.ndarray:
    """The source indices of one training epoch, in the order they are read.

    The source is the concatenation of shards (tfds's files) of ``shard_lengths`` consecutive examples. Modes:

    * ``"shard_order"``: the order of the shards is shuffled each epoch, the examples inside a shard are read in
      their stored order, so the same examples keep landing in a mini-batch together: the Inception baseline, as
      Sec. 4.2.1 implies it was.
    * ``"within_shard"``: as above, and the examples inside each shard are shuffled too, each epoch: Sec. 4.2.1's
      "shuffle training examples more thoroughly... within-shard shuffling" (about +1% accuracy in the paper).
    * ``"global"``: a uniformly random permutation of the whole split each epoch; more thorough than the paper.

    A given (seed, epoch) always gives the same order.
    """
    if mode not in SHUFFLE_MODES:
        raise ValueError(f"Unknown shuffle mode {mode!r}; expected one of {SHUFFLE_MODES}.")
    rng = np.random.default_rng([seed, epoch])
    total = int(sum(shard_lengths))
    if mode == "global":
        return rng.permutation(total)
    starts = np.cumsum([0, *shard_lengths[:-1]])
    shards = [np.arange(start, start + length) for start, length in zip(starts, shard_lengths)]
    if mode == "within_shard":
        shards = [rng.permutation(shard) for shard in shards]
    return np.concatenate([shards[i] for i in rng.permutation(len(shards))])


class ShuffledOrder:
    """The training stream as a random-access sequence: position -> source index, epoch after epoch.

    Position ``p`` is example ``p % epoch_size`` of :func:`epoch_order` for epoch ``p // epoch_size``. The orders
    of the current and the neighbouring epoch are cached (reader threads straddle epoch boundaries); the cache is
    replaced, never mutated, so concurrent readers are safe.
    """

    def __init__(self, shard_lengths: Sequence[int], mode: str, seed: int, length: int = sys.maxsize):
        if mode not in SHUFFLE_MODES:
            raise ValueError(f"Unknown shuffle mode {mode!r}; expected one of {SHUFFLE_MODES}.")
        self.shard_lengths = tuple(int(n) for n in shard_lengths)
        self.epoch_size = sum(self.shard_lengths)
        self.mode, self.seed, self.length = mode, seed, length
        self._cache: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, position: int) -> int:
        if not 0 <= position < self.length:
            raise IndexError(f"position {position} outside the stream of {self.length}")
        epoch, index = divmod(position, self.epoch_size)
        cache = self._cache
        order = cache.get(epoch)
        if order is None:
            order = epoch_order(self.shard_lengths, self.mode, self.seed, epoch)
            self._cache = {**{e: o for e, o in cache.items() if abs(e - epoch) <= 1}, epoch: order}
        return int(order[index])


def shard_lengths(source: Sequence[Any], shard_size: int | None = None) -> list[int]:
    """How ``source`` splits into shards: its files' lengths, if tfds says and ``shard_size`` is None; else blocks.

    Blocks are ``shard_size`` (default :data:`DEFAULT_SHARD_SIZE`) consecutive examples, the last one shorter.
    """
    total = len(source)
    if shard_size is None:
        try:  # A tfds ArrayRecordDataSource over a whole split knows its files.
            lengths = list(source.dataset_info.splits[source.split].shard_lengths)
            if sum(lengths) == total:
                return lengths
        except (AttributeError, KeyError, TypeError, ValueError):
            pass
        shard_size = DEFAULT_SHARD_SIZE
    if shard_size <= 0:
        raise ValueError(f"shard_size must be positive, got {shard_size}.")
    return [min(shard_size, total - start) for start in range(0, total, shard_size)]


# --- Pipelines -------------------------------------------------------------------------------------------------


def _process(process_index: int | None, process_count: int | None) -> tuple[int, int]:
    if process_index is None or process_count is None:
        import jax  # Only when asked: the data layer otherwise runs without touching a JAX backend.

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index must lie in [0, {process_count}), got {process_index}.")
    return process_index, process_count


def _check_seed(seed: int) -> None:
    if not 0 <= seed < 2**32:
        raise ValueError(f"seed must be an int in [0, 2**32), got {seed!r}.")


def read_batches(
    examples: grain.MapDataset,
    batch_size: int,
    read_options: grain.ReadOptions | None = None,
    worker_count: int = 0,
) -> grain.IterDataset:
    """Batches of ``batch_size`` consecutive ``examples`` (the incomplete last one dropped), read ahead.

    With ``worker_count`` 0 this process reads the examples with ``read_options``' threads (grain's defaults if
    None), which share the GIL: about one core's worth of decoding and augmentation. Otherwise batch ``k`` is
    assembled whole by grain worker process ``k % worker_count`` (``mp_prefetch``), each reading with
    ``read_options``' threads and a buffer of as many examples, in whole batches, and the batches come back in
    order: the same batches as in this process. Either way the iterator checkpoints with ``get_state()`` /
    ``set_state()``; close it (``iterator.close()``) to stop the workers when it is not read to its end.
    """
    import grain

    read_options = read_options or grain.ReadOptions()
    if worker_count == 0:
        return examples.to_iter_dataset(read_options).batch(batch_size, drop_remainder=True)
    if not flags.FLAGS.is_parsed():  # grain reads its absl flags to start workers: outside absl.app.run (tests,
        flags.FLAGS.mark_as_parsed()  # notebooks, scripts) they keep their defaults
    per_worker = grain.ReadOptions(
        num_threads=read_options.num_threads,
        prefetch_buffer_size=-(-read_options.prefetch_buffer_size // batch_size),
    )
    return (
        examples.batch(batch_size, drop_remainder=True)
        .to_iter_dataset(per_worker)
        .mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
    )


def train_dataset(
    source: Sequence[Mapping[str, Any]],
    *,
    batch_size: int,
    seed: int,
    image_size: int = 224,
    shuffle: str = "within_shard",
    shard_size: int | None = None,
    distortion: str | ColorJitter | None = "reduced",
    mean: tuple[float, float, float] = MEAN_RGB,
    std: tuple[float, float, float] = STDDEV_RGB,
    dtype: Any = np.float32,
    num_epochs: int | None = None,
    start_batch: int = 0,
    process_index: int | None = None,
    process_count: int | None = None,
    read_options: grain.ReadOptions | None = None,
    worker_count: int = 0,
) -> grain.IterDataset:
    """The training pipeline: batches ``{'image': dtype (B, S, S, 3), 'label': int32 (B,)}`` for this process.

    All processes walk the same global stream (:class:`ShuffledOrder` with ``seed``) and process ``i`` of ``n``
    takes its positions ``i, i + n, i + 2n, ...``; the augmentation of an example is keyed by ``seed`` and its
    global position. So the global batch (all processes' batches together) does not depend on the number of
    processes, and a run is reproducible from its seed.

    Args:
      source: a random-access source of ``{'image': uint8 (H, W, 3), 'label': int}`` (see :func:`open_split`).
      batch_size: examples per batch on this process (the trainer shards it over its local devices).
      seed: in [0, 2**32); fixes the example order and all augmentation.
      image_size: side S of the square output images.
      shuffle: "within_shard" (Sec. 4.2.1, the accelerated runs), "shard_order" (the Inception baseline) or
        "global"; see :func:`epoch_order`.
      shard_size: shard size for the shuffle; None for the dataset's own files (see :func:`shard_lengths`).
      distortion: "none", "reduced" (Sec. 4.2.1) or "full" (see :data:`DISTORTIONS`), or a :class:`ColorJitter`.
      mean, std: per-channel normalization, for pixels scaled to [0, 1].
      dtype: image dtype, e.g. ``np.float32`` or ``jnp.bfloat16``.
      num_epochs: None to repeat forever (reshuffled each epoch); else the stream stops after that many epochs,
        cut to a whole number of global batches so every process yields the same number of batches.
      start_batch: the number of batches to skip: a run resumed at step T starts at T. Every batch is a function
        of the seed and its position only, so skipping equals drawing them (no iterator state to checkpoint).
      process_index, process_count: this process's place; None for ``jax.process_index()/process_count()``.
      read_options: grain's reader threads and prefetch buffer (grain's defaults if None: 16 threads; PIL
        releases the GIL while decoding and resizing), in this process or in each worker.
      worker_count: grain worker processes reading the batches; 0 reads them in this process (see
        :func:`read_batches`). The batches do not depend on it.

    Returns:
      A grain ``IterDataset``; ``iter()`` on it gives an iterator with ``get_state()`` / ``set_state()``.
    """
    _check_seed(seed)
    if start_batch < 0:
        raise ValueError(f"start_batch must be >= 0, got {start_batch}.")
    if len(source) == 0:
        raise DataError("The training source is empty.")
    process_index, process_count = _process(process_index, process_count)
    jitter = DISTORTIONS[distortion] if isinstance(distortion, str) else distortion
    global_batch = batch_size * process_count
    lengths = shard_lengths(source, shard_size)
    if num_epochs is None:
        length = sys.maxsize
    else:
        length = num_epochs * sum(lengths) // global_batch * global_batch
    if length == 0:
        raise DataError(f"{num_epochs} epoch(s) of {sum(lengths)} examples hold no global batch of {global_batch}.")
    preprocess = TrainPreprocess(image_size=image_size, color_jitter=jitter, mean=mean, std=std, dtype=dtype)
    import grain

    stream = (
        grain.MapDataset.source(ShuffledOrder(lengths, shuffle, seed, length))
        .map(functools.partial(operator.getitem, source))
        .random_map(preprocess, seed=seed)
    )
    return read_batches(
        stream[process_index::process_count][start_batch * batch_size :], batch_size, read_options, worker_count
    )


@dataclasses.dataclass(frozen=True)
class _EvalExample:
    """Position in the padded evaluation stream -> preprocessed example with ``mask``, or a masked zero example."""

    source: Sequence[Mapping[str, Any]]
    preprocess: EvalPreprocess

    def __call__(self, index: int) -> dict[str, np.ndarray]:
        if index < len(self.source):
            return {**self.preprocess(self.source[index]), "mask": np.bool_(True)}
        size = self.preprocess.image_size
        return {
            "image": np.zeros((size, size, 3), self.preprocess.dtype),
            "label": np.int32(0),
            "mask": np.bool_(False),
        }


def eval_dataset(
    source: Sequence[Mapping[str, Any]],
    *,
    batch_size: int,
    image_size: int = 224,
    crop_fraction: float = CROP_FRACTION,
    mean: tuple[float, float, float] = MEAN_RGB,
    std: tuple[float, float, float] = STDDEV_RGB,
    dtype: Any = np.float32,
    process_index: int | None = None,
    process_count: int | None = None,
    read_options: grain.ReadOptions | None = None,
    worker_count: int = 0,
) -> grain.IterDataset:
    """The evaluation pipeline: every example once, as ``{'image', 'label', 'mask': bool (B,)}`` batches.

    Process ``i`` of ``n`` takes examples ``i, i + n, ...`` in stored order. All batches are full and every process
    yields the same number of them: the missing examples are padding with ``mask`` False (zero image, label 0),
    to be left out of the metrics. Arguments are as in :func:`train_dataset`; ``crop_fraction`` is the central
    fraction of the shorter side that is kept (0.875: resize to 256, crop 224).
    """
    process_index, process_count = _process(process_index, process_count)
    per_process = -(-len(source) // process_count)
    padded = -(-per_process // batch_size) * batch_size
    preprocess = EvalPreprocess(image_size=image_size, crop_fraction=crop_fraction, mean=mean, std=std, dtype=dtype)
    import grain

    positions = grain.MapDataset.range(process_index, process_index + padded * process_count, process_count)
    return read_batches(positions.map(_EvalExample(source, preprocess)), batch_size, read_options, worker_count)


def train_iterator(
    *, batch_size: int, seed: int, split: str = "train", data_dir: str | os.PathLike[str] | None = None, **kwargs: Any
) -> Iterator[dict[str, np.ndarray]]:
    """Training batches from the prepared imagenet2012 ``split``; ``kwargs`` as in :func:`train_dataset`.

    The iterator checkpoints with ``get_state()`` (a small dict) and resumes with ``set_state(state)``.
    """
    return iter(train_dataset(open_split(split, data_dir), batch_size=batch_size, seed=seed, **kwargs))


def eval_iterator(
    *, batch_size: int, split: str = "validation", data_dir: str | os.PathLike[str] | None = None, **kwargs: Any
) -> Iterator[dict[str, np.ndarray]]:
    """One pass of evaluation batches over the prepared imagenet2012 ``split``; kwargs as in :func:`eval_dataset`."""
    return iter(eval_dataset(open_split(split, data_dir), batch_size=batch_size, **kwargs))
