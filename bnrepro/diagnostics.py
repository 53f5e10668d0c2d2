"""What happens inside a network during training: per-layer nonlinearity inputs, gradients and Jacobians.

The paper's argument (Sec. 2, Fig. 1(b, c)) is about the distributions of the inputs to each nonlinearity
changing as training proceeds; `layer_preactivations` measures them for any model that sows its preactivations
(`bnrepro.layers.DenseBN` does) from a `TrainState`. The paper leaves BN's effect on gradient propagation
open (Sec. 3.3-3.4, Sec. 6); Santurkar et al. (2018) measure it, and so do these functions:

* `internal_covariate_shift` -- ||G - G'|| and cos(G, G') per layer;
* `loss_landscape` -- the loss and its gradient along the gradient direction (loss variation, gradient
  predictiveness, "effective" beta-smoothness);
* `layer_jacobian_singular_values` -- the singular values of each layer's input-output Jacobian (Sec. 3.3
  conjectures BN keeps them close to 1);
* `measure` -- all of them on one mini-batch, as `bnrepro.hooks.Diagnostics` records them during
  training (`config.diagnostics_every`).

A "layer" is a module path such as "DenseBN_1"; its weights are the `kernel`s under that path.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import traverse_util

from bnrepro import layers
from bnrepro.training.state import TrainState, current_learning_rate, fixed_rngs, training_loss

JACOBIAN_EXAMPLES = 8  # examples whose layer Jacobians `measure` takes apart (SVD); their spectra are averaged


def layer_preactivations(state: TrainState, images: jax.Array) -> dict[str, jax.Array]:
    """Each layer's input to its nonlinearity, (N, units), for `images` through the inference network (the
    state's BN statistics), keyed by the layer's path, e.g. "DenseBN_0"."""
    _, intermediates = state.apply_fn(
        {"params": state.params, "batch_stats": state.batch_stats}, images, train=False, mutable=["intermediates"]
    )
    flat = traverse_util.flatten_dict(intermediates["intermediates"], sep="/")
    return {path.rsplit("/", 1)[0]: value[0] for path, value in flat.items() if path.endswith("/preactivation")}


def _loss(state: TrainState, batch: Mapping[str, jax.Array]) -> Callable[[Any], jax.Array]:
    """params -> the training loss on `batch` (`training_loss`, with the fixed keys of `fixed_rngs`)."""
    rngs = fixed_rngs()
    return lambda params: training_loss(state, params, batch, rngs)[0]


def layer_gradient_norms(state: TrainState, batch: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
    """The L2 norm of the training loss's gradient with respect to each layer's weight matrix (`kernel`) on one
    mini-batch (training mode: BN uses the mini-batch's own moments), keyed by the layer's path."""

    return kernel_norms(jax.grad(_loss(state, batch))(state.params))


def kernel_norms(tree: Any) -> dict[str, jax.Array]:
    """The L2 (Frobenius) norm of each layer's `kernel` in `tree` (parameters, or their gradients), keyed by the
    layer's path."""
    flat = traverse_util.flatten_dict(tree, sep="/")
    return {path.rsplit("/", 1)[0]: jnp.linalg.norm(w) for path, w in flat.items() if path.endswith("/kernel")}


def _kernels_under(flat: Mapping[tuple[str, ...], Any], layer: str) -> list[tuple[str, ...]]:
    """The paths of the `kernel`s of `layer` (a module path, e.g. "DenseBN_1" or "DenseBN_1/Dense_0")."""
    prefix = tuple(layer.split("/"))
    return [path for path in flat if path[: len(prefix)] == prefix and path[-1] == "kernel"]


def _layer_kernels(params: Any, layer_order: Sequence[str]) -> list[list[tuple[str, ...]]]:
    flat = traverse_util.flatten_dict(params)
    kernels = [_kernels_under(flat, layer) for layer in layer_order]
    missing = [layer for layer, paths in zip(layer_order, kernels) if not paths]
    if missing:
        raise ValueError(f"no kernel at {missing}.")
    return kernels


def _norm(leaves: Sequence[jax.Array]) -> jax.Array:
    return jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in leaves))


