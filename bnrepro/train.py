"""The training loop: one loop for every experiment, in the shape of Flax's ImageNet example.

Top to bottom: the model named by the config → the initial `TrainState` → `train_step` (pure, SGD on the
softmax cross-entropy) → `train_steps`, which fuses K steps into one program with `jax.lax.scan` and draws
their mini-batches on the device → `evaluate`, on the test set (or its first `eval_examples`) with population
statistics (Algorithm 2) → the inputs →
`train_and_evaluate`: the loop with evaluation, metrics (`metrics.jsonl`, TensorBoard, console), orbax
checkpoints, resumption and divergence detection.

Two inputs feed the same loop. `OnDeviceInput` (MNIST, Fashion-MNIST): the training set lives on the device.
Every epoch a permutation of it is drawn on the device, from a key derived from the seed and the epoch
number, and step i of the epoch gathers the examples permutation[i*B:(i+1)*B] inside the compiled program: no
host-to-device copy per step. (Gathering B rows per step, 4 pixels at a time, costs about what slicing a
permuted copy of the set would, without the copy.) `HostFedInput` (ImageNet): a grain pipeline on each host
reads its share of every mini-batch from disk, whose position in the stream is the step.
A run is a function of its config: the data position and the RNG are part of the checkpointed state, so a
run killed at any moment and resumed ends with exactly the parameters of an uninterrupted one.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import flax.linen as nn
import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
import tensorboardX
from absl import logging
from flax import struct
from flax.training import train_state

from bnrepro import config_schema, data, diagnostics, layers, models
from bnrepro.data import imagenet

METRICS_FILE = "metrics.jsonl"
DIAGNOSTICS_FILE = "diagnostics.jsonl"  # `diagnostics.measure` records, every `config.diagnostics_every` steps
CONFIG_FILE = "config.json"
DIVERGED_FILE = "DIVERGED"
CHECKPOINT_DIR = "checkpoints"
# Keys that may change when a run is resumed: none of them changes what is computed at a given step.
RESUMABLE_CHANGES = ("num_steps", "eval_every", "checkpoint_every", "steps_per_dispatch", "cpu_cores", "data_dir")
PERCENTILES = (15, 50, 85)  # of the plotted unit's input over test examples: Fig. 1(b, c)
INIT_COMPILER_OPTIONS = {"xla_backend_optimization_level": 1}  # see create_train_state


class DivergedError(RuntimeError):
    """The training loss became NaN or infinite."""


class TrainState(train_state.TrainState):
    """`step`, `params`, `opt_state` (and the static `apply_fn`, `tx`) as in Flax, plus:

    Attributes:
      batch_stats: the BN layers' moving averages (empty without BN).
      rng: the raw key data (uint32) every epoch's shuffling is derived from.
      epoch: the epoch the data position is in (on-device inputs; a host-fed input's position is `step`).
      batch_index: the mini-batches of that epoch already drawn.
    """

    batch_stats: Any
    rng: jax.Array
    epoch: jax.Array
    batch_index: jax.Array


@struct.dataclass
class Dataset:
    """A split on the device, one row per example, so that a mini-batch is B rows gathered inside the
    compiled program. uint8 images are stored as 32-bit words of 4 pixels: XLA's CPU gather works element by
    element, and gathering single bytes costs ~8% of an MNIST step (4 bytes at a time, ~3%).

    Attributes:
      rows: (N, row length) the examples' pixels, uint32 words of 4 uint8 pixels where possible.
      labels: (N,) int32 class labels.
      example_shape: the shape of one image, e.g. (28, 28).
      dtype: the images' dtype, e.g. uint8.
    """

    rows: jax.Array
    labels: jax.Array
    example_shape: tuple[int, ...] = struct.field(pytree_node=False)
    dtype: np.dtype = struct.field(pytree_node=False)

    @classmethod
    def create(cls, images: np.ndarray, labels: np.ndarray) -> Dataset:
        """Puts `images` (N, ...) and `labels` (N,) on the device."""
        rows = np.ascontiguousarray(images.reshape(len(images), -1))
        if rows.dtype == np.uint8 and rows.shape[1] % 4 == 0:
            rows = rows.view(np.uint32)
        return cls(jnp.asarray(rows), jnp.asarray(labels), tuple(images.shape[1:]), images.dtype)

    def take(self, indices: jax.Array) -> tuple[jax.Array, jax.Array]:
        """The images (len(indices), *example_shape) and labels of the examples `indices`."""
        rows = jnp.take(self.rows, indices, axis=0)
        if rows.dtype != self.dtype:  # words of 4 pixels, in memory order (as numpy's view made them)
            rows = jax.lax.bitcast_convert_type(rows, self.dtype)
        return rows.reshape(indices.shape + self.example_shape), jnp.take(self.labels, indices, axis=0)


def create_model(model_config: ml_collections.ConfigDict) -> nn.Module:
    """The network `model_config.name` names, with the other `model_config` keys as its attributes."""
    kwargs = {k: v for k, v in model_config.items() if k != "name"}  # `name` is a Flax Module attribute
    return models.model_class(model_config.name)(**kwargs)


def preprocess(images: jax.Array) -> jax.Array:
    """uint8 pixels to float32 in [0, 1]; float images (a host pipeline normalized them already) pass as they are."""
    if jnp.issubdtype(images.dtype, jnp.floating):
        return images
    return images.astype(jnp.float32) * (1.0 / 255.0)


def create_train_state(
    config: ml_collections.ConfigDict, model: nn.Module, rng: jax.Array, example_images: jax.Array
) -> TrainState:
    """Initial parameters, BN statistics, optimizer state and data position."""
    init_rng, data_rng = jax.random.split(rng)
    # One compiled program: op by op, initialization compiles dozens of small ones (seconds on CPU). Its cost
    # is LLVM optimizing one random-number generator per weight (~70 in the small BN-Inception): at -O1 it
    # compiles ~4x faster than at XLA's default -O3, into the same parameters bit for bit (tested).
    init = jax.jit(lambda r, x: model.init(r, preprocess(x), train=False)).lower(init_rng, example_images)
    variables = init.compile(compiler_options=INIT_COMPILER_OPTIONS)(init_rng, example_images)
    return TrainState.create(
        apply_fn=model.apply,
        params=variables["params"],
        tx=create_optimizer(config),
        batch_stats=variables.get("batch_stats", {}),
        rng=jax.random.key_data(data_rng),
        epoch=jnp.zeros((), jnp.int32),
        batch_index=jnp.zeros((), jnp.int32),
    ).replace(step=jnp.zeros((), jnp.int32))


def create_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """The update rule: `optimizer` = "sgd" (with `momentum` if > 0) or "rmsprop" (Tieleman & Hinton; the BN-LSTM
    runs of Cooijmans et al. 2016), after clipping the gradient's global norm to `grad_clip_norm` (if > 0) and
    adding L2 weight decay on the weights (`kernel`s; not on BN's gamma/beta nor on biases, as TF-slim's
    Inception regularizes only its convolutions' weights). The learning rate decays exponentially,
    lr * lr_decay_rate^(step / lr_decay_steps) (Sec. 4.2: "decayed exponentially"; the accelerated BN runs decay
    6x faster, i.e. lr_decay_steps / 6). Plain constant-rate SGD by default. The learning rate (and momentum)
    are kept in the optimizer state (`optax.inject_hyperparams`)."""
    learning_rate = config.learning_rate
    if config.lr_decay_rate < 1.0:
        learning_rate = optax.exponential_decay(config.learning_rate, config.lr_decay_steps, config.lr_decay_rate)
    # The rate lives in the optimizer state, so models trained together (`train_group`) can each have their own.
    momentum = config.momentum or None  # 0: none
    if config.optimizer == "rmsprop":
        update = optax.inject_hyperparams(optax.rmsprop)(learning_rate, momentum=momentum)
    else:
        update = optax.inject_hyperparams(optax.sgd)(learning_rate, momentum=momentum)

    def weights_only(params):
        return jax.tree_util.tree_map_with_path(lambda path, _: path[-1].key == "kernel", params)

    steps = [
        *([optax.clip_by_global_norm(config.grad_clip_norm)] if config.grad_clip_norm else []),
        *([optax.add_decayed_weights(config.weight_decay, mask=weights_only)] if config.weight_decay else []),
    ]
    return optax.chain(*steps, update) if steps else update


def current_learning_rate(opt_state: Any) -> jax.Array:
    """The learning rate of `create_optimizer`'s update rule in `opt_state`: the one its latest step used (with a
    decay schedule; the initial rate before the first step). A group's states give one per model."""
    injected = (optax.InjectHyperparamsState, optax.InjectStatefulHyperparamsState)
    for leaf in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, injected)):
        if isinstance(leaf, injected):
            return leaf.hyperparams["learning_rate"]
    raise ValueError("current_learning_rate: the optimizer state has no injected learning rate.")


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy over the mini-batch."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def training_loss(
    state: TrainState, params: Any, batch: Mapping[str, jax.Array], rngs: Mapping[str, jax.Array]
) -> tuple[jax.Array, Any]:
    """The mini-batch's cross-entropy under `params` in training mode (BN on the mini-batch's own moments,
    Algorithm 1; dropout and noisy BN drawing from `rngs`), and the updated `batch_stats` collection."""
    logits, updates = state.apply_fn(
        {"params": params, "batch_stats": state.batch_stats}, batch["image"], train=True, mutable=["batch_stats"],
        rngs=rngs,
    )  # fmt: skip
    return cross_entropy(logits, batch["label"]), updates


