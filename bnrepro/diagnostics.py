"""What happens inside a network during training: per-layer nonlinearity inputs and gradient norms.

The paper's argument (Sec. 2, Fig. 1(b, c)) is about the distributions of the inputs to each nonlinearity
changing as training proceeds; these functions measure them for any model that sows its preactivations
(`bnrepro.layers.DenseBN` does) from a `train.TrainState`, for notebooks and analyses; and Santurkar et al.
(2018)'s measure of internal covariate shift (`internal_covariate_shift`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import traverse_util

from bnrepro import train


def layer_preactivations(state: train.TrainState, images: jax.Array) -> dict[str, jax.Array]:
    """Each layer's input to its nonlinearity, (N, units), for `images` through the inference network (the
    state's BN statistics), keyed by the layer's path, e.g. "DenseBN_0"."""
    _, intermediates = state.apply_fn(
        {"params": state.params, "batch_stats": state.batch_stats}, images, train=False, mutable=["intermediates"]
    )
    flat = traverse_util.flatten_dict(intermediates["intermediates"], sep="/")
    return {path.rsplit("/", 1)[0]: value[0] for path, value in flat.items() if path.endswith("/preactivation")}


def _loss(state: train.TrainState, batch: Mapping[str, jax.Array]) -> Callable[[Any], jax.Array]:
    """params -> the training loss on `batch` (`train.training_loss`, with the fixed keys of `train.fixed_rngs`)."""
    rngs = train.fixed_rngs()
    return lambda params: train.training_loss(state, params, batch, rngs)[0]


def layer_gradient_norms(state: train.TrainState, batch: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
    """The L2 norm of the training loss's gradient with respect to each layer's weight matrix (`kernel`) on one
    mini-batch (training mode: BN uses the mini-batch's own moments), keyed by the layer's path."""

    flat = traverse_util.flatten_dict(jax.grad(_loss(state, batch))(state.params), sep="/")
    return {path.rsplit("/", 1)[0]: jnp.linalg.norm(g) for path, g in flat.items() if path.endswith("/kernel")}


def internal_covariate_shift(
    state: train.TrainState, batch: Mapping[str, jax.Array], layer_order: Sequence[str], learning_rate: float
) -> dict[str, dict[str, jax.Array]]:
    """Santurkar et al. (2018)'s measure of internal covariate shift, per layer, on one mini-batch.

    G_i is the loss gradient with respect to layer i's weights (`kernel`) at the current parameters; G'_i the
    same gradient after the layers before it (`layer_order[:i]`) took their plain gradient step of size
    `learning_rate`, the rest unchanged. Returns, per layer path: ||G_i - G'_i|| ("l2") and cos(G_i, G'_i)
    ("cosine"). Training mode, with the state's BN statistics and fixed noise keys (`train.fixed_rngs`).
    """
    loss = _loss(state, batch)
    kernel_paths = [tuple(layer.split("/")) + ("kernel",) for layer in layer_order]
    grads = traverse_util.flatten_dict(jax.grad(loss)(state.params))
    params = traverse_util.flatten_dict(state.params)
    missing = [path for path in kernel_paths if path not in params]
    if missing:
        raise ValueError(f"internal_covariate_shift: no kernel at {['/'.join(p[:-1]) for p in missing]}.")
    result = {}
    for i, path in enumerate(kernel_paths):
        stepped = dict(params)
        for earlier in kernel_paths[:i]:
            stepped[earlier] = params[earlier] - learning_rate * grads[earlier]
        shifted = traverse_util.flatten_dict(jax.grad(loss)(traverse_util.unflatten_dict(stepped)))[path]
        g = grads[path]
        result[layer_order[i]] = {
            "l2": jnp.linalg.norm(g - shifted),
            "cosine": jnp.vdot(g, shifted) / (jnp.linalg.norm(g) * jnp.linalg.norm(shifted)),
        }
    return result
