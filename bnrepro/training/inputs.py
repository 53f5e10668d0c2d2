"""Where a run's data come from, and only that: `loop.py` compiles and runs every program on them.

* `OnDeviceData` (MNIST, Fashion-MNIST): the training set lives on the device (`device_data.Dataset`); it yields
  index `Window`s, up to `steps_per_dispatch` consecutive mini-batches of an epoch (never past its end), which
  the loop's fused program gathers inside itself by the epoch's permutation.
* `HostFedData` (ImageNet): a grain pipeline on each host reads its share of every mini-batch from disk (in
  `input.worker_count` worker processes) and yields it on the devices; the mini-batch of step T is batch T of a
  stream that is a function of the seed, so resuming at step T is exact.

Both yield the test set as batches of one shape (the last padded, `mask` marking the real examples), which
`evaluation.evaluate` runs the inference network over; `OnDeviceData` also the first `eval_train_examples`
training examples, for the training-set accuracy.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Mapping
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from bnrepro import data
from bnrepro.data import imagenet
from bnrepro.training.device_data import EVAL_BATCH_SIZE, Dataset, padded_batches
from bnrepro.training.sharding import ModelLayout
from bnrepro.training.state import TrainState, preprocess


def create(config: ml_collections.ConfigDict, layout: ModelLayout) -> OnDeviceData | HostFedData:
    """The data `config.dataset` needs: ImageNet is read from disk on the host, the rest live on the device."""
    if "input" in config:
        return HostFedData(config, layout)
    return OnDeviceData(config, layout)


class Window(NamedTuple):
    """What one fused training program trains on: mini-batches `first` to `first + num_steps - 1` of `epoch`."""

    epoch: int
    first: int
    num_steps: int


class OnDeviceData:
    """A dataset small enough to live on the device: its position is the state's (epoch, batch_index), tracked
    here on the host too, so that choosing the next window reads nothing back from the devices. The test set
    (or its first `eval_examples`) is held on the devices in batches of `EVAL_BATCH_SIZE`.

    Attributes:
      train: the training set on the devices.
      num_examples: its size; steps_per_epoch: the mini-batches of an epoch (a remainder is left out).
      epoch, batch_index: the data position: the mini-batches of `epoch` already drawn.
    """

    def __init__(self, config: ml_collections.ConfigDict, layout: ModelLayout, splits: data.Splits | None = None):
        """The data are `config.dataset`'s, or `splits` if given (benchmarks: random images)."""
        if splits is None:
            splits = data.load_dataset(
                config.dataset, config.data_source, data_dir=config.data_dir or None,
                validation_size=config.validation_size,
            )  # fmt: skip
        self.num_examples, num_test = len(splits.train.labels), len(splits.test.labels)
        self.steps_per_epoch = self.num_examples // config.batch_size
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"config.batch_size = {config.batch_size}: more than the {self.num_examples} training examples."
            )
        if config.population_batches > self.steps_per_epoch:
            raise ValueError(
                f"config.population_batches = {config.population_batches}: more than the {self.steps_per_epoch} "
                "mini-batches of an epoch."
            )
        if config.eval_examples > num_test:
            raise ValueError(f"config.eval_examples = {config.eval_examples}: more than the {num_test} test examples.")
        if config.eval_train_examples > self.num_examples:
            raise ValueError(
                f"config.eval_train_examples = {config.eval_train_examples}: more than the {self.num_examples} "
                "training examples."
            )
        logging.info(
            "%s (%s): %d training examples (%d steps per epoch), %d test examples.",
            config.dataset, config.data_source, self.num_examples, self.steps_per_epoch, num_test,
        )  # fmt: skip
        self.train = layout.place_data(Dataset.create(splits.train.images, splits.train.labels))
        self._example_images = splits.train.images[: config.batch_size].copy()

        # The evaluated examples are preprocessed on the host (`preprocess` of NumPy arrays runs in NumPy, to the
        # same float32 bits) and copied over: ops on the device would each compile a program at start-up.
        def eval_batches(split: data.Split, count: int | None) -> list[dict[str, jax.Array]]:
            batches = padded_batches(preprocess(split.images[:count]), split.labels[:count], EVAL_BATCH_SIZE)
            return [layout.place_data(jax.device_put(batch)) for batch in batches]

        self._test = eval_batches(splits.test, config.eval_examples or None)
        # The first `eval_train_examples` training examples, evaluated as the test set is (train_accuracy).
        self._train_eval = eval_batches(splits.train, config.eval_train_examples) if config.eval_train_examples else []
        self.epoch, self.batch_index = 0, 0

    def example_images(self) -> np.ndarray:
        """The first `batch_size` training images."""
        return self._example_images

    def start(self, state: TrainState) -> None:
        """Continues from `state`'s data position (the same for all the models it holds)."""
        self.epoch, self.batch_index = int(np.ravel(state.epoch)[0]), int(np.ravel(state.batch_index)[0])

    def next_window(self, max_steps: int) -> Window:
        """The next at most `max_steps` mini-batches, never past the end of the epoch: at its end the next epoch
        starts (at its mini-batch 0)."""
        if self.batch_index == self.steps_per_epoch:
            self.epoch, self.batch_index = self.epoch + 1, 0
        window = Window(self.epoch, self.batch_index, min(max_steps, self.steps_per_epoch - self.batch_index))
        self.batch_index += window.num_steps
        return window

    def test_batches(self) -> Iterator[dict[str, jax.Array]]:
        return iter(self._test)

    def test_batch_spec(self) -> dict[str, jax.Array]:
        """A test batch (every one has its shapes)."""
        return self._test[0]

    def train_eval_batches(self) -> Iterator[dict[str, jax.Array]]:
        """The first `eval_train_examples` training examples in padded test-shaped batches (none if it is 0)."""
        return iter(self._train_eval)

    def close(self) -> None:
        """Nothing to release: the data are arrays on the device."""


