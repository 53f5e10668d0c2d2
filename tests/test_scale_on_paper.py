"""`scripts/scale_on_paper.py`'s readings, against counts made by hand: the collective bytes it reads from a compiled
data-parallel program, and the state bytes it reads from a config's shapes."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from bnrepro.training.sharding import data_parallel_sharding

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
import scale_on_paper  # a script, found on the path just set


def test_the_gradient_all_reduce_of_a_data_parallel_step_is_the_gradients_bytes() -> None:
    """A linear model's gradient on 8 devices, each holding 8 of the batch's 64 rows: the compiled program
    all-reduces the (300, 7) float32 gradient once, 8,400 bytes, and nothing else; on one device, nothing."""
    batch = data_parallel_sharding(8, 64)
    everywhere = batch.update(spec=jax.sharding.PartitionSpec())
    w = jax.ShapeDtypeStruct((300, 7), jnp.float32, sharding=everywhere)
    x = jax.ShapeDtypeStruct((64, 300), jnp.float32, sharding=batch)
    gradient = jax.jit(jax.grad(lambda w, x: jnp.sum(jnp.tanh(x @ w))), out_shardings=everywhere)
    totals = scale_on_paper.collective_bytes(gradient.lower(w, x).compile().as_text())
    assert totals["all-reduce"] == 300 * 7 * 4
    assert set(totals) == {"all-reduce", "all-reduce ops"}
    alone = jax.jit(jax.grad(lambda w, x: jnp.sum(jnp.tanh(x @ w))))
    shapes = [jax.ShapeDtypeStruct(s.shape, s.dtype) for s in (w, x)]
    assert not scale_on_paper.collective_bytes(alone.lower(*shapes).compile().as_text())


def test_state_bytes_are_the_parameters_statistics_and_momentum_of_the_net() -> None:
    """BN-x5's parameters as counted from the initialized network's arrays, its BN statistics (a mean and a
    variance per BN channel, 2 per BN scale), and SGD with momentum's one trace per parameter."""
    config = scale_on_paper.run_config("bn_x5", 8)
    held = scale_on_paper.state_bytes(config)
    model = scale_on_paper.models.create_model(config.model, config.dtype)
    variables = jax.eval_shape(
        lambda key, x: model.init(key, x, train=False), jax.random.key(0), jnp.zeros((1, 32, 32, 3))
    )
    count = sum(math.prod(x.shape) for x in jax.tree.leaves(variables["params"]))
    scales = sum(
        math.prod(x.shape) for path, x in jax.tree.leaves_with_path(variables["params"]) if "scale" in str(path)
    )
    assert held["params"] == 4 * count and held["bn"] == 4 * 2 * scales
    assert held["opt"] >= 4 * count and held["opt"] - 4 * count < 64  # the trace, and a step count or two
    assert np.isclose(count, 11.2e6, rtol=0.1)  # BN-Inception: ~11 M parameters
