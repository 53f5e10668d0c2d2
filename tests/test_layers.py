"""The Flax layers against `flax.linen.BatchNorm`, a NumPy Algorithm 2, and the paper's
placement of BN (z = g(BN(Wu)), bias dropped)."""

import functools
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import numpy_reference as ref
import pytest

from bnrepro.convolution import conv_general_dilated, conv_with_gemm_gradients
from bnrepro.layers import BatchNorm, ConvBN, DenseBN, population_statistics

MOMENTUM, EPS = 0.9, 1e-3


def _inputs(shape, seed=0):
    return jnp.asarray(np.random.default_rng(seed).normal(2.0, 3.0, shape), jnp.float32)


def _pair(**ours):
    """Our BatchNorm and Flax's with matching settings (biased running variance, as Flax keeps)."""
    return (
        BatchNorm(momentum=MOMENTUM, eps=EPS, unbiased_running_var=False, **ours),
        nn.BatchNorm(momentum=MOMENTUM, epsilon=EPS),
    )


def _perturbed(variables, seed=5):
    """Non-trivial gamma/beta and running moments, identical for both implementations."""
    leaves, treedef = jax.tree.flatten(variables)
    keys = jax.random.split(jax.random.key(seed), len(leaves))
    return treedef.unflatten([v + 0.3 * jax.random.uniform(k, v.shape) for v, k in zip(leaves, keys)])


@pytest.mark.parametrize("backward", ["paper", "autodiff"])
@pytest.mark.parametrize("shape", [(16, 5), (4, 6, 6, 3)])
def test_matches_flax_batchnorm_train_eval_running_stats_and_gradients(shape, backward):
    ours, theirs = _pair(backward=backward)
    x = _inputs(shape)
    variables = jax.jit(lambda x: _perturbed(theirs.init(jax.random.key(0), x, use_running_average=True)))(x)
    assert jax.tree.structure(variables["params"]) == jax.tree.structure(
        ours.init(jax.random.key(0), x, train=False)["params"]
    )

    # Flax names the running variance "var" too: the trees are interchangeable.
    def our_loss(params, x):
        y, updates = ours.apply({**variables, "params": params}, x, train=True, mutable=["batch_stats"])
        return jnp.sum(jnp.sin(y)), (y, updates)

    def their_loss(params, x):
        y, updates = theirs.apply(
            {**variables, "params": params}, x, use_running_average=False, mutable=["batch_stats"]
        )
        return jnp.sum(jnp.sin(y)), (y, updates)

    # Compiled whole (op by op, each primitive compiled on its own: most of the test's time).
    (_, (y_ours, upd_ours)), g_ours = jax.jit(jax.value_and_grad(our_loss, (0, 1), has_aux=True))(
        variables["params"], x
    )
    (_, (y_theirs, upd_theirs)), g_theirs = jax.jit(jax.value_and_grad(their_loss, (0, 1), has_aux=True))(
        variables["params"], x
    )
    np.testing.assert_allclose(y_ours, y_theirs, rtol=1e-5, atol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), upd_ours, upd_theirs)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), g_ours, g_theirs)

    y_eval = jax.jit(functools.partial(ours.apply, train=False))(variables, x)
    y_eval_theirs = jax.jit(functools.partial(theirs.apply, use_running_average=True))(variables, x)
    np.testing.assert_allclose(y_eval, y_eval_theirs, rtol=1e-5, atol=1e-5)


def test_unbiased_running_variance_matches_pytorch_convention():
    """PyTorch: running_var = (1 - 0.1) running_var + 0.1 * m/(m-1) var_B."""
    x = _inputs((10, 4))
    layer = BatchNorm(momentum=0.9)
    variables = layer.init(jax.random.key(0), x, train=False)
    _, updates = layer.apply(variables, x, train=True, mutable=["batch_stats"])
    x64 = np.asarray(x, np.float64)
    np.testing.assert_allclose(updates["batch_stats"]["mean"], 0.1 * x64.mean(0), rtol=1e-5)
    np.testing.assert_allclose(updates["batch_stats"]["var"], 0.9 + 0.1 * x64.var(0, ddof=1), rtol=1e-5)


def test_half_precision_layer_keeps_float32_statistics():
    x = _inputs((8, 3, 3, 4)).astype(jnp.bfloat16)
    layer = BatchNorm()
    variables = layer.init(jax.random.key(0), x, train=False)
    y, updates = layer.apply(variables, x, train=True, mutable=["batch_stats"])
    assert y.dtype == jnp.bfloat16
    assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(updates))


def test_dense_bn_drops_the_bias_and_baseline_keeps_it():
    x = _inputs((8, 6))
    with_bn = DenseBN(4, activation="sigmoid", batch_norm=True).init(jax.random.key(0), x, train=False)
    without = DenseBN(4, activation="sigmoid", batch_norm=False).init(jax.random.key(0), x, train=False)
    assert set(with_bn["params"]["Dense_0"]) == {"kernel"}
    assert set(with_bn["params"]["BatchNorm_0"]) == {"scale", "bias"}
    assert set(without["params"]["Dense_0"]) == {"kernel", "bias"} and "batch_stats" not in without