def internal_covariate_shift(
    state: TrainState, batch: Mapping[str, jax.Array], layer_order: Sequence[str], learning_rate: float
) -> dict[str, dict[str, jax.Array]]:
    """Santurkar et al. (2018)'s measure of internal covariate shift, per layer, on one mini-batch.

    G_i is the loss gradient with respect to layer i's weights (its `kernel`s) at the current parameters; G'_i
    the same gradient after the layers before it (`layer_order[:i]`) took their plain gradient step of size
    `learning_rate`, the rest unchanged. Returns, per layer: ||G_i - G'_i|| ("l2"), cos(G_i, G'_i)
    ("cosine") and ||G_i|| ("grad_norm"). Training mode, with the state's BN statistics and fixed noise keys (`fixed_rngs`).
    """
    loss = _loss(state, batch)
    try:
        kernels = _layer_kernels(state.params, layer_order)
    except ValueError as e:
        raise ValueError(f"internal_covariate_shift: {e}") from None
    grads = traverse_util.flatten_dict(jax.grad(loss)(state.params))
    params = traverse_util.flatten_dict(state.params)
    result = {}
    for i, paths in enumerate(kernels):
        stepped = dict(params)
        for earlier in (path for layer in kernels[:i] for path in layer):
            stepped[earlier] = params[earlier] - learning_rate * grads[earlier]
        shifted = traverse_util.flatten_dict(jax.grad(loss)(traverse_util.unflatten_dict(stepped)))
        g, g_shifted = [grads[p] for p in paths], [shifted[p] for p in paths]
        result[layer_order[i]] = {
            "l2": _norm([a - b for a, b in zip(g, g_shifted)]),
            "cosine": sum(jnp.vdot(a, b) for a, b in zip(g, g_shifted)) / (_norm(g) * _norm(g_shifted)),
            "grad_norm": _norm(g),
        }
    return result


def loss_landscape(state: TrainState, batch: Mapping[str, jax.Array], step_sizes: jax.Array) -> dict[str, jax.Array]:
    """The loss along the gradient direction (Santurkar et al. 2018, Sec. 3.1 and Fig. 4), on one mini-batch.

    With g = grad L(theta) (all parameters) and each step size eta in `step_sizes` (> 0), the point
    theta - eta g. Returns the loss there ("losses"), the gradient's change ||g - grad L(theta - eta g)||
    ("gradient_changes"), and the summaries Santurkar et al. plot: "loss_variation", the range of the loss over
    theta and the points; "gradient_predictiveness", the largest gradient change (small: the gradient stays
    predictive); "beta_smoothness", the largest ||g - grad L(theta - eta g)|| / ||eta g|| (the "effective"
    beta-smoothness). Training mode, as in `internal_covariate_shift`.
    """
    loss = _loss(state, batch)
    value, grad = jax.value_and_grad(loss)(state.params)
    step_sizes = jnp.asarray(step_sizes, jnp.float32)

    def along_gradient(eta: jax.Array) -> tuple[jax.Array, jax.Array]:
        moved_value, moved_grad = jax.value_and_grad(loss)(jax.tree.map(lambda p, g: p - eta * g, state.params, grad))
        return moved_value, optax.tree.norm(jax.tree.map(jnp.subtract, grad, moved_grad))

    losses, changes = jax.lax.map(along_gradient, step_sizes)
    every_loss = jnp.concatenate([value[None], losses])
    return {
        "loss": value,
        "losses": losses,
        "gradient_changes": changes,
        "loss_variation": jnp.max(every_loss) - jnp.min(every_loss),
        "gradient_predictiveness": jnp.max(changes),
        "beta_smoothness": jnp.max(changes / (step_sizes * optax.tree.norm(grad))),
    }


def _minibatch_batch_stats(state: TrainState, images: jax.Array) -> Any:
    """The state's `batch_stats` with every BN layer's mean and variance replaced by the mini-batch's own
    moments (Algorithm 1's mu_B, var_B): in inference mode the net then computes, per example, what training
    mode computes on this mini-batch, with the moments held fixed."""
    if not state.batch_stats:
        return state.batch_stats
    _, collections = state.apply_fn(
        {"params": state.params, "batch_stats": state.batch_stats}, images, train=True,
        mutable=["batch_stats", layers.MOMENTS_COLLECTION], rngs=fixed_rngs(),
    )  # fmt: skip
    moments = traverse_util.flatten_dict(collections[layers.MOMENTS_COLLECTION])
    stats = traverse_util.flatten_dict(state.batch_stats)
    stats.update({path: value for path, value in moments.items() if path[-1] in ("mean", "var")})
    return traverse_util.unflatten_dict(stats)