def train_step(state: TrainState, batch: Mapping[str, jax.Array]) -> tuple[TrainState, dict[str, jax.Array]]:
    """One SGD step on a mini-batch; BN normalizes with the mini-batch's own moments (Algorithm 1).
    Dropout, where a model has it, draws from a key of its own for every step."""
    dropout_rng = jax.random.fold_in(jax.random.split(jax.random.wrap_key_data(state.rng))[1], state.step)
    rngs = {"dropout": dropout_rng, "bn_noise": jax.random.fold_in(dropout_rng, 1)}
    loss_fn = functools.partial(training_loss, state, batch=batch, rngs=rngs)
    (loss, updates), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    state = state.apply_gradients(grads=grads, batch_stats=updates.get("batch_stats", state.batch_stats))
    return state, {"loss": loss}


def epoch_permutation(rng: jax.Array, epoch: jax.Array, num_examples: int) -> jax.Array:
    """The order in which `epoch` visits the training set: a uniformly random permutation, the same
    whenever the same epoch is replayed. One sort by 64 random bits per example (ties are ~1e-10 likely):
    half the cost of `jax.random.permutation`'s two 32-bit rounds, and it runs once per epoch."""
    bits = jax.random.bits(jax.random.fold_in(jax.random.wrap_key_data(rng), epoch), (2, num_examples))
    return jax.lax.sort((bits[0], bits[1], jnp.arange(num_examples, dtype=jnp.int32)), num_keys=2)[-1]


