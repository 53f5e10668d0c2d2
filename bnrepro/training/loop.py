"""The training loop, in the shape of Flax's ImageNet example: `train_and_evaluate(config, workdir)`.

Top to bottom: the model the config names → the data (`inputs.create`: on the device, or fed from the host) →
the initial `TrainState` → the compiled programs: the training steps (`OnDeviceSteps`: K steps fused over an index
window; `HostFedSteps`: one step per mini-batch), the evaluation step, Algorithm 2's moments and population, the
hooks' measurements → the latest checkpoint, if the workdir has one → the loop: train up to the next boundary
(dispatch, evaluation, measurement, checkpoint), stop a model whose loss is NaN, evaluate the inference network
(`evaluation.evaluate`) into `metrics.jsonl` (and TensorBoard), checkpoint; after a SIGTERM, checkpoint at the
next boundary and stop (`preemption`). A run is a function of its config:
the data position and the RNG are part of the checkpointed state, so a run killed at any moment and resumed ends
with exactly the parameters of an uninterrupted one.

Every training program donates the state it is given (`donate_argnums`): it returns the next state, and the
devices hold one copy of it. A state handed to `train` is therefore spent: only the returned one may be used.

The loop trains the models a `ModelLayout` holds: one for a run (`sharding.OneModel`), several stacked on an axis
for a sweep's group (`bnrepro.sweep.group`), each writing its own run directory; every program is mapped over
them (`layout.over_models`). It knows nothing of what its hooks measure (`bnrepro.hooks`).
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple, Self

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from bnrepro import config_schema, models
from bnrepro.hooks import NO_HOOKS, Hooks, collect_all
from bnrepro.training import checkpoints, evaluation, inputs, preemption, run_dir, steps
from bnrepro.training.device_data import epoch_permutation
from bnrepro.training.sharding import ModelLayout, OneModel
from bnrepro.training.state import TrainState, create_train_state, run_once_compiler_options


class DivergedError(RuntimeError):
    """The training loss became NaN or infinite."""


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path, hooks: Hooks = NO_HOOKS) -> TrainState:
    """Trains `config` in `workdir`, resuming from its latest checkpoint; returns the final state.

    Writes `metrics.jsonl` and TensorBoard events (one record per evaluation, every `eval_every` steps and at the
    end), orbax checkpoints every `checkpoint_every` steps or `checkpoint_every_seconds` and at the end, and
    `config.json`; with `config.profile_steps`, a `jax.profiler` trace of those steps (`_Profiler`). With several
    processes (`jax.distributed`), every process trains and checkpoints, process 0 writes the files.

    Raises:
      ValueError: the config is invalid, or differs from the one the workdir's checkpoints were made with.
      DivergedError: the training loss became NaN or infinite (also written to `WORKDIR/DIVERGED`).
    """
    config_schema.validate(config)  # the one check of a single run, from the command line (main) or a notebook
    (result,) = train_models([config], [workdir], OneModel(config.num_devices, config.batch_size), hooks)
    if isinstance(result, DivergedError):
        raise result
    return result


def train_models(
    configs: Sequence[ml_collections.ConfigDict],
    workdirs: Sequence[str | Path],
    layout: ModelLayout,
    hooks: Hooks = NO_HOOKS,
) -> list[TrainState | DivergedError]:
    """Trains the models `layout` holds, model i under `configs[i]` in `workdirs[i]`; the configs may differ only
    in what the layout's programs take per model (seed, learning rate): the rest comes from `configs[0]`.

    Returns:
      Each model's final state, or the `DivergedError` that stopped it (the others went on).
    """
    if len({Path(w).absolute() for w in workdirs}) != len(configs) or len(configs) != layout.size:
        raise ValueError(f"{layout.size} models need as many configs and distinct workdirs, got {list(workdirs)}.")
    config, primary = configs[0], jax.process_index() == 0
    with contextlib.ExitStack() as files:  # the locks first, before anything is read or written; released last
        if primary:  # one holder per workdir, also on several hosts
            for workdir in workdirs:
                files.enter_context(run_dir.locked(Path(workdir)))
        model = models.create_model(config.model, config.dtype, batch_shards=layout.batch_shards)
        data = files.enter_context(contextlib.closing(inputs.create(config, layout)))  # stops its workers
        initial = [create_train_state(c, model, jax.random.key(c.seed), data.example_images()) for c in configs]
        placed = layout.place_states(initial)
        training = create_steps(config, layout, data, placed)
        eval_step, moments, population, measurements = evaluation_programs(model, layout, hooks)
        # Traced now, so that a hook's bad setting stops the run before its first step.
        jax.eval_shape(eval_step, placed, placed.batch_stats, data.test_batch_spec())
        for measure in measurements:
            jax.eval_shape(measure, placed, training.batch_spec(placed))

        runs = [files.enter_context(_Run(c, Path(w), primary, hooks)) for c, w in zip(configs, workdirs)]
        profiler = files.enter_context(_Profiler(config, Path(workdirs[0]), primary))
        restored = [
            checkpoints.restore_latest(run.checkpoints, s, run.config, run.workdir) for run, s in zip(runs, initial)
        ]
        if len({int(s.step) for s in restored}) > 1:
            raise ValueError(
                f"the models' checkpoints are at different steps {sorted({int(s.step) for s in restored})}."
            )
        state, step = layout.place_states(restored), int(restored[0].step)
        training.start(state)
        for run in runs:
            run.start(step)

        # A checkpoint saved between evaluations holds the losses the next evaluation averages.
        saved = [checkpoints.losses_since_evaluation(run.checkpoints, step) for run in runs] if step else [[]]
        losses_since_eval = [np.asarray(saved[0] if layout.size == 1 else saved, np.float32)] if saved[0] else []
        train_time, steps_timed = 0.0, 0
        start_step, start_time = step, time.perf_counter()
        while step < config.num_steps and not all(run.diverged for run in runs):
            profiler.before(step)
            t = time.perf_counter()
            chunk = training.train(state, _next_boundary(step, config, hooks) - step)
            num_steps = chunk.losses.shape[-1]
            train_time += time.perf_counter() - t - chunk.compile_seconds
            steps_timed += num_steps
            for i, run in enumerate(runs):
                run.check_losses(step, layout.member(chunk.losses, i))
            if all(run.diverged for run in runs):
                break
            state, step = chunk.state, step + num_steps
            profiler.after(step, chunk)
            losses_since_eval.append(chunk.losses)

            for index, hook in enumerate(hooks.measurement):
                if step % hook.every == 0:
                    record = jax.device_get(measurements[index](state, training.latest_batch(step)))
                    for i, run in enumerate(runs):
                        run.write(hook.filename, {"step": step, **layout.member(record, i)})

            if step % config.eval_every == 0 or step == config.num_steps:
                t = time.perf_counter()
                batch_stats = state.batch_stats
                if config.eval_statistics == "population":  # Algorithm 2's; else BN's moving averages
                    batch_stats = evaluation.population_statistics(
                        moments, population, state, training.population_batches(step)
                    )
                evaluations = evaluation.evaluate(eval_step, state, batch_stats, data.test_batches(), layout)
                on_train = [None] * layout.size
                if config.eval_train_examples:  # the same inference network on training examples
                    on_train = evaluation.evaluate(eval_step, state, batch_stats, data.train_eval_batches(), layout)
                losses = np.concatenate(losses_since_eval, axis=-1)
                records = [
                    _evaluation_record(step, layout.member(losses, i), evaluations[i], hooks, on_train[i])
                    for i in range(layout.size)
                ]
                for run, record in zip(runs, records):
                    run.write(run_dir.METRICS_FILE, {**record, "steps_per_second": steps_timed / train_time})
                logging.info(
                    "step %d/%d: train_loss %s, test_accuracy %s | %.1f steps/s, eval %.3f s, ETA %.0f s",
                    step, config.num_steps, " ".join(f"{r['train_loss']:.4f}" for r in records),
                    " ".join(f"{r['test_accuracy']:.4f}" for r in records), steps_timed / train_time,
                    time.perf_counter() - t,
                    (config.num_steps - step) * (time.perf_counter() - start_time) / (step - start_step),
                )  # fmt: skip
                losses_since_eval, train_time, steps_timed = [], 0.0, 0

            stopping = _stop_signal()
            stop = stopping is not None and step < config.num_steps  # a signal: checkpoint here and stop
            # Every `checkpoint_every` steps or `checkpoint_every_seconds` (`checkpoints.manager`): one decision for
            # the group, its first live model's (a diverged one's manager saves no more), taken on every process.
            due = next(run for run in runs if not run.diverged).checkpoints.should_save(step)
            if due or step == config.num_steps or stop:
                pending = np.concatenate(losses_since_eval, axis=-1) if losses_since_eval else None
                for i, run in enumerate(runs):
                    run.save(step, layout.member(state, i), () if pending is None else layout.member(pending, i))
            if stop:
                raise preemption.Stopped(step, stopping)

    if step > start_step:
        logging.info("Trained steps %d to %d in %.1f s.", start_step, step, time.perf_counter() - start_time)
    return [run.diverged or layout.member(state, i).replace(tx=s.tx) for i, (run, s) in enumerate(zip(runs, initial))]


def _stop_signal() -> int | None:
    """The signal that asked any process of the run to stop (`preemption.requested`), the same answer on every
    process: a SIGTERM that reaches the hosts at different boundaries still stops them all at one step, where they
    checkpoint together."""
    signum = preemption.requested() or 0
    if jax.process_count() > 1:
        signum = int(np.max(multihost_utils.process_allgather(np.int32(signum))))
    return signum or None


def training_program(config: ml_collections.ConfigDict, layout: ModelLayout, num_steps: int) -> Any:
    """`steps.train_steps`, `num_steps` steps of an on-device dataset fused in one program, mapped over the models
    `layout` holds (each mini-batch split across the devices where the layout splits it), jitted with the state
    donated: it returns the next state, and the devices hold one copy of it."""
    train_steps = functools.partial(
        steps.train_steps, batch_size=config.batch_size, num_steps=num_steps, batch_sharding=layout.batch_sharding
    )
    return jax.jit(layout.over_models(train_steps, (0, None, 0)), donate_argnums=0)


def host_fed_training_program() -> Any:
    """`steps.train_step`, one step on a mini-batch fed from the host, jitted with the state donated. Data
    parallelism is in its arguments: the state replicated, the batch split across the devices
    (`inputs.host_fed_batch_spec`); the compiler inserts the gradient's all-reduce."""
    return jax.jit(steps.train_step, donate_argnums=0)


