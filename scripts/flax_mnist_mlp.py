"""Figure 1's BN net trained as the Flax examples train: a plain per-step `jax.jit` loop with
`flax.linen.BatchNorm`, mini-batches fed from host memory, the whole test set evaluated every `--eval_every`
steps (BN's moving averages at test time). The reference that `scripts/bench_mnist.py` (steps/s) and
`scripts/bench_startup.py` (the whole process, start-up included) measure our trainer against.

    python scripts/flax_mnist_mlp.py [--num_steps=20000] [--eval_every=1000] [--cpu_cores=1]

Same net, batch, initialization and optimizer as `configs/mnist_mlp.py:bn`: 784-100-100-100-10, BN before each
sigmoid (W's bias dropped, Sec. 3.2), batch 60, weights from N(0, 0.1^2), plain SGD at 0.1. Prints one JSON line
per event (`first_step`: compiled, training starts; `eval`; `done`: training seconds without evaluation).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import time
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from bnrepro import data

BATCH, LR, INIT_STD = 60, 0.1, 0.1  # as configs/mnist_mlp.py


class FlaxMLP(nn.Module):
    """The same net with `flax.linen.BatchNorm`: 784-100-100-100-10, sigmoid, BN before each sigmoid."""

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        init = nn.initializers.normal(INIT_STD)
        for _ in range(3):
            x = nn.Dense(100, use_bias=False, kernel_init=init)(x)
            x = nn.sigmoid(nn.BatchNorm(use_running_average=not train, momentum=0.99, epsilon=1e-5)(x))
        return nn.Dense(10, kernel_init=init)(x)


def train_step_fn(model: nn.Module, tx: optax.GradientTransformation) -> Callable[..., Any]:
    """The jitted per-step SGD update (params, batch_stats, opt_state, x, y) -> the same three, donated."""

    @functools.partial(jax.jit, donate_argnums=(0, 1, 2))
    def step(params, batch_stats, opt_state, x, y):
        def loss_fn(params):
            logits, updates = model.apply(
                {"params": params, "batch_stats": batch_stats}, x, train=True, mutable=["batch_stats"]
            )
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), updates["batch_stats"]

        (_, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), batch_stats, opt_state

    return step


def flat_images(split: data.Split) -> np.ndarray:
    """(N, 784) float32 pixels in [0, 1]."""
    return split.images.reshape(len(split.labels), -1).astype(np.float32) / 255.0


def _event(name: str, **fields: Any) -> None:
    print(json.dumps({"event": name, "time": time.time(), **fields}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num_steps", type=int, default=20_000, help="SGD steps")
    parser.add_argument("--eval_every", type=int, default=1000, help="steps between evaluations on the test set")
    parser.add_argument("--cpu_cores", type=int, default=1, help="CPU cores to run on (0 = all), as config.cpu_cores")
    args = parser.parse_args()
    if args.cpu_cores:  # before JAX starts its thread pool, as bnrepro.cpu.use_cpu_cores
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[: args.cpu_cores])
    splits = data.load_dataset("mnist")
    images, labels = flat_images(splits.train), splits.train.labels
    test_images, test_labels = jnp.asarray(flat_images(splits.test)), jnp.asarray(splits.test.labels)
    model, tx = FlaxMLP(), optax.sgd(LR)
    variables = model.init(jax.random.key(0), jnp.zeros((BATCH, 784)), train=False)
    params, batch_stats = variables["params"], variables["batch_stats"]
    opt_state = tx.init(params)
    step = train_step_fn(model, tx)

    @jax.jit
    def evaluate(params, batch_stats):
        logits = model.apply({"params": params, "batch_stats": batch_stats}, test_images, train=False)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, test_labels).mean()
        return loss, jnp.mean(jnp.argmax(logits, -1) == test_labels)

    compiled = step.lower(params, batch_stats, opt_state, images[:BATCH], labels[:BATCH]).compile()
    _event("first_step")
    rng, order, position, train_seconds = np.random.default_rng(0), np.arange(0), 0, 0.0
    start = time.perf_counter()
    for i in range(1, args.num_steps + 1):
        if position + BATCH > len(order):  # a new epoch
            order, position = rng.permutation(len(labels)), 0
        index = order[position : position + BATCH]
        position += BATCH
        params, batch_stats, opt_state = compiled(params, batch_stats, opt_state, images[index], labels[index])
        if i % args.eval_every == 0 or i == args.num_steps:
            jax.block_until_ready(params)
            train_seconds += time.perf_counter() - start
            loss, accuracy = jax.device_get(evaluate(params, batch_stats))
            _event("eval", step=i, test_loss=float(loss), test_accuracy=float(accuracy))
            start = time.perf_counter()
    _event("done", steps=args.num_steps, train_seconds=train_seconds)


if __name__ == "__main__":
    main()
