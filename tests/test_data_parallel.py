"""Data parallelism over all local devices (here 8 simulated CPU devices, conftest.py; the GPUs or TPU chips in
the accelerator check): the mini-batch split across devices trains exactly as one device holding it, with global
BN statistics, or with per-device statistics (the paper's per-replica mini-batches) through
`model.bn.virtual_batch_size`."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import numpy_reference
import pytest
from config_files import mnist_mlp

from bnrepro.models import create_model
from bnrepro.training.device_data import Dataset, epoch_permutation
from bnrepro.training.sharding import data_parallel_sharding
from bnrepro.training.state import create_train_state
from bnrepro.training.steps import train_steps

NUM_DEVICES, BATCH = jax.device_count(), 64
pytestmark = pytest.mark.skipif(
    NUM_DEVICES < 2 or BATCH % NUM_DEVICES, reason="needs 2 or more devices, a divisor of 64"
)


def _train(batch_sharding, virtual_batch_size=None, num_steps=3):
    config = mnist_mlp.get_config("bn")
    config.learning_rate = 0.5
    config.model.bn.virtual_batch_size = virtual_batch_size
    model = create_model(config.model)
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 640).astype(np.int32)
    data = Dataset.create(rng.integers(0, 256, (640, 28, 28), dtype=np.uint8), labels)
    state = create_train_state(config, model, jax.random.key(0), data.take(jnp.arange(BATCH))[0])
    permutation = epoch_permutation(state.rng, state.epoch, 640)
    if batch_sharding is not None:
        state, data, permutation = jax.device_put(
            (state, data, permutation), batch_sharding.update(spec=jax.sharding.PartitionSpec())
        )
    run = jax.jit(functools.partial(train_steps, batch_size=BATCH, num_steps=num_steps, batch_sharding=batch_sharding))
    hlo = run.lower(state, data, permutation).compile().as_text()
    state, _ = run(state, data, permutation)
    return state, hlo


def _assert_same_params(a, b):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=2e-5, atol=2e-6), a.params, b.params)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=2e-5, atol=2e-6), a.batch_stats, b.batch_stats)


@pytest.mark.accelerator
def test_global_bn_across_devices_equals_one_device_with_the_whole_batch():
    sharding = data_parallel_sharding(0, BATCH)
    assert sharding.mesh.size == NUM_DEVICES
    sharded, hlo = _train(sharding)
    single, _ = _train(None)
    assert "all-reduce" in hlo  # the statistics and gradients really are combined across devices
    _assert_same_params(sharded, single)


def test_per_device_bn_equals_ghost_batches_on_one_device_and_differs_from_global():
    per_device = BATCH // NUM_DEVICES
    sharded, _ = _train(data_parallel_sharding(0, BATCH), virtual_batch_size=per_device)
    single, _ = _train(None, virtual_batch_size=per_device)
    _assert_same_params(sharded, single)
    global_bn, _ = _train(None)
    difference = jnp.abs(
        sharded.params["DenseBN_0"]["Dense_0"]["kernel"] - global_bn.params["DenseBN_0"]["Dense_0"]["kernel"]
    )
    assert float(difference.max()) > 1e-4


def test_one_device_is_not_sharded_and_an_uneven_batch_is_refused():
    assert data_parallel_sharding(1, 60) is None
    with pytest.raises(ValueError, match=r"config\.batch_size = 60: does not split evenly across 8 devices"):
        data_parallel_sharding(0, 60)


@pytest.mark.skipif(NUM_DEVICES != 8, reason="needs 8 (simulated) devices")
def test_bn_over_groups_of_devices_is_each_groups_batch_normalized_alone():
    """`model.bn.device_group_size = 4` on 8 devices, each holding 8 of 64 examples: each group of 4 devices
    normalizes its 32 examples together. Values and gradients against NumPy normalizing each group's concatenated
    examples (Algorithm 1 and Sec. 3's backward pass). (tests/test_export.py checks that the training program
    all-reduces the moments within groups of 4 devices.)"""
    sharding = data_parallel_sharding(0, BATCH)
    rng = np.random.default_rng(0)
    x, dy = rng.normal(2.0, 3.0, (2, BATCH, 5))
    gamma, beta = rng.normal(1.0, 0.2, 5), rng.normal(0.0, 1.0, 5)
    layer = create_model(mnist_mlp.get_config("bn").model, batch_shards=NUM_DEVICES).norm(device_group_size=4)
    variables = {"params": {"scale": jnp.asarray(gamma, jnp.float32), "bias": jnp.asarray(beta, jnp.float32)},
                 "batch_stats": {"mean": jnp.zeros(5), "var": jnp.ones(5)}}  # fmt: skip

    def loss(variables, x):
        y, _ = layer.apply(variables, x, train=True, mutable=["batch_stats"])
        return jnp.sum(y * dy), y

    run = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))
    x_sharded = jax.device_put(jnp.asarray(x, jnp.float32), sharding)
    (_, y), (grads, dx) = run(variables, x_sharded)

    expected_y, expected_dx, dgamma, dbeta = [], [], 0.0, 0.0
    for group in np.split(np.arange(BATCH), 2):  # examples 0-31 on devices 0-3, 32-63 on devices 4-7
        y_group, _, _ = numpy_reference.bn_train(x[group], gamma, beta, (0,), layer.eps)
        dx_group, dgamma_group, dbeta_group = numpy_reference.bn_train_backward(x[group], gamma, dy[group], layer.eps)
        expected_y.append(y_group), expected_dx.append(dx_group)
        dgamma, dbeta = dgamma + dgamma_group, dbeta + dbeta_group
    np.testing.assert_allclose(y, np.concatenate(expected_y), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dx, np.concatenate(expected_dx), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(grads["params"]["scale"], dgamma, rtol=1e-4)
    np.testing.assert_allclose(grads["params"]["bias"], dbeta, rtol=1e-4, atol=1e-4)


def test_a_device_group_that_does_not_divide_the_devices_is_refused():
    layer = create_model(mnist_mlp.get_config("bn").model, batch_shards=8).norm(device_group_size=3)
    with pytest.raises(
        ValueError, match=r"device_group_size = 3 \(config\.model\.bn\.device_group_size\) does not divide the 8"
    ):
        layer.init(jax.random.key(0), jnp.ones((64, 5)), train=True)
    both = create_model(mnist_mlp.get_config("bn").model, batch_shards=8).norm(
        device_group_size=4, virtual_batch_size=8
    )
    with pytest.raises(ValueError, match="device_group_size or virtual_batch_size, not both"):
        both.init(jax.random.key(0), jnp.ones((64, 5)), train=True)