def _subtree(tree: Mapping[str, Any], layer: str) -> Any:
    for name in layer.split("/"):
        tree = tree.get(name, {}) if isinstance(tree, Mapping) else {}
    return tree


def layer_jacobian_singular_values(
    state: TrainState, images: jax.Array, layer_names: Sequence[str], num_examples: int | None = None
) -> dict[str, jax.Array]:
    """The singular values of each layer's Jacobian d(output)/d(input) at each of the first `num_examples`
    examples of `images` (all: None): (examples, min(in, out)), largest first, keyed by layer.

    The layer is the map its module applies, e.g. u -> g(BN(Wu)) for a `DenseBN`, with BN's moments those of
    the whole mini-batch `images` held fixed (`_minibatch_batch_stats`), so that the Jacobian is per example.
    Sec. 3.3 of the paper conjectures that BN makes them close to 1, which helps gradients propagate."""
    batch_stats = _minibatch_batch_stats(state, images)
    captured: dict[str, tuple[nn.Module, tuple, dict]] = {}

    def capture(next_fun, args, kwargs, context):
        path = "/".join(context.module.scope.path)
        if context.method_name == "__call__" and path in layer_names and path not in captured:
            captured[path] = (context.module.clone(parent=None), args, kwargs)
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(capture):
        state.apply_fn({"params": state.params, "batch_stats": batch_stats}, images, train=False)
    missing = [layer for layer in layer_names if layer not in captured]
    if missing:
        raise ValueError(f"layer_jacobian_singular_values: the model calls no module at {missing}.")
    result = {}
    for layer in layer_names:
        module, args, kwargs = captured[layer]
        variables = {"params": _subtree(state.params, layer), "batch_stats": _subtree(batch_stats, layer)}
        inputs = args[0][:num_examples]

        def one_example(x: jax.Array, module=module, variables=variables, args=args, kwargs=kwargs) -> jax.Array:
            return module.apply(variables, x[None], *args[1:], **kwargs)[0]

        jacobians = jax.vmap(jax.jacfwd(one_example))(inputs)
        num_out = jacobians[0].size // inputs[0].size
        matrices = jacobians.reshape(len(inputs), num_out, inputs[0].size)
        result[layer] = jnp.linalg.svd(matrices.astype(jnp.float32), compute_uv=False)  # LAPACK has no bfloat16
    return result


def measure(
    state: TrainState, batch: Mapping[str, jax.Array], layer_names: Sequence[str], step_scales: Sequence[float]
) -> dict[str, jax.Array]:
    """Everything above on one mini-batch, as a flat record: per layer (in forward order) "ics_l2/LAYER",
    "ics_cosine/LAYER" (earlier layers stepped by the state's current learning rate), "grad_norm/LAYER" (of its
    kernels), "jacobian_sv/LAYER" (the singular values averaged over the examples, largest first),
    "jacobian_sv_mean/LAYER" and "jacobian_sv_max/LAYER", over the first `JACOBIAN_EXAMPLES` examples (an SVD
    per example is the costly part); the `loss_landscape` at step sizes
    `step_scales` x the learning rate ("landscape/..."); and "learning_rate". Jittable."""
    learning_rate = current_learning_rate(state.opt_state)
    record = {"learning_rate": learning_rate}
    for layer, shift in internal_covariate_shift(state, batch, layer_names, learning_rate).items():
        for key in ("l2", "cosine"):
            record[f"ics_{key}/{layer}"] = shift[key]
        record[f"grad_norm/{layer}"] = shift["grad_norm"]
    jacobians = layer_jacobian_singular_values(state, batch["image"], layer_names, JACOBIAN_EXAMPLES)
    for layer, values in jacobians.items():
        record[f"jacobian_sv/{layer}"] = jnp.mean(values, axis=0)
        record[f"jacobian_sv_mean/{layer}"] = jnp.mean(values)
        record[f"jacobian_sv_max/{layer}"] = jnp.mean(values[:, 0])
    step_sizes = jnp.asarray(step_scales, jnp.float32) * learning_rate
    for key, value in loss_landscape(state, batch, step_sizes).items():
        record[f"landscape/{key}"] = value
    return record
