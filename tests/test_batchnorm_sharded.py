"""Global-batch BN across devices (`axis_name`) on 8 simulated CPU devices (see conftest.py):
statistics, outputs and gradients under `jax.shard_map` must equal one device holding the
whole batch, including the gradients of replicated gamma/beta (the shard_map trap in
shared/stack-notes.md)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import numpy_reference as ref
import pytest
from jax.sharding import PartitionSpec as P

from bnrepro.batchnorm import batch_norm
from bnrepro.layers import BatchNorm

NUM_DEVICES = 8
pytestmark = pytest.mark.skipif(jax.device_count() < NUM_DEVICES, reason="needs 8 (simulated) devices")


@pytest.fixture(scope="module")
def mesh():
    return jax.make_mesh((NUM_DEVICES,), ("batch",), axis_types=(jax.sharding.AxisType.Auto,))


def _data(shape):
    rng = np.random.default_rng(0)
    # A different offset on every device's shard: averaging per-device variances would be wrong.
    offsets = np.repeat(np.arange(NUM_DEVICES) * 3.0, shape[0] // NUM_DEVICES).reshape(
        (shape[0],) + (1,) * (len(shape) - 1)
    )
    x = rng.normal(0.0, 1.0, shape) + offsets
    gamma, beta = rng.uniform(0.5, 2.0, shape[-1]), rng.normal(size=shape[-1])
    head = rng.normal(size=shape)
    return x, gamma, beta, head


def _sharded_and_single_device(mesh, shape, **bn_kwargs):
    """Loss value, (y, moments) and gradients w.r.t. (gamma, beta, x) of a BN under `shard_map` over 8
    devices with axis_name="batch", and of the same BN on one device holding the whole batch."""
    x, gamma, beta, head = (jnp.asarray(a, jnp.float32) for a in _data(shape))

    def loss(gamma, beta, x, head, axis_name):
        y, moments = batch_norm(x, gamma, beta, axis_name=axis_name, **bn_kwargs)
        total = jnp.sum(jnp.tanh(y) * head)
        return (total if axis_name is None else jax.lax.psum(total, axis_name)), (y, moments)

    grad_fn = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)
    sharded = jax.jit(
        jax.shard_map(
            functools.partial(grad_fn, axis_name="batch"),
            mesh=mesh,
            in_specs=(P(), P(), P("batch"), P("batch")),
            out_specs=((P(), (P("batch"), P())), (P(), P(), P("batch"))),
        )
    )
    single = jax.jit(functools.partial(grad_fn, axis_name=None))  # compiled whole, as the sharded one, not op by op
    return (x, gamma, beta), sharded(gamma, beta, x, head), single(gamma, beta, x, head)


def _assert_same(sharded, single):
    (_, (y_s, m_s)), g_s = sharded
    (_, (y_1, m_1)), g_1 = single
    np.testing.assert_allclose(y_s, y_1, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(m_s.mean, m_1.mean, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(m_s.var, m_1.var, rtol=1e-5)
    for a, b in zip(g_s, g_1):  # d/dgamma, d/dbeta (replicated), d/dx (sharded)
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("backward", ["paper", "autodiff"])
@pytest.mark.parametrize("shape, axes", [((32, 5), (0,)), ((16, 3, 3, 4), (0, 1, 2))])
def test_sharded_global_batch_equals_single_device(mesh, shape, axes, backward):
    (x, gamma, beta), sharded, single = _sharded_and_single_device(mesh, shape, axes=axes, backward=backward)
    _assert_same(sharded, single)
    (_, (y_s, m_s)), _ = sharded
    y_ref, mu_ref, var_ref = ref.bn_train(np.asarray(x), np.asarray(gamma), np.asarray(beta), axes, 1e-5)
    np.testing.assert_allclose(m_s.mean, mu_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(m_s.var, var_ref, rtol=1e-5)
    np.testing.assert_allclose(y_s, y_ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("backward", ["paper", "autodiff"])
def test_sharded_virtual_batches_are_per_device_groups(mesh, backward):
    _, sharded, single = _sharded_and_single_device(mesh, (32, 5), axes=(0,), virtual_batch_size=2, backward=backward)
    _assert_same(sharded, single)


def test_sharded_layer_keeps_identical_running_statistics(mesh):
    x, *_ = _data((32, 4, 4, 3))
    x = jnp.asarray(x, jnp.float32)
    layer = BatchNorm(axis_name="batch", momentum=0.5)
    variables = jax.jit(functools.partial(BatchNorm(momentum=0.5).init, train=False))(jax.random.key(0), x)

    def step(variables, x):
        return layer.apply(variables, x, train=True, mutable=["batch_stats"])

    sharded = jax.jit(jax.shard_map(step, mesh=mesh, in_specs=(P(), P("batch")), out_specs=(P("batch"), P())))
    y, updates = sharded(variables, x)
    y_one, updates_one = jax.jit(functools.partial(BatchNorm(momentum=0.5).apply, train=True, mutable=["batch_stats"]))(
        variables, x
    )
    np.testing.assert_allclose(y, y_one, rtol=1e-5, atol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), updates, updates_one)
