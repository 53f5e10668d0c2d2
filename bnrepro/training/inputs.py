"""Where the training and evaluation data come from: the `Input` protocol the loop drives, and its two kinds.

* `OnDeviceInput` (MNIST, Fashion-MNIST): the training set lives on the device (`device_data`); mini-batches are
  gathered inside the compiled program, up to `steps_per_dispatch` steps at a time, never past an epoch's end.
* `HostFedInput` (ImageNet): a grain pipeline on each host reads its share of every mini-batch from disk (in
  `input.worker_count` worker processes); the mini-batch of step T is batch T of a stream that is a function of
  the seed, so resuming at step T is exact. The next step's mini-batch goes to the devices while a step runs.

Every training program donates the state it is given (`donate_argnums`): it returns the next state, and the
devices hold one copy of it. A state handed to `train` is therefore spent: only the returned one may be used.

Both evaluate with the same `steps.eval_step`, with BN's statistics either the moving averages or Algorithm 2's
population statistics of `population_batches` training mini-batches (`steps.population_batch_stats`, or the same
`steps.batch_moments` batch by batch when they stream from disk), and run the same hooks.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from bnrepro import data, layers
from bnrepro.data import imagenet
from bnrepro.training import steps
from bnrepro.training.device_data import Dataset, epoch_permutation
from bnrepro.training.hooks import MeasurementHook
from bnrepro.training.sharding import ModelLayout
from bnrepro.training.state import TrainState, preprocess, run_once_compiler_options

if TYPE_CHECKING:
    import grain


class TrainChunk(NamedTuple):
    """What an input's `train` returns: the state after the steps, each step's loss (per model when stacked), and
    the seconds spent compiling (left out of the steps/s the loop reports)."""

    state: TrainState
    losses: np.ndarray
    compile_seconds: float


class Evaluation(NamedTuple):
    """An evaluation's `steps.eval_step` sums over the evaluated examples, and what the hooks collected from them."""

    sums: dict[str, Any]
    collected: Any


class Input(Protocol):
    def example_images(self) -> np.ndarray | jax.Array:
        """A mini-batch's worth of images (or one of that shape) to initialize a model with."""

    def compile(self, state: TrainState, collect: steps.Collect | None, measurements: Sequence[MeasurementHook]):
        """Compiles what can be compiled before training, so that a bad config stops the run before its first step."""

    def start(self, state: TrainState) -> None:
        """Continues from `state`'s data position."""

    def train(self, state: TrainState, max_steps: int) -> TrainChunk:
        """At least one and at most `max_steps` training steps."""

    def evaluate(self, state: TrainState) -> Evaluation:
        """The inference network on the evaluation split."""

    def measure(self, state: TrainState, index: int) -> dict[str, Any]:
        """Measurement hook `index` on the mini-batch of the latest training step."""

    def close(self) -> None:
        """Releases what the input holds besides memory (a host pipeline's worker processes)."""


def create_input(config: ml_collections.ConfigDict, model: nn.Module, layout: ModelLayout) -> Input:
    """The input `config.dataset` needs: ImageNet is read from disk on the host, the rest live on the device."""
    if "input" in config:
        return HostFedInput(config, model, layout)
    return OnDeviceInput(config, model, layout)