class EvaluationPrograms(NamedTuple):
    """The jitted programs around training, each mapped over the models a layout holds: the inference network's
    `steps.eval_step` (with what the evaluation hooks collect), Algorithm 2's `steps.batch_moments` and
    `steps.population`, and each measurement hook's `measure`."""

    eval_step: Any
    moments: Any
    population: Any
    measurements: list[Any]


def evaluation_programs(model: nn.Module, layout: ModelLayout, hooks: Hooks = NO_HOOKS) -> EvaluationPrograms:
    """`EvaluationPrograms` of `model` for the models `layout` holds."""
    over_models = layout.over_models
    collect = collect_all(hooks.evaluation)
    return EvaluationPrograms(
        eval_step=jax.jit(over_models(functools.partial(steps.eval_step, collect=collect), (0, 0, None))),
        moments=jax.jit(over_models(functools.partial(steps.batch_moments, model), (0, 0))),
        population=jax.jit(over_models(steps.population, (0,))),
        measurements=[jax.jit(over_models(hook.measure, (0, 0))) for hook in hooks.measurement],
    )


class TrainChunk(NamedTuple):
    """What `train` returns: the state after the steps, each step's loss (per model when stacked), and the seconds
    spent compiling (left out of the steps/s the loop reports)."""

    state: TrainState
    losses: np.ndarray
    compile_seconds: float