def train_steps(
    state: TrainState,
    train_data: Dataset,
    permutation: jax.Array,
    *,
    batch_size: int,
    num_steps: int,
    batch_sharding: jax.sharding.Sharding | None = None,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """`num_steps` consecutive `train_step`s in one program. Mini-batch i of the epoch is the examples
    `permutation[i*B:(i+1)*B]`, gathered on the device. Returns the state and each step's metrics.

    With `batch_sharding` (data parallelism, `data_parallel_sharding`) each mini-batch is split across the
    devices and the replicated parameters see the whole batch: BN's statistics are then global over all
    devices (XLA adds the cross-device reductions), unless the model's `bn_virtual_batch_size` normalizes
    each device's share, the paper's per-replica mini-batches, on its own."""

    def step(state, _):
        indices = jax.lax.dynamic_slice_in_dim(permutation, state.batch_index * batch_size, batch_size)
        images, labels = train_data.take(indices)
        if batch_sharding is not None:
            images, labels = jax.lax.with_sharding_constraint((images, labels), batch_sharding)
        state, metrics = train_step(state, {"image": preprocess(images), "label": labels})
        return state.replace(batch_index=state.batch_index + 1), metrics

    if num_steps == 1:  # no loop: in XLA:CPU's while loop convolutions run several times slower (measured
        # on the small BN-Inception: 2 vs 8 steps/s), so conv nets on CPU train with steps_per_dispatch = 1.
        state, metrics = step(state, None)
        return state, jax.tree.map(lambda m: m[None], metrics)
    return jax.lax.scan(step, state, length=num_steps)


def data_parallel_sharding(num_devices: int, batch_size: int) -> jax.sharding.NamedSharding | None:
    """How a mini-batch is split across the first `num_devices` devices (0: all of them): along its leading
    axis, named "batch"; None for a single device. The batch must split evenly."""
    return _leading_axis_sharding(num_devices, "batch", batch_size, f"config.batch_size = {batch_size}")


def model_axis_sharding(num_devices: int, num_models: int) -> jax.sharding.NamedSharding | None:
    """How the models of a group (`train_group`) are split across the first `num_devices` devices (0: all of
    them): along the leading axis of their stacked states, named "models"; None for a single device."""
    return _leading_axis_sharding(num_devices, "models", num_models, f"a group of {num_models} models")


def _leading_axis_sharding(num_devices: int, axis: str, size: int, what: str) -> jax.sharding.NamedSharding | None:
    devices = jax.devices()[: num_devices or None]
    if len(devices) == 1:
        return None
    if size % len(devices):
        raise ValueError(f"{what}: does not split evenly across {len(devices)} devices (config.num_devices).")
    mesh = jax.sharding.Mesh(np.asarray(devices), (axis,), axis_types=(jax.sharding.AxisType.Auto,))
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(axis))


def fixed_rngs() -> dict[str, jax.Array]:
    """The training network's random streams (dropout, noisy BN) with fixed keys, for passes that must be
    deterministic, such as the population statistics."""
    return {"dropout": jax.random.key(0), "bn_noise": jax.random.key(1)}


def population_batch_stats(model: nn.Module, state: TrainState, batches: jax.Array) -> Any:
    """Algorithm 2, steps 8-9: E[x] = E_B[mu_B] and Var[x] = m/(m-1) E_B[var_B] over the training
    mini-batches `batches` (K, m, ...) with the current parameters; empty for a net without BN."""
    if not state.batch_stats:
        return state.batch_stats
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    # The pass runs the training network, dropout included: it gets keys, fixed so evaluation is deterministic.
    return layers.population_statistics(model, variables, batches, rngs=fixed_rngs())


def evaluate(state: TrainState, batch_stats: Any, images: jax.Array, labels: jax.Array, *, plot_layer: str) -> dict:
    """Loss and accuracy of the inference network (Algorithm 2, step 11) on preprocessed `images`.

    Each example's output depends on that example only (`batch_stats` are fixed), so the result does not
    depend on how the test set is batched. With `plot_layer` (a module path such as `DenseBN_2`), also the
    `preactivation` of that layer, the input to its nonlinearity, for every example: Fig. 1(b, c).
    """
    logits, intermediates = state.apply_fn(
        {"params": state.params, "batch_stats": batch_stats}, images, train=False, mutable=["intermediates"]
    )
    metrics = {
        "loss": cross_entropy(logits, labels),
        "accuracy": jnp.mean(jnp.argmax(logits, -1) == labels),
    }
    if plot_layer:
        tree = intermediates["intermediates"]
        for name in plot_layer.split("/"):
            tree = tree[name]
        preactivation = tree["preactivation"][0]
        metrics["preactivation"] = preactivation.reshape((-1, preactivation.shape[-1]))
    return metrics


def unit_percentiles(preactivation: np.ndarray, unit: int) -> dict[str, Any]:
    """Fig. 1(b, c): the 15th, 50th and 85th percentiles over examples of unit `unit`'s input, and the
    median of every unit (`p50_units`). Linear interpolation, as `np.percentile`; computed on the host,
    where sorting 10,000 x 100 values takes milliseconds (XLA's CPU sort takes ~30x longer)."""
    ordered = np.sort(np.asarray(preactivation), axis=0).astype(np.float64)
    if not 0 <= unit < ordered.shape[1]:
        raise ValueError(f"config.plot_unit = {unit}: the plotted layer has {ordered.shape[1]} units.")
    position = np.asarray(PERCENTILES) / 100 * (len(ordered) - 1)
    low = np.floor(position).astype(int)
    high = np.minimum(low + 1, len(ordered) - 1)
    fraction = (position - low)[:, None]
    quantiles = ordered[low] * (1 - fraction) + ordered[high] * fraction  # (percentiles, units)
    result = {f"p{q}": float(quantiles[i, unit]) for i, q in enumerate(PERCENTILES)}
    result["p50_units"] = quantiles[PERCENTILES.index(50)].tolist()
    return result


