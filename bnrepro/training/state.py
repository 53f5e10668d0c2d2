"""A model's training state: `TrainState`, its initial value, the optimizer and the loss.

The state holds everything a run is a function of besides its config: parameters, BN's moving averages
(`batch_stats`), the optimizer state (the learning rate included) and the data position (the RNG key its epoch
permutations derive from, the epoch and the mini-batches drawn in it). Checkpointing the state is enough to
resume a run exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax.training import train_state


def run_once_compiler_options() -> dict[str, int | bool]:
    """Compile options for programs that run once (initialization) or once an epoch (the shuffle): built for
    start-up, not speed. LLVM at -O1 (XLA's default is -O3) and, on CPU, XLA:CPU's LLVM IR emitters instead of its
    MLIR fusion emitters. The Figure-1 net's init compiles in 0.49 s instead of 1.7 s (0.73 s at -O1 alone) and
    the shuffle of its 60,000 examples in 0.23 instead of 0.45-0.49 s, both running as fast as before and computing
    the same bits (tested). -O0 would not. Call it once JAX's backend is chosen (after `use_cpu_cores`)."""
    options: dict[str, int | bool] = {"xla_backend_optimization_level": 1}
    if jax.default_backend() == "cpu":
        options["xla_cpu_use_fusion_emitters"] = False
    return options


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


def preprocess(images: jax.Array) -> jax.Array:
    """uint8 pixels to float32 in [0, 1]; float images (a host pipeline normalized them already) pass as they are."""
    if jnp.issubdtype(images.dtype, jnp.floating):
        return images
    return images.astype(jnp.float32) * (1.0 / 255.0)


def create_train_state(
    config: ml_collections.ConfigDict, model: nn.Module, rng: jax.Array, example_images: jax.Array
) -> TrainState:
    """Initial parameters, BN statistics, optimizer state and data position (`initializer`, compiled)."""
    # One compiled program: op by op, initialization (the key split, each initializer, the optimizer's state)
    # compiles dozens of small ones (seconds on CPU). Its cost is LLVM compiling one random-number generator per
    # weight (~70 in the small BN-Inception: 17 s on one core, 54 s at XLA's default -O3), hence
    # run_once_compiler_options.
    return jax.jit(initializer(config, model), compiler_options=run_once_compiler_options())(rng, example_images)


def initializer(config: ml_collections.ConfigDict, model: nn.Module) -> Callable[[jax.Array, jax.Array], TrainState]:
    """The pure function `(rng, example_images) -> TrainState` that `create_train_state` compiles; under
    `jax.eval_shape` it gives the state's shapes without computing it."""

    def initial_state(rng: jax.Array, images: jax.Array) -> TrainState:
        init_rng, data_rng = jax.random.split(rng)
        variables = model.init(init_rng, preprocess(images), train=False)
        return TrainState.create(
            apply_fn=model.apply,
            params=variables["params"],
            tx=create_optimizer(config),
            batch_stats=variables.get("batch_stats", {}),
            rng=jax.random.key_data(data_rng),
            epoch=jnp.zeros((), jnp.int32),
            batch_index=jnp.zeros((), jnp.int32),
        ).replace(step=jnp.zeros((), jnp.int32))

    return initial_state


def create_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """The update rule: `optimizer` = "sgd" (with `momentum` if > 0) or "rmsprop" (Tieleman & Hinton; the BN-LSTM
    runs of Cooijmans et al. 2016), after clipping the gradient's global norm to `grad_clip_norm` (if > 0) and
    adding L2 weight decay on the weights (`kernel`s; not on BN's gamma/beta nor on biases, as TF-slim's
    Inception regularizes only its convolutions' weights). The learning rate decays exponentially,
    lr * lr_decay_rate^(step / lr_decay_steps) (Sec. 4.2: "decayed exponentially"; the accelerated BN runs decay
    6x faster, i.e. lr_decay_steps / 6). Plain constant-rate SGD by default.

    The learning rate (and momentum) live in the optimizer state (`optax.inject_hyperparams`): models stacked into
    one program (a sweep's vmapped group) then share one update rule with a rate each."""
    learning_rate = config.learning_rate
    if config.lr_decay_rate < 1.0:
        learning_rate = optax.exponential_decay(config.learning_rate, config.lr_decay_steps, config.lr_decay_rate)
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
    decay schedule; the initial rate before the first step). Stacked states give one per model."""
    injected = (optax.InjectHyperparamsState, optax.InjectStatefulHyperparamsState)
    for leaf in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, injected)):
        if isinstance(leaf, injected):
            return leaf.hyperparams["learning_rate"]
    raise ValueError("current_learning_rate: the optimizer state has no injected learning rate.")


def fixed_rngs() -> dict[str, jax.Array]:
    """The training network's random streams (dropout, noisy BN) with fixed keys, for passes that must be
    deterministic, such as the population statistics."""
    return {"dropout": jax.random.key(0), "bn_noise": jax.random.key(1)}


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