def create_steps(
    config: ml_collections.ConfigDict,
    layout: ModelLayout,
    data: inputs.OnDeviceData | inputs.HostFedData,
    state: TrainState,
) -> OnDeviceSteps | HostFedSteps:
    """The training programs for where `data` lives; `state` (as the programs take it) gives their shapes."""
    if isinstance(data, inputs.HostFedData):
        return HostFedSteps(data, state)
    return OnDeviceSteps(config, layout, data)


class OnDeviceSteps:
    """Training on `inputs.OnDeviceData`: `steps.train_steps`, the K steps of the data's next index window fused in
    one program (one compiled program per K; there are few), the mini-batches gathered inside it by the epoch's
    permutation, drawn on the device once an epoch (stacked models each draw their own from their own keys). The
    mini-batches Algorithm 2 and the measurements take are gathered by the same permutation."""

    def __init__(self, config: ml_collections.ConfigDict, layout: ModelLayout, data: inputs.OnDeviceData):
        self._config, self._layout, self._data = config, layout, data
        permute = functools.partial(epoch_permutation, num_examples=data.num_examples)
        self._permute = jax.jit(layout.over_models(permute, (0, None)), compiler_options=run_once_compiler_options())
        gather = functools.partial(steps.minibatch, batch_size=config.batch_size)
        self._gather = jax.jit(layout.over_models(gather, (None, 0, None)))
        self._programs: dict[int, Any] = {}
        self._epoch, self._permutation = 0, None

    def batch_spec(self, state: TrainState) -> Any:
        """The shapes of a training mini-batch (one per model), as the programs take it."""
        return jax.eval_shape(self._gather, self._data.train, jax.eval_shape(self._permute, state.rng, 0), 0)

    def start(self, state: TrainState) -> None:
        self._data.start(state)
        self._epoch, self._permutation = self._data.epoch, None

    def _permutation_of(self, state: TrainState) -> jax.Array:
        if self._permutation is None:
            self._permutation = self._layout.place_model_data(self._permute(state.rng, self._epoch))
        return self._permutation

    def train(self, state: TrainState, max_steps: int) -> TrainChunk:
        """The next window's steps, at most `max_steps`, never past the end of the epoch; at its end the next
        epoch starts, with a permutation of its own."""
        window = self._data.next_window(max_steps)
        if window.epoch != self._epoch:
            state = state.replace(
                epoch=jnp.full_like(state.epoch, window.epoch), batch_index=jnp.zeros_like(state.batch_index)
            )
            self._epoch, self._permutation = window.epoch, None
        permutation = self._permutation_of(state)
        compile_seconds = 0.0
        if window.num_steps not in self._programs:
            t = time.perf_counter()
            program = training_program(self._config, self._layout, window.num_steps)
            self._programs[window.num_steps] = program.lower(state, self._data.train, permutation).compile()
            compile_seconds = time.perf_counter() - t
            logging.info("Compiled the %d-step training program in %.1f s.", window.num_steps, compile_seconds)
        state, metrics = self._programs[window.num_steps](state, self._data.train, permutation)
        losses = np.asarray(metrics["loss"])  # waits for the program; the next one needs its result anyway
        return TrainChunk(state, losses, compile_seconds)

    def population_batches(self, step: int) -> Iterator[dict[str, jax.Array]]:
        """Algorithm 2's training mini-batches: the first `population_batches` of the current epoch."""
        del step  # the epoch's permutation fixes them
        return (self._gather(self._data.train, self._permutation, k) for k in range(self._config.population_batches))

    def latest_batch(self, step: int) -> dict[str, jax.Array]:
        """The mini-batch of the latest training step."""
        del step  # the data position fixes it
        return self._gather(self._data.train, self._permutation, self._data.batch_index - 1)


