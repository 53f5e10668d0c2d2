"""bnrepro.diagnostics against a by-hand forward pass of the baseline MLP (NumPy for the preactivations, a
plain jnp re-derivation of the loss for the gradient norms) and against BN's inference map (Algorithm 2)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from config_files import mnist_mlp

from bnrepro import diagnostics, train


def _state(variant: str) -> train.TrainState:
    config = mnist_mlp.get_config(variant)
    model = train.create_model(config.model)
    return train.create_train_state(config, model, jax.random.key(0), jnp.zeros((8, 28, 28), jnp.uint8))


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def test_preactivations_and_gradient_norms_of_the_baseline_by_hand():
    state = _state("baseline")
    images = np.asarray(jax.random.uniform(jax.random.key(1), (8, 28, 28)))
    labels = np.arange(8) % 10
    p = jax.tree.map(np.asarray, state.params)
    u, expected = images.reshape(8, -1), {}
    for i in range(3):
        dense = p[f"DenseBN_{i}"]["Dense_0"]
        expected[f"DenseBN_{i}"] = u @ dense["kernel"] + dense["bias"]
        u = _sigmoid(expected[f"DenseBN_{i}"])
    got = diagnostics.layer_preactivations(state, images)
    assert sorted(got) == sorted(expected)
    for name, value in expected.items():
        np.testing.assert_allclose(got[name], value, rtol=1e-5, atol=1e-5)

    def loss(kernels):
        u = jnp.asarray(images.reshape(8, -1))
        for i in range(3):
            u = jax.nn.sigmoid(u @ kernels[i] + p[f"DenseBN_{i}"]["Dense_0"]["bias"])
        logits = u @ kernels[3] + p["Dense_0"]["bias"]
        return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(8), labels])

    kernels = [p[f"DenseBN_{i}"]["Dense_0"]["kernel"] for i in range(3)] + [p["Dense_0"]["kernel"]]
    grads = jax.grad(loss)(kernels)
    norms = diagnostics.layer_gradient_norms(state, {"image": images, "label": labels})
    names = [f"DenseBN_{i}/Dense_0" for i in range(3)] + ["Dense_0"]
    np.testing.assert_allclose([norms[n] for n in names], [np.linalg.norm(g) for g in grads], rtol=1e-4)


def test_bn_preactivations_use_the_population_statistics():
    state = _state("bn")
    stats = jax.tree.map(lambda x: x + 0.5, state.batch_stats)  # non-trivial statistics
    state = state.replace(batch_stats=stats)
    images = np.asarray(jax.random.uniform(jax.random.key(2), (8, 28, 28)))
    kernel = np.asarray(state.params["DenseBN_0"]["Dense_0"]["kernel"])
    bn = state.params["DenseBN_0"]["BatchNorm_0"]
    moments = stats["DenseBN_0"]["BatchNorm_0"]
    x = images.reshape(8, -1) @ kernel
    expected = bn["scale"] * (x - moments["mean"]) / np.sqrt(moments["var"] + 1e-5) + bn["bias"]
    got = diagnostics.layer_preactivations(state, images)["DenseBN_0"]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_internal_covariate_shift_of_a_small_baseline_net_by_hand():
    config = mnist_mlp.get_config("baseline")
    config.model.hidden = (5, 4)
    model = train.create_model(config.model)
    state = train.create_train_state(config, model, jax.random.key(0), jnp.zeros((6, 28, 28), jnp.uint8))
    images = jax.random.uniform(jax.random.key(1), (6, 28, 28))
    labels = jnp.arange(6) % 10
    p = state.params
    biases = [p["DenseBN_0"]["Dense_0"]["bias"], p["DenseBN_1"]["Dense_0"]["bias"], p["Dense_0"]["bias"]]

    def loss(kernels):  # the same net, written out
        u = images.reshape(6, -1)
        for kernel, bias in zip(kernels[:2], biases[:2]):
            u = jax.nn.sigmoid(u @ kernel + bias)
        logits = u @ kernels[2] + biases[2]
        return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(6), labels])

    kernels = [p["DenseBN_0"]["Dense_0"]["kernel"], p["DenseBN_1"]["Dense_0"]["kernel"], p["Dense_0"]["kernel"]]
    grads, lr = jax.grad(loss)(kernels), 0.5
    order = ["DenseBN_0/Dense_0", "DenseBN_1/Dense_0", "Dense_0"]
    got = diagnostics.internal_covariate_shift(state, {"image": images, "label": labels}, order, lr)
    for i, layer in enumerate(order):
        stepped = [k - lr * g if j < i else k for j, (k, g) in enumerate(zip(kernels, grads))]
        shifted = jax.grad(loss)(stepped)[i]
        g = np.asarray(grads[i])
        np.testing.assert_allclose(got[layer]["l2"], np.linalg.norm(g - shifted), rtol=1e-4, atol=1e-7)
        cosine = np.sum(g * shifted) / (np.linalg.norm(g) * np.linalg.norm(shifted))
        np.testing.assert_allclose(got[layer]["cosine"], cosine, rtol=1e-5)
    assert float(got[order[0]]["l2"]) == 0.0 and float(got[order[2]]["l2"]) > 0.0  # the first layer sees no shift
    with pytest.raises(ValueError, match=r"no kernel at \['DenseBN_7'\]"):
        diagnostics.internal_covariate_shift(state, {"image": images, "label": labels}, ["DenseBN_7"], lr)