def test_dense_bn_is_g_of_bn_of_wu():
    x = _inputs((8, 6))
    layer = DenseBN(4, activation="tanh", norm=lambda: BatchNorm(eps=EPS))
    variables = layer.init(jax.random.key(0), x, train=False)
    z, _ = layer.apply(variables, x, train=True, mutable=["batch_stats"])
    wu = np.asarray(x, np.float64) @ np.asarray(variables["params"]["Dense_0"]["kernel"], np.float64)
    y_ref, _, _ = ref.bn_train(wu, 1.0, 0.0, (0,), EPS)
    np.testing.assert_allclose(z, np.tanh(y_ref), rtol=1e-4, atol=1e-5)


def test_conv_bn_statistics_per_feature_map():
    x = _inputs((2, 5, 5, 3))
    layer = ConvBN(4, kernel_size=(3, 3), activation="identity")
    variables = layer.init(jax.random.key(0), x, train=False)
    assert "bias" not in variables["params"]["Conv_0"]
    z, _ = layer.apply(variables, x, train=True, mutable=["batch_stats"])
    assert z.shape == (2, 5, 5, 4)
    np.testing.assert_allclose(np.asarray(z).reshape(-1, 4).mean(0), 0.0, atol=1e-5)
    np.testing.assert_allclose(np.asarray(z).reshape(-1, 4).var(0), 1.0, rtol=1e-3)


@pytest.mark.parametrize(
    "kernel_size, strides, padding, matmul",
    [
        ((1, 1), (1, 1), "SAME", True),
        ((1, 1), (1, 1), "VALID", True),
        ((1, 1), (1, 1), ((0, 0), (0, 0)), True),
        ((1, 1), (2, 2), "SAME", False),  # strided: not a plain matmul
        ((1, 1), (1, 1), ((1, 1), (0, 1)), False),  # padded
        ((3, 3), (1, 1), "SAME", False),
        ((1,), (1,), "SAME", True),  # one spatial axis (N, W, C)
    ],
)
def test_conv_general_dilated_computes_1x1_convolutions_as_matmuls(kernel_size, strides, padding, matmul):
    """`nn.Conv` with our `conv_general_dilated` against Flax's own (`lax.conv_general_dilated`), from the same
    parameters: the output and the gradients of the kernel, the bias and the input; and a 1x1 convolution
    (only that) runs as a dot_general, forward and backward, with no convolution left."""
    x = _inputs((2, 6, 5, 7)[: len(kernel_size) + 1] + (7,))
    ours = nn.Conv(4, kernel_size, strides, padding=padding, conv_general_dilated=conv_general_dilated)
    flax = nn.Conv(4, kernel_size, strides, padding=padding)
    variables = flax.init(jax.random.key(0), x)
    np.testing.assert_allclose(
        jax.jit(ours.apply)(variables, x), jax.jit(flax.apply)(variables, x), rtol=1e-5, atol=1e-5
    )
    # d/d(parameters, input), compiled whole (op by op, each primitive compiled on its own)
    grads = [
        jax.jit(jax.grad(lambda v, u, m=m: jnp.sum(jnp.sin(m.apply(v, u))), (0, 1)))(variables, x) for m in (ours, flax)
    ]
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4), *grads)
    jaxpr = jax.make_jaxpr(jax.grad(lambda v: jnp.sum(jnp.sin(ours.apply(v, x)))))(variables)
    primitives = {e.primitive.name for e in jaxpr.eqns}
    assert ("conv_general_dilated" in primitives) is not matmul
    assert ("dot_general" in primitives) is matmul