class HostFedSteps:
    """Training on `inputs.HostFedData`: `steps.train_step`, compiled once for the global mini-batch, one dispatch
    per step, each on the next batch the host reads."""

    def __init__(self, data: inputs.HostFedData, state: TrainState):
        self._data = data
        t = time.perf_counter()
        self._step = host_fed_training_program().lower(state, data.train_batch_spec()).compile()
        logging.info("Compiled the training step in %.1f s.", time.perf_counter() - t)

    def batch_spec(self, state: TrainState) -> Any:
        return self._data.train_batch_spec()

    def start(self, state: TrainState) -> None:
        self._data.start(state)

    def train(self, state: TrainState, max_steps: int) -> TrainChunk:
        """`max_steps` steps, one dispatch each."""
        losses = []
        for _ in range(max_steps):
            state, metrics = self._step(state, self._data.next_batch())
            losses.append(metrics["loss"])
        return TrainChunk(state, np.asarray(jnp.stack(losses)), 0.0)

    def population_batches(self, step: int) -> Iterator[dict[str, jax.Array]]:
        return self._data.population_batches(step)

    def latest_batch(self, step: int) -> dict[str, jax.Array]:
        return self._data.batch(step - 1)


def _evaluation_record(
    step: int,
    losses: np.ndarray,
    result: evaluation.Evaluation,
    given: Hooks,
    on_train: evaluation.Evaluation | None = None,
) -> dict[str, Any]:
    """One model's `metrics.jsonl` record of an evaluation; the training loss is the mean since the last one (the
    training network's, on its mini-batches); with `on_train`, the inference network's loss and accuracy on the
    first `eval_train_examples` training examples too ("train_eval_loss", "train_accuracy")."""
    metrics = steps.loss_and_accuracy(result.sums)
    record = {"step": step, "train_loss": float(np.mean(losses))}
    record.update(test_loss=metrics["loss"], test_accuracy=metrics["accuracy"])
    if on_train is not None:
        train = steps.loss_and_accuracy(on_train.sums)
        record.update(train_eval_loss=train["loss"], train_accuracy=train["accuracy"])
    for hook, collected in zip(given.evaluation, result.collected or ()):
        record.update(hook.summarize(collected))
    return record


