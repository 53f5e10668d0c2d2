"""Batch Renormalization (issue 7, part 4): equal to BN when rmax = 1, dmax = 0 (values and gradients); r and d
by a NumPy re-derivation when clipping is active, held constant in the backward pass (finite differences);
the rmax/dmax schedule; the layer's step counter and moving averages."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bnrepro import batchnorm, layers
from bnrepro.batchnorm import Moments


def _data(dtype=np.float32):
    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 2.0, (16, 5)).astype(dtype)
    gamma, beta = rng.normal(1.0, 0.3, 5).astype(dtype), rng.normal(0.0, 0.3, 5).astype(dtype)
    running = Moments(rng.normal(2.0, 1.0, 5).astype(dtype), rng.uniform(0.5, 9.0, 5).astype(dtype))
    return x, gamma, beta, running


@pytest.mark.parametrize("backward", ["paper", "autodiff"])
def test_equals_batch_norm_when_rmax_is_1_and_dmax_is_0(backward):
    x, gamma, beta, running = _data()

    def renorm_loss(x, gamma, beta):
        y, _ = batchnorm.batch_renorm(x, gamma, beta, running, axes=0, rmax=1.0, dmax=0.0, backward=backward)
        return jnp.sum(jnp.sin(y))

    def bn_loss(x, gamma, beta):
        return jnp.sum(jnp.sin(batchnorm.batch_norm(x, gamma, beta, axes=0, backward=backward)[0]))

    renorm_loss, bn_loss = jax.jit(renorm_loss), jax.jit(bn_loss)  # compiled whole, not op by op
    np.testing.assert_allclose(renorm_loss(x, gamma, beta), bn_loss(x, gamma, beta), rtol=1e-6)
    grads = (jax.jit(jax.grad(loss, (0, 1, 2)))(x, gamma, beta) for loss in (renorm_loss, bn_loss))
    for a, b in zip(*grads):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_r_and_d_as_numpy_derives_them_and_held_constant_in_the_backward_pass():
    with jax.enable_x64(True):  # float64 for the finite differences
        x, gamma, beta, running = _data(np.float64)
        rmax, dmax, eps = 1.5, 0.5, 1e-5
        mu, var = x.mean(0), x.var(0)
        sigma = np.sqrt(running.var + eps)
        r = np.clip(np.sqrt(var + eps) / sigma, 1 / rmax, rmax)
        d = np.clip((mu - running.mean) / sigma, -dmax, dmax)
        assert np.any(r == rmax) or np.any(r == 1 / rmax)  # clipping is active in this case
        assert np.any(np.abs(d) == dmax)
        expected = gamma * ((x - mu) / np.sqrt(var + eps) * r + d) + beta
        y, moments = batchnorm.batch_renorm(x, gamma, beta, running, axes=0, rmax=rmax, dmax=dmax, eps=eps)
        np.testing.assert_allclose(y, expected, rtol=1e-10)
        np.testing.assert_allclose(moments.mean, mu, rtol=1e-12)

        # The gradient treats r and d as constants: finite differences of the same formula with r, d frozen.
        weights = np.random.default_rng(1).normal(size=x.shape)

        def frozen(x):
            m, v = x.mean(0), x.var(0)
            return np.sum(weights * (gamma * ((x - m) / np.sqrt(v + eps) * r + d) + beta))

        grad = jax.jit(jax.grad(lambda x: jnp.sum(weights * batchnorm.batch_renorm(
            x, gamma, beta, running, axes=0, rmax=rmax, dmax=dmax, eps=eps)[0])))(x)  # fmt: skip
        h, numeric = 1e-6, np.zeros_like(x)
        for index in np.ndindex(x.shape):
            step = np.zeros_like(x)
            step[index] = h
            numeric[index] = (frozen(x + step) - frozen(x - step)) / (2 * h)
        np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-8)
        with pytest.raises(ValueError, match="need rmax >= 1 and dmax >= 0"):
            batchnorm.batch_renorm(x, gamma, beta, running, axes=0, rmax=0.5, dmax=0.0)


def test_the_schedule_of_rmax_and_dmax():
    limits = {
        step: tuple(float(v) for v in batchnorm.renorm_limits(step))
        for step in (0, 5_000, 15_000, 25_000, 40_000, 90_000)
    }
    assert limits[0] == limits[5_000] == (1.0, 0.0)
    assert limits[15_000] == pytest.approx((1.0 + 2.0 * 10 / 35, 2.5))
    assert limits[25_000] == pytest.approx((1.0 + 2.0 * 20 / 35, 5.0))
    assert limits[40_000] == limits[90_000] == (3.0, 5.0)


def test_the_layer_counts_its_steps_and_keeps_moving_averages():
    layer = layers.BatchNorm(renorm=True, momentum=0.9)
    x = jnp.asarray(_data()[0])
    variables = layer.init(jax.random.key(0), x, train=False)
    assert float(variables["batch_stats"]["renorm_steps"]) == 0.0
    y, updates = layer.apply(variables, x, train=True, mutable=["batch_stats"])
    stats = updates["batch_stats"]
    assert float(stats["renorm_steps"]) == 1.0
    np.testing.assert_allclose(stats["mean"], 0.1 * np.asarray(x).mean(0), rtol=1e-5)
    plain = layers.BatchNorm(momentum=0.9)  # in the warm-up (rmax = 1, dmax = 0) it is BN
    y_bn, _ = plain.apply(plain.init(jax.random.key(0), x, train=False), x, train=True, mutable=["batch_stats"])
    np.testing.assert_allclose(y, y_bn, rtol=1e-6)
    inference = layer.apply({**variables, "batch_stats": {"mean": stats["mean"], "var": stats["var"]}}, x, train=False)
    assert inference.shape == x.shape  # inference needs only the statistics (population ones have no counter)


def test_the_small_batch_configs():
    from config_files import mnist_small_batch

    from bnrepro import config_schema

    bn, renorm = (mnist_small_batch.get_config(v) for v in ("bn", "renorm"))
    for config in (bn, renorm):
        config_schema.validate(config)
        assert config.batch_size == 4 and config.eval_statistics == "moving_average"
    assert renorm.model.bn.renorm and not bn.model.bn.renorm
    with pytest.raises(ValueError, match="unknown variant 'brn'"):
        mnist_small_batch.get_config("brn")