@pytest.mark.parametrize(
    "shape, window, strides, padding",
    [
        ((2, 23, 21, 3), (7, 7), (2, 2), "SAME"),  # the 224 px stem's: 7x7, stride 2, 3 channels
        ((2, 9, 10, 5), (3, 3), (1, 1), "SAME"),
        ((2, 10, 9, 4), (3, 3), (2, 2), "SAME"),  # one more row of padding at the far end
        ((2, 10, 10, 4), (3, 3), (2, 2), "VALID"),
        ((2, 8, 9, 3), (3, 2), (1, 2), ((2, 0), (1, 3))),  # uneven window, strides and padding
    ],
)
def test_conv_with_gemm_gradients_is_xlas_convolution_and_its_gradients(shape, window, strides, padding):
    """`conv_with_gemm_gradients` (gradients as matmuls over im2col's patches) against `lax.conv_general_dilated`
    and XLA's own transposed convolutions: the output and the gradients of the input and the kernel."""
    u = _inputs(shape)
    kernel = jax.random.normal(jax.random.key(1), (*window, shape[-1], 6))
    pads = jax.lax.padtype_to_pads(shape[1:3], window, strides, padding) if isinstance(padding, str) else padding
    pads = tuple(map(tuple, pads))

    def loss(conv: Callable[..., jax.Array], u: jax.Array, kernel: jax.Array) -> jax.Array:
        return jnp.sum(jnp.sin(conv(u, kernel)))

    ours = functools.partial(loss, lambda u, k: conv_with_gemm_gradients(u, k, strides, pads, None))
    xla = functools.partial(
        loss,
        lambda u, k: jax.lax.conv_general_dilated(u, k, strides, padding, dimension_numbers=("NHWC", "HWIO", "NHWC")),
    )
    # Compiled whole, as training runs them (op by op, the im2col's many small ops took most of the test's time).
    np.testing.assert_allclose(jax.jit(ours)(u, kernel), jax.jit(xla)(u, kernel), rtol=1e-5)
    gradients = [jax.jit(jax.grad(loss, (0, 1)))(u, kernel) for loss in (ours, xla)]
    for a, b in zip(*gradients, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("images, gemm", [(1, False), (2, True)])
def test_large_convolutions_take_gemm_gradients_on_cpu(images, gemm, dtype):
    """Through `nn.Conv`, a 3x3 convolution over 64 channels at 64x64 has 2.4M patches' elements with one image
    (XLA's gradients) and 4.7M with two (`conv_with_gemm_gradients`, >= `GEMM_GRADIENTS_MIN_ELEMENTS`); the
    gradients are Flax's own either way, the kernel's float32 (the layer computes in `dtype`)."""
    assert jax.default_backend() == "cpu"
    x = _inputs((images, 64, 64, 64))
    conv = nn.Conv(8, (3, 3), dtype=dtype, conv_general_dilated=conv_general_dilated)
    reference = nn.Conv(8, (3, 3), dtype=dtype)
    variables = reference.init(jax.random.key(0), x)

    def loss(model: nn.Module, variables: dict) -> jax.Array:
        return jnp.sum(jnp.sin(model.apply(variables, x).astype(jnp.float32)))

    assert ("custom_vjp_call" in str(jax.make_jaxpr(jax.grad(functools.partial(loss, conv)))(variables))) is gemm
    ours, flax = (jax.jit(jax.grad(functools.partial(loss, model)))(variables)["params"] for model in (conv, reference))
    assert ours["kernel"].dtype == jnp.float32
    tolerance = (1e-3 if dtype == jnp.float32 else 3e-2) * float(jnp.max(jnp.abs(flax["kernel"])))
    for name in ("kernel", "bias"):
        np.testing.assert_allclose(ours[name], flax[name], atol=tolerance)


def test_unknown_activation_names_the_choices():
    with pytest.raises(ValueError, match="unknown activation 'swish'.*sigmoid"):
        DenseBN(3, activation="swish").init(jax.random.key(0), jnp.ones((2, 2)), train=False)


class _TwoLayer(nn.Module):
    @nn.compact
    def __call__(self, x, train):
        x = DenseBN(5, activation="sigmoid", norm=lambda: BatchNorm(eps=EPS))(x, train)
        return ConvBN(3, kernel_size=(1, 1), activation="relu", norm=lambda: BatchNorm(eps=EPS))(
            x.reshape(x.shape[0], 1, 1, 5).repeat(2, axis=1), train
        )


def test_population_statistics_is_algorithm2_over_training_batches():
    model = _TwoLayer()
    k, m = 4, 6
    batches = jnp.stack([_inputs((m, 7), seed=s) for s in range(k)])
    variables = jax.jit(lambda b: _perturbed(model.init(jax.random.key(0), b, train=False)))(batches[0])
    stats = jax.jit(lambda v, b: population_statistics(model, v, b))(variables, batches)

    # By hand: each layer's pre-BN activations on every batch, then E_B[mu_B], m/(m-1) E_B[var_B].
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), variables["params"])
    dense_means, dense_vars, conv_means, conv_vars = [], [], [], []
    for b in np.asarray(batches, np.float64):
        wu = b @ p["DenseBN_0"]["Dense_0"]["kernel"]
        y, mu, var = ref.bn_train(
            wu, p["DenseBN_0"]["BatchNorm_0"]["scale"], p["DenseBN_0"]["BatchNorm_0"]["bias"], (0,), EPS
        )
        dense_means.append(mu), dense_vars.append(var)
        h = 1 / (1 + np.exp(-y))
        conv_in = np.repeat(h.reshape(m, 1, 1, 5), 2, axis=1)
        wu = conv_in @ p["ConvBN_0"]["Conv_0"]["kernel"][0, 0]
        _, mu, var = ref.bn_train(wu, 1.0, 0.0, (0, 1, 2), EPS)
        conv_means.append(mu), conv_vars.append(var)
    dense_ref = ref.bn_population(dense_means, dense_vars, m)
    conv_ref = ref.bn_population(conv_means, conv_vars, m * 2)  # m' = m * p * q locations
    got = stats["DenseBN_0"]["BatchNorm_0"], stats["ConvBN_0"]["BatchNorm_0"]
    for layer, (mean_ref, var_ref) in zip(got, (dense_ref, conv_ref)):
        np.testing.assert_allclose(layer["mean"], mean_ref, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(layer["var"], var_ref, rtol=1e-4, atol=1e-6)
    assert jax.tree.structure(stats) == jax.tree.structure(variables["batch_stats"])
