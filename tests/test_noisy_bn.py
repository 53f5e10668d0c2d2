"""Noisy BN (issue 7, part 1; Santurkar et al. 2018): after BN, each activation is scaled by s ~ U(1, n_scale)
and shifted by m ~ U(-n_shift, n_shift), drawn anew each step and shared by the mini-batch; the statistics
and the clean layer are untouched; inference replaces the noise by its mean."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from config_files import mnist_mlp

from bnrepro import config_schema, layers
from bnrepro.models import create_model
from bnrepro.training.state import create_train_state
from bnrepro.training.steps import train_step


def _apply(layer, variables, x, seed):
    return layer.apply(variables, x, train=True, mutable=["batch_stats"], rngs={"bn_noise": jax.random.key(seed)})


def test_noise_is_a_per_activation_affine_map_of_the_clean_output():
    x = jax.random.normal(jax.random.key(0), (32, 6)) * 2.0 + 1.0
    clean_layer, noisy_layer = layers.BatchNorm(), layers.BatchNorm(noise_shift=0.5, noise_scale=2.0)
    variables = clean_layer.init(jax.random.key(1), x, train=False)
    clean, clean_stats = clean_layer.apply(variables, x, train=True, mutable=["batch_stats"])
    noisy, noisy_stats = _apply(noisy_layer, variables, x, seed=3)
    clean, noisy = np.asarray(clean), np.asarray(noisy)
    # Per activation: noisy = s * clean + m, one (s, m) for the whole mini-batch (a least-squares fit is exact).
    for j in range(6):
        (s, m), residual, *_ = np.linalg.lstsq(np.stack([clean[:, j], np.ones(32)], 1), noisy[:, j], rcond=None)
        assert residual.size == 0 or residual[0] < 1e-8
        assert 1.0 <= s <= 2.0 and -0.5 <= m <= 0.5
    assert not np.allclose(noisy, clean)
    assert not np.allclose(noisy, np.asarray(_apply(noisy_layer, variables, x, seed=4)[0]))  # new noise per key
    jax.tree.map(np.testing.assert_array_equal, clean_stats, noisy_stats)  # statistics of the clean output
    inference = noisy_layer.apply(variables, x, train=False)  # E[s] = 1.5, E[m] = 0; no RNG needed
    np.testing.assert_allclose(inference, 1.5 * clean_layer.apply(variables, x, train=False), rtol=1e-6)
    shift_only = layers.BatchNorm(noise_shift=0.5).apply(variables, x, train=False)
    np.testing.assert_array_equal(shift_only, clean_layer.apply(variables, x, train=False))


def test_the_training_step_draws_new_noise_every_step_and_the_config_checks_it():
    config = mnist_mlp.get_config("bn")
    config.model.bn.noise_shift, config.model.bn.noise_scale = 0.5, 3.0
    config_schema.validate(config)
    model = create_model(config.model)
    state = create_train_state(config, model, jax.random.key(0), jnp.zeros((60, 28, 28), jnp.uint8))
    batch = {"image": jax.random.uniform(jax.random.key(1), (60, 28, 28)), "label": jnp.arange(60) % 10}
    first, _ = train_step(state, batch)
    again, _ = train_step(state, batch)
    jax.tree.map(np.testing.assert_array_equal, first.params, again.params)  # a function of the state
    later, _ = train_step(state.replace(step=state.step + 1), batch)  # the same state a step later
    assert not np.allclose(first.params["Dense_0"]["kernel"], later.params["Dense_0"]["kernel"])
    clean_state = state.replace(apply_fn=create_model(mnist_mlp.get_config("bn").model).apply)
    clean, _ = train_step(clean_state, batch)
    clean_later, _ = train_step(clean_state.replace(step=clean_state.step + 1), batch)
    jax.tree.map(np.testing.assert_array_equal, clean.params, clean_later.params)  # only the noise depends on it
    assert not np.allclose(first.params["Dense_0"]["kernel"], clean.params["Dense_0"]["kernel"])
    config.model.bn.noise_scale = 0.5
    with pytest.raises(ValueError, match=r"config\.model\.bn\.noise_scale = 0\.5: must be >= 1"):
        config_schema.validate(config)
