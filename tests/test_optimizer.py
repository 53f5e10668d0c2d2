"""The optimizer the config describes (Sec. 4.2.1's knobs), dropout keys, and optional model fields."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from config_files import mnist_mlp

from bnrepro import config_schema, models
from bnrepro.training.state import TrainState, create_optimizer, current_learning_rate
from bnrepro.training.steps import train_step

PARAMS = {"Dense_0": {"kernel": jnp.full((2, 2), 2.0), "bias": jnp.full((2,), 2.0)},
          "BatchNorm_0": {"scale": jnp.full((2,), 2.0), "bias": jnp.full((2,), 2.0)}}  # fmt: skip


def _config(**overrides):
    config = mnist_mlp.get_config("bn")
    config.update(overrides)
    return config


def test_weight_decay_is_l2_on_kernels_only():
    tx = create_optimizer(_config(learning_rate=0.1, weight_decay=0.5))
    zero_grads = jax.tree.map(jnp.zeros_like, PARAMS)
    updates, _ = tx.update(zero_grads, tx.init(PARAMS), PARAMS)
    new = optax.apply_updates(PARAMS, updates)
    np.testing.assert_allclose(new["Dense_0"]["kernel"], 2.0 - 0.1 * 0.5 * 2.0)  # w - lr * wd * w
    for leaf in (new["Dense_0"]["bias"], new["BatchNorm_0"]["scale"], new["BatchNorm_0"]["bias"]):
        np.testing.assert_allclose(leaf, 2.0)


def test_exponential_learning_rate_decay():
    tx = create_optimizer(_config(learning_rate=1.0, lr_decay_rate=0.5, lr_decay_steps=10))
    grads = jax.tree.map(jnp.ones_like, PARAMS)
    state, steps = tx.init(PARAMS), []
    for _ in range(21):
        updates, state = tx.update(grads, state, PARAMS)
        steps.append(float(-updates["Dense_0"]["kernel"][0, 0]))
    np.testing.assert_allclose([steps[0], steps[10], steps[20]], [1.0, 0.5, 0.25], rtol=1e-6)


def test_constant_plain_sgd_by_default():
    tx = create_optimizer(_config(learning_rate=0.3))
    updates, _ = tx.update(jax.tree.map(jnp.ones_like, PARAMS), tx.init(PARAMS), PARAMS)
    np.testing.assert_allclose(updates["BatchNorm_0"]["scale"], -0.3)


@pytest.mark.parametrize(
    "key, value, message",
    [("weight_decay", -1.0, "must be >= 0"), ("lr_decay_rate", 0.0, r"\(0, 1\]"), ("lr_decay_steps", 0, ">= 1")],
)
def test_optimizer_config_errors_name_the_key(key, value, message):
    config = _config()
    config[key] = value
    with pytest.raises(ValueError, match=rf"config\.{key}.*{message}"):
        config_schema.validate(config)


def test_dropout_gets_a_new_key_every_step():
    class Dropout:  # records the dropout keys an apply_fn is given
        def __init__(self):
            self.keys = []

        def __call__(self, variables, images, train, mutable, rngs):
            self.keys.append(jax.random.key_data(rngs["dropout"]))
            return jnp.zeros((images.shape[0], 10)) + variables["params"]["w"], {}

    recorder = Dropout()
    state = TrainState.create(
        apply_fn=recorder, params={"w": jnp.zeros(())}, tx=optax.sgd(0.1), batch_stats={},
        rng=jax.random.key_data(jax.random.key(0)), epoch=jnp.zeros((), jnp.int32),
        batch_index=jnp.zeros((), jnp.int32),
    )  # fmt: skip
    batch = {"image": jnp.zeros((4, 28, 28)), "label": jnp.zeros((4,), jnp.int32)}
    state, _ = train_step(state, batch)
    train_step(state, batch)
    first, second = recorder.keys
    assert not np.array_equal(first, second)


def test_optional_model_fields_take_their_annotated_type():
    config = _config()
    model = {"name": "bn_inception", "num_classes": 10, "small_input": True}
    config.model = {**model, "bn": models.bn_config(virtual_batch_size=32)}
    config_schema.validate(config)
    config.model = {**model, "bn": models.bn_config(virtual_batch_size="32")}
    with pytest.raises(ValueError, match=r"config\.model\.bn\.virtual_batch_size: expected int or NoneType"):
        config_schema.validate(config)


def test_rmsprop_matches_its_definition():
    """RMSProp (optax's defaults, decay 0.9, eps 1e-8): nu <- 0.9 nu + 0.1 g^2, w <- w - lr g / (sqrt(nu) + eps),
    re-derived in NumPy over three steps with different gradients."""
    tx = create_optimizer(_config(optimizer="rmsprop", learning_rate=1e-3))
    params, state = {"w": jnp.array([1.0, -2.0])}, None
    state = tx.init(params)
    w, nu = np.array([1.0, -2.0]), np.zeros(2)
    for g in ([0.5, -1.0], [2.0, 0.1], [-0.3, 0.3]):
        updates, state = tx.update({"w": jnp.array(g)}, state, params)
        params = optax.apply_updates(params, updates)
        nu = 0.9 * nu + 0.1 * np.square(g)
        w = w - 1e-3 * np.array(g) / (np.sqrt(nu) + 1e-8)
    np.testing.assert_allclose(params["w"], w, rtol=1e-6)
    np.testing.assert_allclose(current_learning_rate(state), 1e-3)


def test_gradient_clipping_scales_the_global_norm_down_to_the_limit():
    tx = create_optimizer(_config(learning_rate=1.0, grad_clip_norm=1.0))
    grads = {"a": jnp.array([3.0]), "b": jnp.array([4.0])}  # global norm 5
    updates, _ = tx.update(grads, tx.init(grads), grads)
    np.testing.assert_allclose([updates["a"][0], updates["b"][0]], [-0.6, -0.8], rtol=1e-6)
    small = {"a": jnp.array([0.3]), "b": jnp.array([0.4])}  # norm 0.5: unchanged
    updates, _ = tx.update(small, tx.init(small), small)
    np.testing.assert_allclose([updates["a"][0], updates["b"][0]], [-0.3, -0.4], rtol=1e-6)


def test_current_learning_rate_follows_the_decay():
    tx = create_optimizer(_config(learning_rate=1.0, lr_decay_rate=0.5, lr_decay_steps=1, weight_decay=0.1))
    params = {"kernel": jnp.ones(2)}
    state = tx.init(params)
    rates = []
    for _ in range(3):
        _, state = tx.update(params, state, params)
        rates.append(float(current_learning_rate(state)))
    np.testing.assert_allclose(rates, [1.0, 0.5, 0.25])
