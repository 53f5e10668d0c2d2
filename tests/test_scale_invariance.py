"""Sec. 3.3 on the real networks, as a run builds them: scaling the kernel W that feeds a BN layer by a leaves the
network unchanged, "BN(Wu) = BN((aW)u)", so the gradient with respect to the layer's input is unchanged,
"∂BN((aW)u)/∂u = ∂BN(Wu)/∂u", and the kernel's gradient is divided by a, "∂BN((aW)u)/∂(aW) = (1/a) ∂BN(Wu)/∂W".

The identity holds as the paper writes it for BN without ε, so the networks are checked with ε = 0, in training
mode (BN on the mini-batch's moments, Algorithm 1): the logits, the loss's gradient with respect to the images
(which reaches the scaled layer's input through it), the scaled kernel's gradient and every other parameter's
gradient, to float32 tolerance. On the Figure 1 MLP (its first and last hidden layers) a = 0.1 and 10; on Table
2's CPU-scale BN-Inception (the stem's pointwise convolution and the first convolution of module 3a) a = 1/8 and 8:
its max-pools send each window's gradient to the window's largest input, and the rounding of (aW)u against Wu
that a scale other than a power of two brings can change which of two near-equal inputs that is. With ε the
identity becomes BN_ε((aW)u) = BN_{ε/a²}(Wu) (the variance of aWu is a² times that of Wu): checked on the BN layer
itself for a = 0.1 and 10. So with the configs' ε = 1e-5 a small a weakens the normalization of a layer whose
input varies little: at a = 0.1, ε acts as 1e-3.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from config_files import fashion_table2, mnist_mlp
from flax import traverse_util

from bnrepro import layers, models
from bnrepro.training.state import cross_entropy

NETS = {  # the config, the layers whose kernels are scaled, the scales
    "mlp": (lambda: mnist_mlp.get_config("bn"), ("DenseBN_0", "DenseBN_2"), (0.1, 10.0)),
    "inception": (
        lambda: fashion_table2.get_config("bn_x5,quick"),
        ("conv1_7x7/pointwise", "inception_3a"),
        (0.125, 8.0),
    ),
}


def _net_without_eps(name: str):
    """The net as a run builds it (the Inception cut after module 3a: it compiles in seconds), its BN without eps."""
    config = NETS[name][0]()
    if name == "inception":
        config.model.num_modules = 1
    config.model.bn.eps = 0.0
    return models.create_model(config.model, "float32")


def _kernel_path(flat: dict, layer: str) -> tuple[str, ...]:
    """The first kernel under `layer` (a path prefix, "/"-separated): one that feeds a BN layer."""
    prefix = tuple(layer.split("/"))
    paths = [p for p in flat if p[: len(prefix)] == prefix and p[-1] == "kernel"]
    assert paths, (layer, list(flat)[:10])
    return paths[0]


@pytest.mark.parametrize("name", list(NETS))
def test_scaling_a_kernel_that_feeds_bn_changes_nothing_but_its_gradient_which_it_divides(name: str) -> None:
    exact = _net_without_eps(name)
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.uniform(0.0, 1.0, (16, 28, 28)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, 10, 16), jnp.int32)
    variables = jax.jit(lambda key: exact.init(key, images, train=False))(jax.random.key(1))
    flat = traverse_util.flatten_dict(variables["params"])

    @functools.partial(jax.jit, static_argnums=0)
    def run(net, params):
        """The training-mode logits, and the loss's gradients with respect to the parameters and the images."""

        def loss(params, images):
            logits, _ = net.apply(
                {"params": params, "batch_stats": variables["batch_stats"]}, images, train=True, mutable=["batch_stats"]
            )
            return cross_entropy(logits, labels), logits

        (_, logits), (grads, image_grads) = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(params, images)
        return logits, traverse_util.flatten_dict(grads), image_grads

    reference = run(exact, variables["params"])
    _, layers_scaled, scales = NETS[name]
    for layer in layers_scaled:
        path = _kernel_path(flat, layer)
        for a in scales:
            scaled = traverse_util.unflatten_dict({**flat, path: a * flat[path]})
            logits, grads, image_grads = run(exact, scaled)
            where = (name, path, a)
            np.testing.assert_allclose(logits, reference[0], rtol=1e-4, atol=1e-5, err_msg=str(where))
            bound = 1e-4 * float(jnp.max(jnp.abs(reference[2])))
            np.testing.assert_allclose(image_grads, reference[2], rtol=1e-3, atol=bound, err_msg=str(where))
            for key, grad in grads.items():
                expected = reference[1][key] / a if key == path else reference[1][key]
                bound = 1e-4 * float(jnp.max(jnp.abs(expected)))
                np.testing.assert_allclose(grad, expected, rtol=1e-3, atol=bound, err_msg=str((*where, key)))


@pytest.mark.parametrize("a", [0.1, 10.0])
def test_with_eps_the_bn_layer_of_a_scaled_input_is_the_layer_with_eps_over_a_squared(a: float) -> None:
    """`layers.BatchNorm` in training mode: BN_eps(a x) = BN_{eps/a^2}(x), and its gradient with respect to its
    input is 1/a times the other's, at the configs' eps; the input varies little (variance 1e-3), so eps matters."""
    x = jnp.asarray(np.random.default_rng(3).normal(0.5, 0.03, (32, 6)), jnp.float32)
    head = jnp.asarray(np.random.default_rng(4).normal(size=(32, 6)), jnp.float32)
    eps = models.bn_config().eps

    def loss(layer, x):
        variables = layer.init(jax.random.key(0), x, train=False)
        y, _ = layer.apply(variables, x, train=True, mutable=["batch_stats"])
        return jnp.sum(jnp.tanh(y) * head), y

    scaled = jax.value_and_grad(functools.partial(loss, layers.BatchNorm(eps=eps)), has_aux=True)
    compensated = jax.value_and_grad(functools.partial(loss, layers.BatchNorm(eps=eps / a**2)), has_aux=True)
    (_, y), grad = jax.jit(scaled)(a * x)
    (_, y_ref), grad_ref = jax.jit(compensated)(x)
    np.testing.assert_allclose(y, y_ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(grad, grad_ref / a, rtol=1e-3, atol=1e-4 * float(jnp.max(jnp.abs(grad_ref / a))))
    unscaled = jax.jit(functools.partial(loss, layers.BatchNorm(eps=eps)))(x)[1]
    if a < 1:  # the configs' eps, 100 times larger here, is about the input's variance: it is felt
        assert float(jnp.max(jnp.abs(y - unscaled))) > 1e-2
