"""AdaBN (issue 7, part 3): `layers.adapt_to_domain` re-estimates only BN statistics, equal to Algorithm 2 done
by hand in NumPy on the target images; the domain shifts of `bnrepro.data.shifts`."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from config_files import mnist_mlp

from bnrepro import layers
from bnrepro.data import shifts
from bnrepro.models import create_model


def test_adapt_to_domain_changes_only_the_statistics_and_they_are_algorithm_2_on_the_target():
    config = mnist_mlp.get_config("bn")
    model = create_model(config.model)
    variables = jax.jit(lambda r, x: model.init(r, x, train=False))(jax.random.key(0), jnp.zeros((4, 28, 28)))
    target = np.asarray(jax.random.uniform(jax.random.key(1), (50, 28, 28)) * 3.0 + 1.0)  # a shifted domain
    adapted = layers.adapt_to_domain(model, variables, jnp.asarray(target), batch_size=20)
    jax.tree.map(np.testing.assert_array_equal, adapted["params"], variables["params"])  # weights kept
    # The first BN layer by hand: K = 2 mini-batches of 20 (the last 10 images fill none), m = 20.
    x = target[:40].reshape(2, 20, -1) @ np.asarray(variables["params"]["DenseBN_0"]["Dense_0"]["kernel"])
    means, variances = x.mean(axis=1), x.var(axis=1)
    stats = adapted["batch_stats"]["DenseBN_0"]["BatchNorm_0"]
    np.testing.assert_allclose(stats["mean"], means.mean(0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(stats["var"], 20 / 19 * variances.mean(0), rtol=1e-4)
    assert not np.allclose(stats["mean"], variables["batch_stats"]["DenseBN_0"]["BatchNorm_0"]["mean"])
    with pytest.raises(ValueError, match="fill no mini-batch of 64"):
        layers.adapt_to_domain(model, variables, jnp.asarray(target), batch_size=64)


def test_domain_shifts():
    images = np.random.default_rng(0).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    for name, shift in shifts.SHIFTS.items():
        shifted = shift(images)
        assert shifted.shape == images.shape and shifted.dtype == np.uint8, name
        assert not np.array_equal(shifted, images), name
    np.testing.assert_array_equal(shifts.inverted(images), 255 - images.astype(int))
    np.testing.assert_array_equal(shifts.rotated(images, degrees=0.0), images)
    np.testing.assert_array_equal(shifts.rotated(images, degrees=90.0), np.rot90(images, axes=(1, 2)))
    np.testing.assert_array_equal(shifts.noisy(images), shifts.noisy(images))  # a fixed seed
    low = shifts.low_contrast(images)
    assert low.min() >= 110 and low.max() <= 110 + 0.3 * 255 + 1