class OnDeviceInput:
    """A dataset small enough to live on the device: its position is the state's (epoch, batch_index); the whole
    test set (or its first `eval_examples`) is evaluated in one program. Stacked models each draw their own epoch
    permutations from their own keys."""

    def __init__(
        self,
        config: ml_collections.ConfigDict,
        model: nn.Module,
        layout: ModelLayout,
        splits: data.Splits | None = None,
    ):
        """The data are `config.dataset`'s, or `splits` if given (benchmarks: random images)."""
        if splits is None:
            splits = data.load_dataset(
                config.dataset, config.data_source, data_dir=config.data_dir or None,
                validation_size=config.validation_size,
            )  # fmt: skip
        num_train, num_test = len(splits.train.labels), len(splits.test.labels)
        self.steps_per_epoch = num_train // config.batch_size
        if self.steps_per_epoch == 0:
            raise ValueError(f"config.batch_size = {config.batch_size}: more than the {num_train} training examples.")
        if config.population_batches > self.steps_per_epoch:
            raise ValueError(
                f"config.population_batches = {config.population_batches}: more than the {self.steps_per_epoch} "
                "mini-batches of an epoch."
            )
        if config.eval_examples > num_test:
            raise ValueError(f"config.eval_examples = {config.eval_examples}: more than the {num_test} test examples.")
        logging.info(
            "%s (%s): %d training examples (%d steps per epoch), %d test examples.",
            config.dataset, config.data_source, num_train, self.steps_per_epoch, num_test,
        )  # fmt: skip
        self._config, self._model, self._layout = config, model, layout
        self.train_data = layout.place_data(Dataset.create(splits.train.images, splits.train.labels))
        self._example_images = splits.train.images[: config.batch_size].copy()
        # The test set is preprocessed on the host (`preprocess` of NumPy arrays runs in NumPy, to the same float32
        # bits) and copied over: ops on the device would each compile a program at start-up.
        count = config.eval_examples or None
        test = {"image": preprocess(splits.test.images[:count]), "label": splits.test.labels[:count]}
        self._test = layout.place_data(jax.device_put(test))
        permute = functools.partial(epoch_permutation, num_examples=num_train)
        self._permute = jax.jit(layout.over_models(permute, (0, 0)), compiler_options=run_once_compiler_options())
        self._programs = {}  # one compiled training program per number of fused steps; there are few
        self._evaluation = None
        self._measurements = []
        self._epoch, self._batch_index, self._permutation = 0, 0, None

    def example_images(self) -> np.ndarray:
        """The first `batch_size` training images."""
        return self._example_images

    def _permutation_of(self, state: TrainState) -> jax.Array:
        return self._layout.place_model_data(self._permute(state.rng, state.epoch))

    def compile(self, state: TrainState, collect: steps.Collect | None, measurements: Sequence[MeasurementHook]):
        """Compiles the evaluation and the measurements (a hook's bad setting stops the run before training)."""
        config, model, permutation = self._config, self._model, self._permutation_of(state)

        def evaluation(state, train_data, permutation, test):
            batch_stats = state.batch_stats
            if config.eval_statistics == "population":  # the first K training mini-batches of the epoch
                indices = permutation[: config.population_batches * config.batch_size]
                images = preprocess(train_data.take(indices)[0])
                batches = images.reshape((config.population_batches, config.batch_size) + images.shape[1:])
                batch_stats = steps.population_batch_stats(model, state, batches)
            return steps.eval_batches(state, batch_stats, test, collect)

        over_models = self._layout.over_models
        self._evaluation = (
            jax.jit(over_models(evaluation, (0, None, 0, None))).lower(state, self.train_data, permutation, self._test)
        ).compile()
        self._measurements = []
        for hook in measurements:

            def measurement(state, train_data, permutation, hook=hook):
                return hook.measure(
                    state, steps.minibatch(train_data, permutation, state.batch_index - 1, config.batch_size)
                )

            program = jax.jit(over_models(measurement, (0, None, 0)))
            self._measurements.append(program.lower(state, self.train_data, permutation).compile())

    def start(self, state: TrainState) -> None:
        epoch, batch_index = (np.ravel(state.epoch)[0], np.ravel(state.batch_index)[0])  # the same for all models
        self._epoch, self._batch_index, self._permutation = int(epoch), int(batch_index), None

    def train(self, state: TrainState, max_steps: int) -> TrainChunk:
        """At most `max_steps` steps in one program, never past the end of the epoch: at its end the next epoch
        starts, with a permutation of its own."""
        if self._batch_index == self.steps_per_epoch:
            self._epoch, self._batch_index, self._permutation = self._epoch + 1, 0, None
            state = state.replace(
                epoch=jnp.full_like(state.epoch, self._epoch), batch_index=jnp.zeros_like(state.batch_index)
            )
        if self._permutation is None:
            self._permutation = self._permutation_of(state)
        num_steps = min(max_steps, self.steps_per_epoch - self._batch_index)
        compile_seconds = 0.0
        if num_steps not in self._programs:
            t = time.perf_counter()
            train_steps = functools.partial(
                steps.train_steps, batch_size=self._config.batch_size, num_steps=num_steps,
                batch_sharding=self._layout.batch_sharding,
            )  # fmt: skip
            program = jax.jit(self._layout.over_models(train_steps, (0, None, 0)), donate_argnums=0)
            self._programs[num_steps] = program.lower(state, self.train_data, self._permutation).compile()
            compile_seconds = time.perf_counter() - t
            logging.info("Compiled the %d-step training program in %.1f s.", num_steps, compile_seconds)
        state, metrics = self._programs[num_steps](state, self.train_data, self._permutation)
        losses = np.asarray(metrics["loss"])  # waits for the program; the next one needs its result anyway
        self._batch_index += num_steps
        return TrainChunk(state, losses, compile_seconds)

    def evaluate(self, state: TrainState) -> Evaluation:
        permutation = self._permutation if self._permutation is not None else self._permutation_of(state)
        return Evaluation(*jax.device_get(self._evaluation(state, self.train_data, permutation, self._test)))

    def measure(self, state: TrainState, index: int) -> dict[str, Any]:
        return jax.device_get(self._measurements[index](state, self.train_data, self._permutation))

    def close(self) -> None:
        """Nothing to release: the data are arrays on the device."""