class MetricsWriter:
    """One JSON object per record in `WORKDIR/FILENAME` (`metrics.jsonl`: one per evaluation), and the scalars
    as TensorBoard events. Arrays are written as (nested) lists.

    Resuming from step T drops what a killed run wrote after T, so no step appears twice.
    """

    def __init__(self, workdir: Path, resume_step: int, filename: str = METRICS_FILE):
        self._workdir = workdir
        self._path = workdir / filename
        if self._path.exists():
            kept = [line for line in self._path.read_text().splitlines() if json.loads(line)["step"] <= resume_step]
            self._path.write_text("".join(line + "\n" for line in kept))
        # On resumption, TensorBoard drops the killed run's events after `resume_step`.
        self._tensorboard = self._open_tensorboard(resume_step, purge_step=resume_step + 1 if resume_step else None)

    def _open_tensorboard(self, step: int, purge_step: int | None = None) -> tensorboardX.SummaryWriter:
        # One events file per segment between checkpoints; the suffix keeps names unique within a second.
        suffix = f".{self._path.stem}.{step}"
        return tensorboardX.SummaryWriter(str(self._workdir), purge_step=purge_step, filename_suffix=suffix)

    def write(self, record: Mapping[str, Any]) -> None:
        record = {
            k: np.asarray(v).tolist() if isinstance(v, (np.ndarray, np.generic)) else v for k, v in record.items()
        }
        with self._path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        for key, value in record.items():
            if key != "step" and isinstance(value, (int, float)):
                self._tensorboard.add_scalar(key, value, record["step"])
        self._tensorboard.flush()

    def sync(self, step: int) -> None:
        """Puts everything written so far on disk; call it before checkpointing `step`. (tensorboardX writes
        from a thread, and only `close` waits for it.)"""
        self._tensorboard.close()
        self._tensorboard = self._open_tensorboard(step)

    def close(self) -> None:
        self._tensorboard.close()


def _check_resumed_config(config: ml_collections.ConfigDict, workdir: Path) -> None:
    """Refuses to resume a run under a config that changes what is computed (`RESUMABLE_CHANGES` may change)."""
    path = workdir / CONFIG_FILE
    if not path.exists():
        return
    saved, current = _flatten(json.loads(path.read_text())), _flatten(_config_json(config))
    changed = sorted(
        k for k in set(saved) | set(current) if saved.get(k) != current.get(k) and k not in RESUMABLE_CHANGES
    )
    if changed:
        raise ValueError(
            f"config.{changed[0]}: {workdir} holds a run with {changed[0]}={saved.get(changed[0])!r}, not "
            f"{current.get(changed[0])!r} (changed keys: {changed}). Use a new --workdir."
        )