def _next_boundary(step: int, config: ml_collections.ConfigDict, given: Hooks) -> int:
    """The first step after `step` at which the loop must act: dispatch, evaluate, measure, checkpoint, start or
    stop the profiler's trace, or stop."""
    periods = [config.steps_per_dispatch, config.eval_every, config.checkpoint_every]
    periods += [hook.every for hook in given.measurement]
    profiled = [s for s in config_schema.profile_range(config) or () if s > step]
    return min(min((step // every + 1) * every for every in periods), *profiled, config.num_steps)


class _Profiler:
    """`config.profile_steps` = "START:END": a `jax.profiler` trace of the training steps that take the state from
    step START to step END, written to `WORKDIR/plugins/profile/<time>/<host>.xplane.pb` (TensorBoard's profile
    tab: `tensorboard --logdir=WORKDIR`, with `tensorboard-plugin-profile` installed).

    The steps of a dispatch run fused in one program, so the trace holds whole dispatches: START and END are
    boundaries of the loop (`_next_boundary`) and the trace starts before the first dispatch that begins at or
    after START and stops once the dispatch that reaches END has finished (its state is ready). Extra boundaries
    change no result (splitting a dispatch is exact), but a dispatch of a length not run before is compiled
    first, inside the trace: a range on multiples of `steps_per_dispatch` with START > 0 avoids that. A run
    resumed at or past END traces nothing; one resumed inside the range traces from where it resumes. Only
    process 0 traces, and a group of models (a sweep's) is traced once, into the first model's workdir."""

    def __init__(self, config: ml_collections.ConfigDict, workdir: Path, primary: bool):
        self._range = config_schema.profile_range(config) if primary else None
        self._workdir, self._tracing, self._first = workdir, False, 0

    def before(self, step: int) -> None:
        if self._range and not self._tracing and self._range[0] <= step < self._range[1]:
            jax.profiler.start_trace(self._workdir)
            self._tracing, self._first = True, step

    def after(self, step: int, chunk: TrainChunk) -> None:
        if self._tracing and step >= self._range[1]:
            jax.block_until_ready(chunk.state)
            self.stop()
            logging.info("Profiled steps %d to %d: %s/plugins/profile.", self._first, step, self._workdir)

    def stop(self) -> None:
        if self._tracing:
            self._tracing = False
            jax.profiler.stop_trace()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exception: object) -> None:
        self.stop()  # a run that stopped inside the range (diverged, interrupted) keeps what was traced


class _Run:
    """One model's run directory: its checkpoints, its records (process 0 writes them) and how it diverged."""

    def __init__(self, config: ml_collections.ConfigDict, workdir: Path, primary: bool, given: Hooks):
        self.config, self.workdir, self.primary = config, workdir, primary
        self.checkpoints = checkpoints.manager(workdir, config)
        self._filenames = [run_dir.METRICS_FILE] + [hook.filename for hook in given.measurement]
        self._writers: dict[str, run_dir.MetricsWriter] = {}
        self.diverged: DivergedError | None = None

    def start(self, step: int) -> None:
        if self.primary:
            run_dir.write_config(self.config, self.workdir)
            (self.workdir / run_dir.DIVERGED_FILE).unlink(missing_ok=True)
            self._writers = {name: run_dir.MetricsWriter(self.workdir, step, name) for name in self._filenames}

    def check_losses(self, step: int, losses: np.ndarray) -> None:
        """Records that the loss became NaN or infinite in the steps after `step`, if it did."""
        if self.diverged or np.isfinite(losses).all():
            return
        bad = int(np.argmin(np.isfinite(losses)))
        self.checkpoints.wait_until_finished()
        message = (
            f"diverged at step {step + bad + 1}: the training loss is {losses[bad]}. The last good checkpoint "
            f"(step {self.checkpoints.latest_step()}) is kept in {self.workdir / run_dir.CHECKPOINT_DIR}."
        )
        if self.primary:
            run_dir.write_atomically(self.workdir / run_dir.DIVERGED_FILE, message + "\n")
        self.diverged = DivergedError(message)

    def write(self, filename: str, record: dict[str, Any]) -> None:
        if not self.diverged and filename in self._writers:
            self._writers[filename].write(record)

    def save(self, step: int, state: TrainState, losses_since_evaluation: Sequence[float]) -> None:
        """Checkpoints `state` and the losses since the last evaluation, after putting every record written so far
        on disk."""
        if self.diverged:
            return
        for writer in self._writers.values():
            writer.sync(step)
        checkpoints.save(self.checkpoints, step, state, self.config, losses_since_evaluation)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exception: object) -> None:
        self.close()

    def close(self) -> None:
        self.checkpoints.wait_until_finished()
        self.checkpoints.close()
        for writer in self._writers.values():
            writer.close()
