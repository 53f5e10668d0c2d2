"""Pure, jittable steps over a `TrainState`: one training step (Algorithm 1 in the forward pass) and K of them
fused over an index window of an on-device dataset, the one evaluation step of the inference network (Algorithm 2,
step 11), and the two halves of Algorithm 2's population statistics (a mini-batch's moments, their population).

The loop (`bnrepro.training.loop`) compiles these, `jax.vmap`ped over a model axis when a sweep stacks models;
`bnrepro.training.evaluation` runs the evaluation ones over a test set's and a training set's batches.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from bnrepro import layers
from bnrepro.training.device_data import Dataset
from bnrepro.training.state import TrainState, fixed_rngs, preprocess, training_loss

# What an evaluation hook computes from the inference network's sown intermediates: per-example arrays.
Collect = Callable[[Mapping[str, Any]], dict[str, jax.Array]]


def train_step(state: TrainState, batch: Mapping[str, jax.Array]) -> tuple[TrainState, dict[str, jax.Array]]:
    """One SGD step on a mini-batch; BN normalizes with the mini-batch's own moments (Algorithm 1).
    Dropout, where a model has it, draws from a key of its own for every step."""
    dropout_rng = jax.random.fold_in(jax.random.split(jax.random.wrap_key_data(state.rng))[1], state.step)
    rngs = {"dropout": dropout_rng, "bn_noise": jax.random.fold_in(dropout_rng, 1)}
    loss_fn = functools.partial(training_loss, state, batch=batch, rngs=rngs)
    (loss, updates), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    state = state.apply_gradients(grads=grads, batch_stats=updates.get("batch_stats", state.batch_stats))
    return state, {"loss": loss}


def minibatch(train_data: Dataset, permutation: jax.Array, index: jax.Array, batch_size: int) -> dict[str, jax.Array]:
    """Mini-batch `index` of the epoch `permutation` orders: its examples gathered on the device, preprocessed."""
    images, labels = train_data.take(jax.lax.dynamic_slice_in_dim(permutation, index * batch_size, batch_size))
    return {"image": preprocess(images), "label": labels}


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

    With `batch_sharding` (data parallelism, `sharding.data_parallel_sharding`) each mini-batch is split across
    the devices and the replicated parameters see the whole batch: BN's statistics are then global over all
    devices (XLA adds the cross-device reductions), unless `model.bn.virtual_batch_size` normalizes each
    device's share, the paper's per-replica mini-batches, on its own."""

    def step(state, _):
        batch = minibatch(train_data, permutation, state.batch_index, batch_size)
        if batch_sharding is not None:
            batch = jax.lax.with_sharding_constraint(batch, batch_sharding)
        state, metrics = train_step(state, batch)
        return state.replace(batch_index=state.batch_index + 1), metrics

    if num_steps == 1:  # no loop: in XLA:CPU's while loop convolutions run several times slower (measured
        # on the small BN-Inception: 2 vs 8 steps/s), so conv nets on CPU train with steps_per_dispatch = 1.
        state, metrics = step(state, None)
        return state, jax.tree.map(lambda m: m[None], metrics)
    return jax.lax.scan(step, state, length=num_steps)


def eval_step(
    state: TrainState, batch_stats: Any, batch: Mapping[str, jax.Array], collect: Collect | None = None
) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
    """The inference network (Algorithm 2, step 11: BN with the fixed `batch_stats`) on one evaluation batch.

    Returns the sums over the batch's real examples (`batch["mask"]`, all of them without one) of the loss, of
    the correct predictions and of the examples ("loss", "correct", "count"), and what `collect` takes from the
    network's sown intermediates (e.g. a layer's preactivations for Fig. 1(b, c)), per example. Each example's
    output depends on that example only, so the results do not depend on how a test set is batched."""
    logits, intermediates = state.apply_fn(
        {"params": state.params, "batch_stats": batch_stats}, batch["image"], train=False, mutable=["intermediates"]
    )
    mask = batch["mask"].astype(jnp.float32) if "mask" in batch else jnp.ones(logits.shape[:1], jnp.float32)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
    sums = {
        "loss": jnp.sum(losses * mask),
        "correct": jnp.sum((jnp.argmax(logits, -1) == batch["label"]) * mask),
        "count": jnp.sum(mask),
    }
    return sums, (collect(intermediates.get("intermediates", {})) if collect else {})


def loss_and_accuracy(sums: Mapping[str, Any]) -> dict[str, float]:
    """`eval_step`'s sums (over one or many batches) as the mean loss and the top-1 accuracy."""
    count = float(np.asarray(sums["count"]))
    return {"loss": float(np.asarray(sums["loss"])) / count, "accuracy": float(np.asarray(sums["correct"])) / count}


def batch_moments(model: nn.Module, state: TrainState, batch: Mapping[str, jax.Array]) -> dict:
    """Algorithm 2, step 9's mu_B and var_B of every BN layer on one training mini-batch (`batch["image"]`,
    preprocessed), through the training network with the current parameters (`layers.minibatch_moments`). The
    pass runs the training network, dropout included: its keys are fixed, so that evaluation is deterministic."""
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    return layers.minibatch_moments(model, variables, batch["image"], rngs=fixed_rngs())


def population(moments: Sequence[dict]) -> Any:
    """Algorithm 2, steps 8-9: the `batch_stats` with E[x] = E_B[mu_B] and Var[x] = m/(m-1) E_B[var_B] from the
    `batch_moments` of K training mini-batches (`layers.population_from_moments` of them stacked)."""
    return layers.population_from_moments(jax.tree.map(lambda *m: jnp.stack(m), *moments))