def _config_json(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The config as `config.json` stores it (tuples become lists)."""
    return json.loads(config.to_json_best_effort())


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


def _next_boundary(step: int, every: int) -> int:
    """The first multiple of `every` after `step`."""
    return (step // every + 1) * every


class TrainChunk(NamedTuple):
    """What an input's `train` returns: the state after the steps, each step's loss, and the seconds spent
    compiling (left out of the steps/s the loop reports)."""

    state: TrainState
    losses: np.ndarray
    compile_seconds: float


class OnDeviceInput:
    """A dataset small enough to live on the device (MNIST, Fashion-MNIST): mini-batches are gathered inside the
    compiled program (`train_steps`), up to `steps_per_dispatch` steps at a time, and the whole test set is
    evaluated in one program. Its position is the state's (epoch, batch_index).

    With `grouped`, the state holds several models stacked on a leading axis (`train_group`): every program
    is `jax.vmap`ped over them, each model drawing its own epoch permutations from its own key."""

    def __init__(self, config: ml_collections.ConfigDict, model: nn.Module, place, batch_sharding, grouped=False):
        splits = data.load_dataset(
            config.dataset, config.data_source, data_dir=config.data_dir or None,
            validation_size=config.validation_size,
        )  # fmt: skip
        num_train = len(splits.train.labels)
        self.steps_per_epoch = num_train // config.batch_size
        if self.steps_per_epoch == 0:
            raise ValueError(f"config.batch_size = {config.batch_size}: more than the {num_train} training examples.")
        if config.population_batches > self.steps_per_epoch:
            raise ValueError(
                f"config.population_batches = {config.population_batches}: more than the {self.steps_per_epoch} "
                "mini-batches of an epoch."
            )
        logging.info(
            "%s (%s): %d training examples (%d steps per epoch), %d test examples.",
            config.dataset, config.data_source, num_train, self.steps_per_epoch, len(splits.test.labels),
        )  # fmt: skip
        self._config, self._model, self._batch_sharding = config, model, batch_sharding
        self.train_data = place(Dataset.create(splits.train.images, splits.train.labels))
        self._test_images = place(preprocess(jnp.asarray(splits.test.images)))
        self._test_labels = place(jnp.asarray(splits.test.labels))
        self._place, self._grouped = place, grouped
        self._permute = jax.jit(self._over_models(
            functools.partial(epoch_permutation, num_examples=num_train), (0, 0)
        ))  # fmt: skip
        self._programs = {}  # one compiled program per number of fused steps; there are few
        self._evaluation = self._diagnostics = None
        self._epoch, self._batch_index, self._permutation = 0, 0, None

    def example_images(self) -> jax.Array:
        return self.train_data.take(jnp.arange(self._config.batch_size))[0]

    def compile(self, state: TrainState) -> None:
        """Compiles the evaluation (and the diagnostics, if on), so that a wrong `plot_layer`, `plot_unit` or
        `diagnostics_layers` stops the run before training."""
        self._evaluation = self._compile_evaluation(state)
        if self._config.diagnostics_every:
            self._diagnostics = self._compile_diagnostics(state)

    def _over_models(self, function, in_axes: tuple[int | None, ...]):
        """`function` vmapped over the models of a group (axis 0 of the arguments whose `in_axes` is 0)."""
        return jax.vmap(function, in_axes=in_axes) if self._grouped else function

    def start(self, state: TrainState) -> None:
        """Continues from `state`'s data position."""
        epoch, batch_index = (np.ravel(state.epoch)[0], np.ravel(state.batch_index)[0])  # the same for all models
        self._epoch, self._batch_index, self._permutation = int(epoch), int(batch_index), None

    def _permutation_of(self, state: TrainState) -> jax.Array:
        if self._permutation is None:  # a group's permutations stay where its models are, one per model
            permutation = self._permute(state.rng, state.epoch)
            self._permutation = permutation if self._grouped else self._place(permutation)
        return self._permutation

    def train(self, state: TrainState, max_steps: int) -> TrainChunk:
        """At most `max_steps` steps in one program, never past the end of the epoch."""
        if self._batch_index == self.steps_per_epoch:
            self._epoch, self._batch_index, self._permutation = self._epoch + 1, 0, None
            state = state.replace(
                epoch=jnp.full_like(state.epoch, self._epoch), batch_index=jnp.zeros_like(state.batch_index)
            )
        permutation = self._permutation_of(state)
        num_steps = min(max_steps, self.steps_per_epoch - self._batch_index)
        compile_seconds = 0.0
        if num_steps not in self._programs:
            t = time.perf_counter()
            steps = functools.partial(
                train_steps, batch_size=self._config.batch_size, num_steps=num_steps,
                batch_sharding=self._batch_sharding,
            )  # fmt: skip
            program = jax.jit(self._over_models(steps, (0, None, 0)))
            self._programs[num_steps] = program.lower(state, self.train_data, permutation).compile()
            compile_seconds = time.perf_counter() - t
            logging.info("Compiled the %d-step training program in %.1f s.", num_steps, compile_seconds)
        state, metrics = self._programs[num_steps](state, self.train_data, permutation)
        losses = np.asarray(metrics["loss"])  # waits for the program; the next one needs its result anyway
        self._batch_index += num_steps
        return TrainChunk(state, losses, compile_seconds)

    def evaluate(self, state: TrainState) -> dict[str, Any]:
        """Test loss and accuracy (and the plotted layer's preactivations) of the inference network."""
        return self._evaluation(
            state, self.train_data, self._permutation_of(state), self._test_images, self._test_labels
        )

    def _compile_evaluation(self, state: TrainState):
        """The evaluation program: takes (state, train data, epoch permutation, test images, test labels) and
        evaluates the first `eval_examples` test examples (0: all of them)."""
        config, model = self._config, self._model
        num_test = len(self._test_labels)
        if config.eval_examples > num_test:
            raise ValueError(f"config.eval_examples = {config.eval_examples}: more than the {num_test} test examples.")

        def evaluation(state, train_data, permutation, test_images, test_labels):
            count = config.eval_examples or None
            test_images, test_labels = test_images[:count], test_labels[:count]
            batch_stats = state.batch_stats
            if config.eval_statistics == "population":  # the first K training mini-batches of the epoch
                indices = permutation[: config.population_batches * config.batch_size]
                images = preprocess(train_data.take(indices)[0])
                batches = images.reshape((config.population_batches, config.batch_size) + images.shape[1:])
                batch_stats = population_batch_stats(model, state, batches)
            return evaluate(state, batch_stats, test_images, test_labels, plot_layer=config.plot_layer)

        try:
            lowered = jax.jit(self._over_models(evaluation, (0, None, 0, None, None))).lower(
                state, self.train_data, self._permutation_spec(state), self._test_images, self._test_labels
            )
        except KeyError as e:
            raise ValueError(
                f"config.plot_layer = {config.plot_layer!r}: the model sows no preactivation at {e}."
            ) from None
        if config.plot_layer and config.plot_unit >= lowered.out_info["preactivation"].shape[-1]:
            raise ValueError(f"config.plot_unit = {config.plot_unit}: {config.plot_layer} has fewer units.")
        return lowered.compile()

    def _permutation_spec(self, state: TrainState) -> jax.ShapeDtypeStruct:
        """The shape of an epoch permutation (one per model of a group)."""
        labels = self.train_data.labels
        if self._grouped:
            return jax.ShapeDtypeStruct(state.rng.shape[:1] + labels.shape, jnp.int32)
        return jax.ShapeDtypeStruct(labels.shape, jnp.int32, sharding=labels.sharding)

    def diagnose(self, state: TrainState) -> dict[str, Any]:
        """`diagnostics.measure` on the mini-batch of the latest training step."""
        return self._diagnostics(state, self.train_data, self._permutation_of(state))

    def _compile_diagnostics(self, state: TrainState):
        config = self._config

        def diagnose(state, train_data, permutation):
            start = (state.batch_index - 1) * config.batch_size
            images, labels = train_data.take(jax.lax.dynamic_slice_in_dim(permutation, start, config.batch_size))
            batch = {"image": preprocess(images), "label": labels}
            return diagnostics.measure(state, batch, config.diagnostics_layers, config.diagnostics_step_scales)

        function = self._over_models(diagnose, (0, None, 0))
        return compile_diagnostics(config, function, state, self.train_data, self._permutation_spec(state))


def compile_diagnostics(config: ml_collections.ConfigDict, function, *args: Any):
    """`function` (one that calls `diagnostics.measure`) compiled for `args`; a layer of `diagnostics_layers` that
    the model lacks is a config error, raised before training."""
    try:
        return jax.jit(function).lower(*args).compile()
    except ValueError as e:
        raise ValueError(f"config.diagnostics_layers = {config.diagnostics_layers!r}: {e}") from None


def eval_sums(state: TrainState, batch_stats: Any, batch: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
    """The summed loss, the number correct and the number of real examples (`mask`) of one padded evaluation
    batch, through the inference network (Algorithm 2, step 11)."""
    logits = state.apply_fn({"params": state.params, "batch_stats": batch_stats}, batch["image"], train=False)
    mask = batch["mask"].astype(jnp.float32)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
    return {
        "loss": jnp.sum(losses * mask),
        "correct": jnp.sum((jnp.argmax(logits, -1) == batch["label"]) * mask),
        "count": jnp.sum(mask),
    }


class HostFedInput:
    """A dataset read from disk by a grain pipeline on the host (ImageNet, `bnrepro.data.imagenet`): each
    process reads its share of every mini-batch, which is split across the devices, one step per dispatch.

    The pipeline is a function of the seed and the batch's position, so step T's mini-batch is batch T of
    the stream: resuming at step T skips T batches, and there is no iterator state to checkpoint. Evaluation
    runs over the whole `input.eval_split`, batch by batch; with `eval_statistics="population"` BN uses
    Algorithm 2's statistics of `population_batches` training mini-batches, drawn from a stream of their own
    seeded by the step (so a resumed run evaluates exactly as an uninterrupted one)."""

    def __init__(self, config: ml_collections.ConfigDict, model: nn.Module, batch_sharding):
        self._config, self._batch_sharding = config, batch_sharding
        devices = batch_sharding.num_devices if batch_sharding is not None else 1
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
        self._read_options = grain.ReadOptions(
            num_threads=config.input.read_threads, prefetch_buffer_size=config.input.prefetch_buffer_size
        )
        self._program = self._diagnostics = None
        self._batches = None
        self._moments = jax.jit(
            lambda state, images: layers.minibatch_moments(
                model, {"params": state.params, "batch_stats": state.batch_stats}, images,
                rngs=fixed_rngs(),
            )
        )  # fmt: skip
        self._population = jax.jit(layers.population_from_moments)
        self._eval_sums = jax.jit(eval_sums)

    def example_images(self) -> np.ndarray:
        """One blank image: initialization needs only the shape."""
        size = self._config.input.image_size
        return np.zeros((1, size, size, 3), np.float32)

    def _train_batches(self, seed: int, start_batch: int, read_options: grain.ReadOptions | None = None):
        config = self._config
        return iter(
            imagenet.train_dataset(
                self._train_source, batch_size=config.batch_size // jax.process_count(), seed=seed,
                image_size=config.input.image_size, shuffle=config.input.shuffle,
                distortion=config.input.distortion, start_batch=start_batch,
                read_options=read_options or self._read_options,
            )
        )  # fmt: skip

    def _to_devices(self, batch: Mapping[str, np.ndarray]) -> dict[str, jax.Array]:
        """This process's share of a global batch, put on the devices (split across them when sharded)."""
        if self._batch_sharding is None:
            return jax.device_put(dict(batch))
        return {k: jax.make_array_from_process_local_data(self._batch_sharding, v) for k, v in batch.items()}

    def compile(self, state: TrainState) -> None:
        """Compiles the training step for the global batch (and the diagnostics, if on: a wrong
        `diagnostics_layers` stops the run before training)."""
        config = self._config
        t, size = time.perf_counter(), config.input.image_size
        batch = {
            "image": jax.ShapeDtypeStruct((config.batch_size, size, size, 3), jnp.float32),
            "label": jax.ShapeDtypeStruct((config.batch_size,), jnp.int32),
        }
        if self._batch_sharding is not None:
            batch = {k: v.update(sharding=self._batch_sharding) for k, v in batch.items()}
        self._program = jax.jit(train_step).lower(state, batch).compile()
        logging.info("Compiled the training step in %.1f s.", time.perf_counter() - t)
        if config.diagnostics_every:
            measure = functools.partial(
                diagnostics.measure, layer_names=config.diagnostics_layers, step_scales=config.diagnostics_step_scales
            )
            self._diagnostics = compile_diagnostics(config, measure, state, batch)

    def diagnose(self, state: TrainState) -> dict[str, Any]:
        """`diagnostics.measure` on the mini-batch of the latest step: batch step - 1 of the stream, read again
        (without prefetching the batches after it)."""
        once = grain.ReadOptions(num_threads=self._config.input.read_threads, prefetch_buffer_size=0)
        batch = next(self._train_batches(self._config.seed, int(state.step) - 1, once))
        return self._diagnostics(state, self._to_devices(batch))

    def start(self, state: TrainState) -> None:
        """Continues from `state`'s step: the stream starts at its batch `step`."""
        self._batches = self._train_batches(self._config.seed, int(state.step))

    def train(self, state: TrainState, max_steps: int) -> TrainChunk:
        """`max_steps` steps, each dispatched as soon as its batch is read (grain prefetches the next ones)."""
        losses = []
        for _ in range(max_steps):
            state, metrics = self._program(state, self._to_devices(next(self._batches)))
            losses.append(metrics["loss"])
        return TrainChunk(state, np.asarray(jnp.stack(losses)), 0.0)

    def evaluate(self, state: TrainState) -> dict[str, Any]:
        """Loss and top-1 accuracy of the inference network on every example of `input.eval_split` once."""
        config = self._config
        batch_stats = state.batch_stats
        if config.eval_statistics == "population" and batch_stats:
            seed = int(np.random.SeedSequence([config.seed, int(state.step)]).generate_state(1)[0])
            batches = self._train_batches(seed, start_batch=0)
            moments = [self._moments(state, self._to_devices(next(batches))["image"])
                       for _ in range(config.population_batches)]  # fmt: skip
            batch_stats = self._population(jax.tree.map(lambda *m: jnp.stack(m), *moments))
        sums = []
        for batch in imagenet.eval_dataset(
            self._eval_source, batch_size=config.input.eval_batch_size // jax.process_count(),
            image_size=config.input.image_size, read_options=self._read_options,
        ):  # fmt: skip
            sums.append(self._eval_sums(state, batch_stats, self._to_devices(batch)))
        total = jax.tree.map(lambda *v: float(np.sum(v)), *sums)
        return {"loss": total["loss"] / total["count"], "accuracy": total["correct"] / total["count"]}


def create_input(
    config: ml_collections.ConfigDict, model: nn.Module, place, batch_sharding, grouped: bool = False
) -> OnDeviceInput | HostFedInput:
    """The input `config.dataset` needs: ImageNet is read from disk on the host, the rest live on the device
    (where a group of models can share it)."""
    if "input" in config:
        return HostFedInput(config, model, batch_sharding)
    return OnDeviceInput(config, model, place, batch_sharding, grouped)


def _restore_latest(checkpoints: ocp.CheckpointManager, state: TrainState, config, workdir: Path) -> TrainState:
    """The state of the latest checkpoint in `workdir`, or `state` if there is none."""
    if checkpoints.latest_step() is None:
        return state
    _check_resumed_config(config, workdir)
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
    state = checkpoints.restore(checkpoints.latest_step(), args=ocp.args.StandardRestore(abstract))
    logging.info("Resumed from the checkpoint at step %d.", int(state.step))
    return state


GROUP_KEYS = ("seed", "learning_rate")  # what models trained together (`train_group`) may differ in


def check_group(configs: list[ml_collections.ConfigDict]) -> None:
    """Refuses configs that cannot train as one group: they may differ in `GROUP_KEYS` only, and in the
    learning rate only when it does not decay (a decay schedule is one function, shared by the group)."""
    flat = [_flatten(_config_json(config)) for config in configs]
    for other in flat[1:]:
        changed = sorted(k for k in set(flat[0]) | set(other) if flat[0].get(k) != other.get(k) and k not in GROUP_KEYS)
        if changed:
            raise ValueError(
                f"config.{changed[0]}: models trained as a group may differ only in {list(GROUP_KEYS)}, not in "
                f"{changed}."
            )
    if len({f["learning_rate"] for f in flat}) > 1 and configs[0].lr_decay_rate < 1.0:
        raise ValueError("config.learning_rate: a group with a learning-rate decay must share the learning rate.")
    if len(configs) > 1 and "input" in configs[0]:
        raise ValueError(f"config.dataset = {configs[0].dataset!r}: a host-fed dataset trains one model at a time.")


class _Run:
    """One model's files: its workdir, checkpoints, metrics writer (process 0) and how it diverged, if it did."""

    def __init__(self, config: ml_collections.ConfigDict, workdir: str | Path, primary: bool):
        self.config, self.workdir, self.primary = config, Path(workdir), primary
        self.checkpoints = ocp.CheckpointManager(
            (self.workdir / CHECKPOINT_DIR).absolute(), options=ocp.CheckpointManagerOptions(max_to_keep=2, create=True)
        )
        self.writer: MetricsWriter | None = None
        self.diagnostics: MetricsWriter | None = None
        self.diverged: DivergedError | None = None

    def start(self, step: int) -> None:
        if self.primary:
            text = json.dumps(_config_json(self.config), indent=2)
            (self.workdir / CONFIG_FILE).write_text(text + "\n")
            (self.workdir / DIVERGED_FILE).unlink(missing_ok=True)
            self.writer = MetricsWriter(self.workdir, resume_step=step)
            if self.config.diagnostics_every:
                self.diagnostics = MetricsWriter(self.workdir, resume_step=step, filename=DIAGNOSTICS_FILE)

    def diverge(self, step: int, losses: np.ndarray) -> None:
        """Records that the loss became NaN or infinite in the steps after `step`."""
        bad = int(np.argmin(np.isfinite(losses)))
        self.checkpoints.wait_until_finished()
        message = (
            f"diverged at step {step + bad + 1}: the training loss is {losses[bad]}. The last good checkpoint "
            f"(step {self.checkpoints.latest_step()}) is kept in {self.workdir / CHECKPOINT_DIR}."
        )
        if self.primary:
            (self.workdir / DIVERGED_FILE).write_text(message + "\n")
        self.diverged = DivergedError(message)

    def close(self) -> None:
        self.checkpoints.wait_until_finished()
        self.checkpoints.close()
        for writer in (self.writer, self.diagnostics):
            if writer:
                writer.close()


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path) -> TrainState:
    """Trains `config` in `workdir`, resuming from its latest checkpoint; returns the final state.

    Writes `metrics.jsonl` and TensorBoard events (one record per evaluation, every `eval_every` steps and
    at the end), orbax checkpoints every `checkpoint_every` steps and at the end, and `config.json`. With
    several processes (`jax.distributed`), every process trains and checkpoints, process 0 writes the files.

    Raises:
      ValueError: the config is invalid, or differs from the one the workdir's checkpoints were made with.
      DivergedError: the training loss became NaN or infinite (also written to `WORKDIR/DIVERGED`).
    """
    (result,) = train_group([config], [workdir])
    if isinstance(result, DivergedError):
        raise result
    return result


def train_group(
    configs: list[ml_collections.ConfigDict], workdirs: list[str | Path]
) -> list[TrainState | DivergedError]:
    """Trains models whose configs differ only in `GROUP_KEYS` (seed, learning rate) together: their states
    stacked on a leading axis and every program `jax.vmap`ped over them, one loop for all; with several devices
    (`num_devices`) the models are split across them (`model_axis_sharding`). Each model reads
    its own data order and writes its own workdir exactly as `train_and_evaluate` would alone (its metrics
    record the group's steps/s); a model whose loss diverges is recorded as diverged and the others go on.
    Resumes from the models' checkpoints, which must be at the same step.

    Returns:
      Each model's final state, or the `DivergedError` that stopped it.
    """
    for config in configs:
        config_schema.validate(config)
    check_group(configs)
    if len({Path(w).absolute() for w in workdirs}) != len(configs):
        raise ValueError(f"train_group: {len(configs)} configs need as many distinct workdirs, got {workdirs}.")
    config, grouped = configs[0], len(configs) > 1
    primary = jax.process_index() == 0
    if grouped:  # each device trains its share of the models on whole mini-batches
        batch_sharding, sharding = None, model_axis_sharding(config.num_devices, len(configs))
    else:  # the devices share every mini-batch
        batch_sharding = sharding = data_parallel_sharding(config.num_devices, config.batch_size)
    # The data (and a single model's state) are replicated on the devices.
    place = (lambda tree: tree) if sharding is None else (
        lambda tree: jax.device_put(tree, sharding.update(spec=jax.sharding.PartitionSpec()))
    )  # fmt: skip

    def place_state(states: list[TrainState]) -> TrainState:
        if not grouped:
            return place(states[0])
        return _stack(states) if sharding is None else jax.device_put(_stack(states), sharding)

    model = create_model(config.model)
    inputs = create_input(config, model, place, batch_sharding, grouped)
    states = [create_train_state(c, model, jax.random.key(c.seed), inputs.example_images()) for c in configs]
    inputs.compile(place_state(states))

    runs = [_Run(c, w, primary) for c, w in zip(configs, workdirs)]
    states = [_restore_latest(run.checkpoints, s, run.config, run.workdir) for run, s in zip(runs, states)]
    steps = {int(s.step) for s in states}
    if len(steps) > 1:
        raise ValueError(f"train_group: the models' checkpoints are at different steps {sorted(steps)}; train alone.")
    state = place_state(states)
    inputs.start(state)
    step = steps.pop()
    for run in runs:
        run.start(step)

    def member(tree: Any, i: int) -> Any:
        return jax.tree.map(lambda x: x[i], tree) if grouped else tree

    losses_since_eval, train_time, steps_timed = [], 0.0, 0
    start_step, start_time = step, time.perf_counter()
    while step < config.num_steps and not all(run.diverged for run in runs):
        boundaries = (config.steps_per_dispatch, config.eval_every, config.checkpoint_every)
        boundaries += (config.diagnostics_every,) if config.diagnostics_every else ()
        end = min(min(_next_boundary(step, every) for every in boundaries), config.num_steps)
        t = time.perf_counter()
        chunk = inputs.train(state, end - step)
        num_steps = chunk.losses.shape[-1]
        train_time, steps_timed = train_time + time.perf_counter() - t - chunk.compile_seconds, steps_timed + num_steps
        for i, run in enumerate(runs):
            if not run.diverged and not np.isfinite(member(chunk.losses, i)).all():
                run.diverge(step, member(chunk.losses, i))
        if all(run.diverged for run in runs):
            break
        state, step = chunk.state, step + num_steps
        losses_since_eval.append(chunk.losses)

        if config.diagnostics_every and step % config.diagnostics_every == 0:
            record = jax.device_get(inputs.diagnose(state))
            for i, run in enumerate(runs):
                if run.diagnostics and not run.diverged:
                    run.diagnostics.write({"step": step, **member(record, i)})

        if step % config.eval_every == 0 or step == config.num_steps:
            t = time.perf_counter()
            results = jax.device_get(inputs.evaluate(state))
            losses = np.concatenate(losses_since_eval, axis=-1)
            for i, run in enumerate(runs):
                if run.diverged or not run.writer:
                    continue
                result = member(results, i)
                run.writer.write({
                    "step": step,
                    "train_loss": float(np.mean(member(losses, i))),
                    "test_loss": float(result["loss"]),
                    "test_accuracy": float(result["accuracy"]),
                    **(unit_percentiles(result["preactivation"], config.plot_unit) if config.plot_layer else {}),
                    "steps_per_second": steps_timed / train_time,
                })  # fmt: skip
            elapsed = time.perf_counter() - start_time
            logging.info(
                "step %d/%d: train_loss %s, test_accuracy %s | %.1f steps/s, eval %.3f s, ETA %.0f s",
                step, config.num_steps, np.round(np.mean(losses, axis=-1), 4), np.round(results["accuracy"], 4),
                steps_timed / train_time, time.perf_counter() - t,
                (config.num_steps - step) * elapsed / (step - start_step),
            )  # fmt: skip
            losses_since_eval, train_time, steps_timed = [], 0.0, 0

        if step % config.checkpoint_every == 0 or step == config.num_steps:
            for i, run in enumerate(runs):
                if not run.diverged:
                    for writer in (run.writer, run.diagnostics):
                        if writer:
                            writer.sync(step)
                    run.checkpoints.save(step, args=ocp.args.StandardSave(member(state, i)))

    for run in runs:
        run.close()
    if step > start_step:
        logging.info("Trained steps %d to %d in %.1f s.", start_step, step, time.perf_counter() - start_time)
    return [run.diverged or member(state, i).replace(tx=s.tx) for i, (run, s) in enumerate(zip(runs, states))]


def _stack(states: list[TrainState]) -> TrainState:
    """Models' states stacked on a new leading axis; the optimizer of the first serves all (the learning rates
    are in the optimizer states)."""
    shared = [s.replace(tx=states[0].tx) for s in states]
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *shared)