class HostFedInput:
    """A dataset read from disk by a grain pipeline on the host (ImageNet, `bnrepro.data.imagenet`): each
    process reads its share of every mini-batch (in `input.worker_count` grain worker processes, or in this
    one), which is split across the devices, one step per dispatch. Each mini-batch is put on the devices one
    step ahead, while the step before it runs.

    The pipeline is a function of the seed and the batch's position, so step T's mini-batch is batch T of
    the stream: resuming at step T skips T batches, and there is no iterator state to checkpoint (the batch put
    ahead is batch `state.step`, not yet consumed). Evaluation runs over the whole `input.eval_split`, batch by
    batch; with `eval_statistics="population"` BN uses Algorithm 2's statistics of `population_batches` training
    mini-batches, drawn from a stream of their own seeded by the step (so a resumed run evaluates exactly as an
    uninterrupted one)."""

    def __init__(self, config: ml_collections.ConfigDict, model: nn.Module, layout: ModelLayout):
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
        self._program = self._eval_step = None
        self._measurements = []
        self._batches = self._next_batch = None
        self._moments = jax.jit(functools.partial(steps.batch_moments, model))
        self._population = jax.jit(layers.population_from_moments)

    def example_images(self) -> np.ndarray:
        """One blank image: initialization needs only the shape."""
        size = self._config.input.image_size
        return np.zeros((1, size, size, 3), np.float32)

    def _train_batches(
        self,
        seed: int,
        start_batch: int,
        read_options: grain.ReadOptions | None = None,
        worker_count: int | None = None,
    ) -> grain.DatasetIterator:
        """An iterator over this process's training batches from batch `start_batch` of the stream `seed` fixes;
        the config's readers and workers unless given."""
        config = self._config
        return iter(
            imagenet.train_dataset(
                self._train_source, batch_size=config.batch_size // jax.process_count(), seed=seed,
                image_size=config.input.image_size, shuffle=config.input.shuffle,
                distortion=config.input.distortion, start_batch=start_batch,
                read_options=read_options or self._read_options,
                worker_count=self._worker_count if worker_count is None else worker_count,
            )
        )  # fmt: skip

    def _to_devices(self, batch: Mapping[str, np.ndarray]) -> dict[str, jax.Array]:
        """This process's share of a global batch, put on the devices (split across them when sharded)."""
        if self._batch_sharding is None:
            return jax.device_put(dict(batch))
        return {k: jax.make_array_from_process_local_data(self._batch_sharding, v) for k, v in batch.items()}

    def compile(self, state: TrainState, collect: steps.Collect | None, measurements: Sequence[MeasurementHook]):
        """Compiles the training step for the global batch, and the measurements on it."""
        config = self._config
        t, size = time.perf_counter(), config.input.image_size
        batch = {
            "image": jax.ShapeDtypeStruct((config.batch_size, size, size, 3), jnp.float32),
            "label": jax.ShapeDtypeStruct((config.batch_size,), jnp.int32),
        }
        if self._batch_sharding is not None:
            batch = {k: v.update(sharding=self._batch_sharding) for k, v in batch.items()}
        self._program = jax.jit(steps.train_step, donate_argnums=0).lower(state, batch).compile()
        logging.info("Compiled the training step in %.1f s.", time.perf_counter() - t)
        self._eval_step = jax.jit(functools.partial(steps.eval_step, collect=collect))
        self._measurements = [jax.jit(hook.measure).lower(state, batch).compile() for hook in measurements]

    def start(self, state: TrainState) -> None:
        """Continues from `state`'s step: the stream starts at its batch `step`, which is read (the workers
        started) and put on the devices now."""
        self.close()
        self._batches = self._train_batches(self._config.seed, int(state.step))
        self._next_batch = self._to_devices(next(self._batches))

    def train(self, state: TrainState, max_steps: int) -> TrainChunk:
        """`max_steps` steps, one dispatch each. Dispatch returns at once, so the next step's batch is read
        (grain reads ahead of it) and its transfer to the devices queued while the step runs."""
        losses = []
        for _ in range(max_steps):
            state, metrics = self._program(state, self._next_batch)
            self._next_batch = self._to_devices(next(self._batches))
            losses.append(metrics["loss"])
        return TrainChunk(state, np.asarray(jnp.stack(losses)), 0.0)

    def evaluate(self, state: TrainState) -> Evaluation:
        """Every example of `input.eval_split` once, in padded batches (`mask` marks the real examples)."""
        config = self._config
        batch_stats = state.batch_stats
        if config.eval_statistics == "population" and batch_stats:
            seed = int(np.random.SeedSequence([config.seed, int(state.step)]).generate_state(1)[0])
            with contextlib.closing(self._train_batches(seed, start_batch=0)) as batches:  # stops its workers
                moments = [self._moments(state, self._to_devices(next(batches))["image"])
                           for _ in range(config.population_batches)]  # fmt: skip
            batch_stats = self._population(jax.tree.map(lambda *m: jnp.stack(m), *moments))
        sums, collected = [], []
        batches = iter(imagenet.eval_dataset(
            self._eval_source, batch_size=config.input.eval_batch_size // jax.process_count(),
            image_size=config.input.image_size, read_options=self._read_options, worker_count=self._worker_count,
        ))  # fmt: skip
        with contextlib.closing(batches):
            for batch in batches:
                batch_sums, taken = jax.device_get(self._eval_step(state, batch_stats, self._to_devices(batch)))
                real = np.asarray(batch["mask"], bool)  # the padding's rows are not examples
                sums.append(batch_sums)
                collected.append(jax.tree.map(lambda x, real=real: x[real], taken))
        return Evaluation(
            jax.tree.map(lambda *v: np.sum(v), *sums), jax.tree.map(lambda *v: np.concatenate(v), *collected)
        )

    def measure(self, state: TrainState, index: int) -> dict[str, Any]:
        """Measurement `index` on the mini-batch of the latest step: batch step - 1 of the stream, read again
        in this process (without prefetching the batches after it)."""
        once = dataclasses.replace(self._read_options, prefetch_buffer_size=0)
        batch = next(self._train_batches(self._config.seed, int(state.step) - 1, once, worker_count=0))
        return jax.device_get(self._measurements[index](state, self._to_devices(batch)))

    def close(self) -> None:
        """Stops the training stream's worker processes, if any."""
        if self._batches is not None:
            self._batches.close()
        self._batches = self._next_batch = None