class HostFedData:
    """A dataset read from disk by a grain pipeline on the host (ImageNet, `bnrepro.data.imagenet`): each
    process reads its share of every mini-batch (in `input.worker_count` grain worker processes, or in this
    one), which is split across the devices.

    The pipeline is a function of the seed and the batch's position, so step T's mini-batch is batch T of the
    stream: resuming at step T skips T batches, and there is no iterator state to checkpoint. The test set is the
    whole `input.eval_split`; Algorithm 2's `population_batches` training mini-batches are drawn from a stream of
    their own seeded by the step (so a resumed run evaluates exactly as an uninterrupted one)."""

    def __init__(self, config: ml_collections.ConfigDict, layout: ModelLayout):
        if layout.size != 1:
            raise ValueError(f"config.dataset = {config.dataset!r}: a host-fed dataset trains one model at a time.")
        self._config, self._batch_sharding = config, layout.batch_sharding
        devices = self._batch_sharding.num_devices if self._batch_sharding is not None else 1
        for key, value in (("batch_size", config.batch_size), ("input.eval_batch_size", config.input.eval_batch_size)):
            if value % jax.process_count() or value % devices:
                raise ValueError(
                    f"config.{key} = {value}: does not split evenly across {jax.process_count()} hosts and "
                    f"{devices} devices."
                )
        data_dir = config.data_dir or None
        self._train_source = imagenet.open_split(config.input.train_split, data_dir)
        self._eval_source = imagenet.open_split(config.input.eval_split, data_dir)
        logging.info(
            "%s: %d training examples (%s), %d evaluation examples (%s).", config.dataset,
            len(self._train_source), config.input.train_split, len(self._eval_source), config.input.eval_split,
        )  # fmt: skip
        import grain  # here, not at the top: the datasets that live on the device do not pay for its import

        self._read_options = grain.ReadOptions(
            num_threads=config.input.read_threads, prefetch_buffer_size=config.input.prefetch_buffer_size
        )
        self._worker_count = config.input.worker_count
        self._batches: Iterator[dict[str, jax.Array]] | None = None

    def example_images(self) -> np.ndarray:
        """One blank image: initialization needs only the shape."""
        size = self._config.input.image_size
        return np.zeros((1, size, size, 3), np.float32)

    def train_batch_spec(self) -> dict[str, jax.ShapeDtypeStruct]:
        """A global training mini-batch's shapes, types and sharding, to compile the training step for."""
        return host_fed_batch_spec(self._config.batch_size, self._config.input.image_size, self._batch_sharding)

    def test_batch_spec(self) -> dict[str, jax.ShapeDtypeStruct]:
        """A global test batch's shapes, types and sharding."""
        size = self._config.input.image_size
        return host_fed_batch_spec(self._config.input.eval_batch_size, size, self._batch_sharding, masked=True)

    def _train_stream(self, seed: int, start_batch: int, read_once: bool = False) -> Iterator[Mapping[str, np.ndarray]]:
        """This process's training batches from batch `start_batch` of the stream `seed` fixes; `read_once`: in
        this process, without reading ahead."""
        config = self._config
        return iter(
            imagenet.train_dataset(
                self._train_source, batch_size=config.batch_size // jax.process_count(), seed=seed,
                image_size=config.input.image_size, shuffle=config.input.shuffle,
                distortion=config.input.distortion, start_batch=start_batch,
                read_options=dataclasses.replace(self._read_options, prefetch_buffer_size=0) if read_once
                else self._read_options,
                worker_count=0 if read_once else self._worker_count,
            )
        )  # fmt: skip

    def _to_devices(self, batch: Mapping[str, np.ndarray]) -> dict[str, jax.Array]:
        """This process's share of a global batch, put on the devices (split across them when sharded)."""
        if self._batch_sharding is None:
            return jax.device_put(dict(batch))
        return {k: jax.make_array_from_process_local_data(self._batch_sharding, v) for k, v in batch.items()}

    def start(self, state: TrainState) -> None:
        """Continues from `state`'s step: the stream starts at its batch `step`."""
        self.close()
        self._batches = self._on_devices(self._train_stream(self._config.seed, int(state.step)))

    def _on_devices(self, stream: Iterator[Mapping[str, np.ndarray]]) -> Iterator[dict[str, jax.Array]]:
        with contextlib.closing(stream):  # stops its workers
            for batch in stream:
                yield self._to_devices(batch)

    def next_batch(self) -> dict[str, jax.Array]:
        """The next training mini-batch, put on the devices. Dispatching a step returns at once, so asking for
        the next step's batch reads it (grain reads ahead of it) and queues its transfer while the step runs."""
        return next(self._batches)

    def batch(self, index: int) -> dict[str, jax.Array]:
        """Training mini-batch `index` of the stream, read again in this process (for a measurement)."""
        stream = self._train_stream(self._config.seed, index, read_once=True)
        with contextlib.closing(stream):
            return self._to_devices(next(stream))

    def population_batches(self, step: int) -> Iterator[dict[str, jax.Array]]:
        """The `population_batches` training mini-batches of Algorithm 2 at step `step`: the first of a stream of
        their own, seeded by the step."""
        seed = int(np.random.SeedSequence([self._config.seed, step]).generate_state(1)[0])
        batches = self._on_devices(self._train_stream(seed, start_batch=0))
        with contextlib.closing(batches):
            for _ in range(self._config.population_batches):
                yield next(batches)

    def test_batches(self) -> Iterator[dict[str, jax.Array]]:
        """Every example of `input.eval_split` once, in padded batches (`mask` marks the real examples)."""
        config = self._config
        return self._on_devices(iter(imagenet.eval_dataset(
            self._eval_source, batch_size=config.input.eval_batch_size // jax.process_count(),
            image_size=config.input.image_size, read_options=self._read_options, worker_count=self._worker_count,
        )))  # fmt: skip

    def close(self) -> None:
        """Stops the training stream's worker processes, if any."""
        if self._batches is not None:
            self._batches.close()
        self._batches = None


def host_fed_batch_spec(
    batch_size: int, image_size: int, sharding: jax.sharding.Sharding | None, masked: bool = False
) -> dict[str, jax.ShapeDtypeStruct]:
    """The shapes, types and sharding of a host-fed global batch (`HostFedData`'s): preprocessed float32 images,
    labels, and for test batches the mask of real examples."""
    spec = {
        "image": jax.ShapeDtypeStruct((batch_size, image_size, image_size, 3), jnp.float32),
        "label": jax.ShapeDtypeStruct((batch_size,), jnp.int32),
    }
    if masked:
        spec["mask"] = jax.ShapeDtypeStruct((batch_size,), jnp.bool_)
    if sharding is not None:
        spec = {key: value.update(sharding=sharding) for key, value in spec.items()}
    return spec
