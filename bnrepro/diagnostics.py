"""What happens inside a network during training: per-layer nonlinearity inputs and gradient norms.

The paper's argument (Sec. 2, Fig. 1(b, c)) is about the distributions of the inputs to each nonlinearity
changing as training proceeds; these functions measure them for any model that sows its preactivations
(`bnrepro.layers.DenseBN` does) from a `train.TrainState`, for notebooks and analyses.
"""

from __future__ import annotations

from collections.abc import Mapping

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


def layer_gradient_norms(state: train.TrainState, batch: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
    """The L2 norm of the training loss's gradient with respect to each layer's weight matrix (`kernel`) on one
    mini-batch (training mode: BN uses the mini-batch's own moments), keyed by the layer's path."""

    def loss(params):
        logits, _ = state.apply_fn(
            {"params": params, "batch_stats": state.batch_stats}, batch["image"], train=True,
            mutable=["batch_stats"], rngs=train.fixed_rngs(),
        )  # fmt: skip
        return train.cross_entropy(logits, batch["label"])

    flat = traverse_util.flatten_dict(jax.grad(loss)(state.params), sep="/")
    return {path.rsplit("/", 1)[0]: jnp.linalg.norm(g) for path, g in flat.items() if path.endswith("/kernel")}
