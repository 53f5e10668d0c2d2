"""The functional core against independent references: a NumPy re-derivation of Algorithms 1
and 2, finite differences in float64, and the paper's stated properties."""

import jax
import jax.numpy as jnp
import numpy as np
import numpy_reference as ref
import pytest

from bnrepro.batchnorm import Moments, batch_norm, batch_norm_inference, ema_update, population_moments

EPS = 1e-5
BACKWARDS = ("paper", "autodiff")


def _random(shape, seed=0, scale=1.0, offset=0.0):
    return np.random.default_rng(seed).normal(offset, scale, size=shape)


def _params(features, seed=1):
    rng = np.random.default_rng(seed)
    return rng.uniform(0.5, 2.0, features), rng.normal(size=features)


# --- Algorithm 1 against NumPy ------------------------------------------------------------


@pytest.mark.accelerator
@pytest.mark.parametrize("backward", BACKWARDS)
@pytest.mark.parametrize("shape, axes", [((32, 7), (0,)), ((4, 5, 6, 3), (0, 1, 2))])
def test_forward_matches_numpy_algorithm1(shape, axes, backward):
    x = _random(shape, scale=3.0, offset=2.0)
    gamma, beta = _params(shape[-1])
    y, moments = batch_norm(
        jnp.asarray(x, jnp.float32),
        jnp.asarray(gamma, jnp.float32),
        jnp.asarray(beta, jnp.float32),
        axes=axes,
        eps=EPS,
        backward=backward,
    )
    y_ref, mu_ref, var_ref = ref.bn_train(x, gamma, beta, axes, EPS)
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=2e-5)
    np.testing.assert_allclose(moments.mean, mu_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(moments.var, var_ref, rtol=1e-5)
    assert moments.mean.shape == moments.var.shape == (shape[-1],)


def test_normalized_activations_have_zero_mean_unit_variance():
    x = jnp.asarray(_random((256, 10), scale=5.0, offset=-3.0), jnp.float32)
    y, _ = batch_norm(x, jnp.ones(10), jnp.zeros(10), axes=(0,), eps=0.0)
    np.testing.assert_allclose(jnp.mean(y, 0), 0.0, atol=1e-5)
    np.testing.assert_allclose(jnp.var(y, 0), 1.0, rtol=1e-5)


def test_convolution_statistics_are_per_feature_map_over_n_h_w():
    x = _random((3, 4, 5, 6), offset=np.arange(6.0))  # each feature map has its own offset
    y, moments = batch_norm(jnp.asarray(x, jnp.float32), jnp.ones(6), jnp.zeros(6), axes=(0, 1, 2))
    np.testing.assert_allclose(moments.mean, x.reshape(-1, 6).mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(moments.var, x.reshape(-1, 6).var(0), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(y).reshape(-1, 6).mean(0), 0.0, atol=1e-5)


def test_nchw_layout_normalizes_axis_1():
    x = _random((4, 3, 5, 5))
    gamma, beta = _params(3)
    y, moments = batch_norm(jnp.asarray(x, jnp.float32), jnp.asarray(gamma), jnp.asarray(beta), axes=(0, 2, 3))
    x_nhwc = x.transpose(0, 2, 3, 1)
    y_ref, mu_ref, _ = ref.bn_train(x_nhwc, gamma, beta, (0, 1, 2), EPS)
    np.testing.assert_allclose(np.asarray(y).transpose(0, 2, 3, 1), y_ref, rtol=1e-5, atol=2e-5)
    np.testing.assert_allclose(moments.mean, mu_ref, atol=1e-6)


# --- Algorithm 2 ----------------------------------------------------------------------------


@pytest.mark.accelerator
def test_population_moments_and_inference_match_numpy_algorithm2():
    m, k, d = 16, 5, 4
    batches = [_random((m, d), seed=s, scale=2.0, offset=1.0) for s in range(k)]
    gamma, beta = _params(d)
    moments = [batch_norm(jnp.asarray(b, jnp.float32), jnp.ones(d), jnp.zeros(d), axes=(0,))[1] for b in batches]
    stacked = Moments(jnp.stack([mo.mean for mo in moments]), jnp.stack([mo.var for mo in moments]))
    population = population_moments(stacked, batch_size=m)

    ref_means = [ref.bn_train(b, 1.0, 0.0, (0,), EPS)[1] for b in batches]
    ref_vars = [ref.bn_train(b, 1.0, 0.0, (0,), EPS)[2] for b in batches]
    mean_ref, var_ref = ref.bn_population(ref_means, ref_vars, m)
    np.testing.assert_allclose(population.mean, mean_ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(population.var, var_ref, rtol=1e-5)

    x = _random((7, d), seed=99)
    y = batch_norm_inference(jnp.asarray(x, jnp.float32), jnp.asarray(gamma), jnp.asarray(beta), population, eps=EPS)
    np.testing.assert_allclose(y, ref.bn_inference(x, gamma, beta, mean_ref, var_ref, EPS), rtol=1e-5, atol=1e-5)


def test_inference_output_of_one_example_ignores_the_others():
    d = 6
    moments = Moments(jnp.arange(d, dtype=jnp.float32), jnp.linspace(0.5, 3.0, d))
    batch = jnp.asarray(_random((10, d)), jnp.float32)
    alone = batch_norm_inference(batch[:1], jnp.ones(d), jnp.zeros(d), moments)
    other = batch.at[1:].set(1e3)
    together = batch_norm_inference(other, jnp.ones(d), jnp.zeros(d), moments)
    np.testing.assert_array_equal(alone[0], together[0])


def test_inference_with_conv_input_uses_per_feature_map_moments():
    x = _random((2, 3, 3, 4))
    gamma, beta = _params(4)
    mean, var = np.arange(4.0), np.linspace(1.0, 2.0, 4)
    y = batch_norm_inference(
        jnp.asarray(x, jnp.float32), jnp.asarray(gamma), jnp.asarray(beta), Moments(jnp.asarray(mean), jnp.asarray(var))
    )
    np.testing.assert_allclose(y, ref.bn_inference(x, gamma, beta, mean, var, EPS), rtol=1e-5, atol=1e-5)


def test_ema_update_conventions():
    running = Moments(jnp.array([1.0, 2.0]), jnp.array([3.0, 4.0]))
    batch = Moments(jnp.array([5.0, 6.0]), jnp.array([0.5, 1.0]))
    # Flax/Haiku: biased batch variance; PyTorch's momentum=0.1 is our momentum=0.9 with m/(m-1).
    biased = ema_update(running, batch, momentum=0.9)
    np.testing.assert_allclose(biased.mean, [0.9 * 1 + 0.1 * 5, 0.9 * 2 + 0.1 * 6])
    np.testing.assert_allclose(biased.var, [0.9 * 3 + 0.1 * 0.5, 0.9 * 4 + 0.1 * 1.0])
    unbiased = ema_update(running, batch, momentum=0.9, batch_size=5)
    np.testing.assert_allclose(unbiased.var, [0.9 * 3 + 0.1 * 0.5 * 5 / 4, 0.9 * 4 + 0.1 * 1.0 * 5 / 4])


# --- backward pass ---------------------------------------------------------------------------


def _loss_fn(backward, axes, virtual_batch_size=None):
    def loss(x, gamma, beta):
        y, moments = batch_norm(
            x, gamma, beta, axes=axes, eps=EPS, backward=backward, virtual_batch_size=virtual_batch_size
        )
        weights = jnp.cos(jnp.arange(y.size, dtype=y.dtype)).reshape(y.shape)
        # Include the moments so their cotangents are exercised too.
        return jnp.sum(jnp.tanh(y) * weights) + 0.1 * jnp.sum(moments.mean * moments.var)

    return loss


@pytest.mark.parametrize(
    "shape, axes, vbs", [((12, 5), (0,), None), ((4, 3, 3, 2), (0, 1, 2), None), ((12, 5), (0,), 4)]
)
@pytest.mark.accelerator
def test_paper_backward_equals_autodiff(shape, axes, vbs):
    args = (jnp.asarray(_random(shape, scale=2.0, offset=1.0), jnp.float32), *map(jnp.asarray, _params(shape[-1])))
    args = tuple(a.astype(jnp.float32) for a in args)
    g_paper, g_auto = (jax.jit(jax.grad(_loss_fn(b, axes, vbs), argnums=(0, 1, 2)))(*args) for b in BACKWARDS)
    for a, b in zip(g_paper, g_auto):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.accelerator
@pytest.mark.parametrize("backward", BACKWARDS)
def test_gradients_match_finite_differences_in_float64(backward):
    with jax.enable_x64(True):
        rng = np.random.default_rng(3)
        x = jnp.asarray(rng.normal(1.0, 2.0, (6, 3)))
        gamma, beta = (jnp.asarray(p) for p in _params(3))
        loss = jax.jit(_loss_fn(backward, (0,)))  # compiled once for the 2 x 27 evaluations, not op by op
        grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(x, gamma, beta)
        h = 1e-6
        for arg_index, grad in enumerate(grads):
            args = [np.asarray(a) for a in (x, gamma, beta)]
            numeric = np.zeros_like(args[arg_index])
            for idx in np.ndindex(numeric.shape):
                plus = [a.copy() for a in args]
                minus = [a.copy() for a in args]
                plus[arg_index][idx] += h
                minus[arg_index][idx] -= h
                numeric[idx] = (float(loss(*map(jnp.asarray, plus))) - float(loss(*map(jnp.asarray, minus)))) / (2 * h)
            np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("backward", BACKWARDS)
def test_scale_invariance_sec_3_3(backward):
    """BN((aW)u) = BN(Wu), and d BN((aW)u)/d(aW) = 1/a d BN(Wu)/dW."""
    u = jnp.asarray(_random((20, 8)), jnp.float32)
    w = jnp.asarray(_random((8, 5), seed=4), jnp.float32)
    gamma, beta = (jnp.asarray(p, jnp.float32) for p in _params(5))
    head = jnp.asarray(_random((20, 5), seed=5), jnp.float32)

    def loss(weights):
        y, _ = batch_norm(u @ weights, gamma, beta, axes=(0,), eps=0.0, backward=backward)
        return jnp.sum(jax.nn.sigmoid(y) * head)

    a = 7.5
    y1, _ = batch_norm(u @ w, gamma, beta, axes=(0,), eps=0.0)
    ya, _ = batch_norm(u @ (a * w), gamma, beta, axes=(0,), eps=0.0)
    np.testing.assert_allclose(ya, y1, rtol=1e-4, atol=1e-5)
    grad = jax.jit(jax.grad(loss))
    np.testing.assert_allclose(grad(a * w), grad(w) / a, rtol=1e-3, atol=1e-6)


# --- ghost batches ---------------------------------------------------------------------------


def test_virtual_batch_normalizes_each_group_by_hand():
    x = _random((12, 4), scale=2.0) + np.repeat(np.arange(3.0), 4)[:, None] * 10  # groups differ
    gamma, beta = _params(4)
    y, moments = batch_norm(
        jnp.asarray(x, jnp.float32), jnp.asarray(gamma), jnp.asarray(beta), axes=(0,), virtual_batch_size=4
    )
    groups = [ref.bn_train(x[i : i + 4], gamma, beta, (0,), EPS) for i in range(0, 12, 4)]
    np.testing.assert_allclose(y, np.concatenate([g[0] for g in groups]), rtol=1e-5, atol=2e-5)
    np.testing.assert_allclose(moments.mean, np.mean([g[1] for g in groups], 0), rtol=1e-5)
    np.testing.assert_allclose(moments.var, np.mean([g[2] for g in groups], 0), rtol=1e-5)


def test_virtual_batch_equal_to_whole_batch_is_plain_bn():
    x = jnp.asarray(_random((8, 3, 3, 2)), jnp.float32)
    a = jax.jit(lambda x: batch_norm(x, jnp.ones(2), jnp.zeros(2), axes=(0, 1, 2), virtual_batch_size=8))(x)
    b = jax.jit(lambda x: batch_norm(x, jnp.ones(2), jnp.zeros(2), axes=(0, 1, 2)))(x)
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(u, v, rtol=1e-6, atol=1e-6)


# --- numerics ----------------------------------------------------------------------------------


@pytest.mark.parametrize("shape, axes", [((256, 4), (0,)), ((64, 2, 2, 4), (0, 1, 2))], ids=["dense", "conv"])
def test_large_offset_float32_variance_is_accurate_where_the_naive_formula_fails(shape, axes):
    """Dense layers keep two passes; over several axes the one-pass moments fall back to them here."""
    x = _random(shape, seed=7, offset=1e4)  # std 1 around 10,000
    x32 = jnp.asarray(x, jnp.float32)
    _, moments = batch_norm(x32, jnp.ones(4), jnp.zeros(4), axes=axes)
    true_var = np.asarray(x32, np.float64).var(axes)
    np.testing.assert_allclose(moments.var, true_var, rtol=1e-3)
    naive = jnp.mean(x32 * x32, axes) - jnp.mean(x32, axes) ** 2  # E[x^2] - E[x]^2
    assert np.max(np.abs(naive - true_var) / true_var) > 0.1  # the case is a real trap


@pytest.mark.parametrize("offset", [1.0, 1e3], ids=["one_pass", "two_pass"])
def test_paper_gradients_on_both_moment_paths_match_numpy_finite_differences(offset):
    """Over several axes (a convolution's) the paper's rule takes var_B and sum_i dl/dy_i (x_i - mu) in one pass
    unless a feature's mean is large against its spread (|mu| > 4 sigma, where that cancels): on either side its
    float32 gradients are the float64 central differences of the NumPy re-derivation, at the same (float32)
    inputs."""
    rng = np.random.default_rng(11)
    x = np.asarray(rng.normal(offset, 1.0, (4, 2, 2, 3)).astype(np.float32), np.float64)
    gamma, beta = _params(3)
    weights = np.cos(np.arange(x.size)).reshape(x.shape)

    def numpy_loss(x, gamma, beta):
        y, mean, var = ref.bn_train(x, gamma, beta, (0, 1, 2), EPS)
        return np.sum(np.tanh(y) * weights) + 0.1 * np.sum(mean * var)

    args32 = [jnp.asarray(a, jnp.float32) for a in (x, gamma, beta)]
    grads = jax.jit(jax.grad(_loss_fn("paper", (0, 1, 2)), argnums=(0, 1, 2)))(*args32)
    h = 1e-6 * max(offset, 1.0)
    for arg_index, grad in enumerate(grads):
        args = [x, gamma, beta]
        numeric = np.zeros_like(args[arg_index])
        for idx in np.ndindex(numeric.shape):
            plus, minus = [a.copy() for a in args], [a.copy() for a in args]
            plus[arg_index][idx] += h
            minus[arg_index][idx] -= h
            numeric[idx] = (numpy_loss(*plus) - numpy_loss(*minus)) / (2 * h)
        np.testing.assert_allclose(grad, numeric, rtol=2e-3, atol=2e-3)


def test_models_vmapped_across_the_one_pass_limit_each_get_their_own_path():
    """Under vmap the one-pass/two-pass choice is per model: a model with a large offset beside one without gets
    the values and gradients it gets alone."""
    x = jnp.stack([jnp.asarray(_random((4, 2, 2, 3), seed=s, offset=o), jnp.float32) for s, o in ((5, 1.0), (6, 1e3))])
    gamma, beta = (jnp.asarray(p, jnp.float32) for p in _params(3))

    @jax.jit
    def value_and_grads(x):
        return jax.value_and_grad(_loss_fn("paper", (0, 1, 2)), argnums=(0, 1))(x, gamma, beta)

    together = jax.jit(jax.vmap(value_and_grads))(x)
    for model in range(2):
        alone = value_and_grads(x[model])
        jax.tree.map(lambda a, b, m=model: np.testing.assert_allclose(a[m], b, rtol=1e-5, atol=1e-5), together, alone)


@pytest.mark.accelerator
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_half_precision_input_with_large_offset(dtype):
    x = jnp.asarray(_random((64, 3, 3, 8), seed=8, scale=30.0, offset=2e3), dtype)
    gamma, beta = _params(8)
    y, moments = batch_norm(x, jnp.asarray(gamma, jnp.float32), jnp.asarray(beta, jnp.float32), axes=(0, 1, 2))
    assert y.dtype == dtype and moments.var.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(y)))
    y_ref, _, var_ref = ref.bn_train(np.asarray(x.astype(jnp.float32)), gamma, beta, (0, 1, 2), EPS)
    np.testing.assert_allclose(moments.var, var_ref, rtol=1e-4)
    np.testing.assert_allclose(np.asarray(y.astype(jnp.float32)), y_ref, atol=0.05 if dtype == jnp.bfloat16 else 0.01)
    grad = jax.jit(jax.grad(lambda x: jnp.sum(batch_norm(x, jnp.ones(8), jnp.zeros(8), axes=(0, 1, 2))[0] ** 3)))(x)
    assert grad.dtype == dtype and bool(jnp.all(jnp.isfinite(grad)))


# --- errors ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: batch_norm(jnp.ones((4, 3)), jnp.ones(3), jnp.zeros(3), axes=(2,)), "out of range"),
        (lambda: batch_norm(jnp.ones((4, 3)), jnp.ones(3), jnp.zeros(3), axes=(0, -2)), "same axis twice"),
        (lambda: batch_norm(jnp.ones((4, 3)), jnp.ones(4), jnp.zeros(3), axes=(0,)), "gamma has shape"),
        (lambda: batch_norm(jnp.ones((4, 3)), jnp.ones(3), jnp.zeros((1, 3)), axes=(0,)), "beta has shape"),
        (
            lambda: batch_norm(jnp.ones((6, 3)), jnp.ones(3), jnp.zeros(3), axes=(0,), virtual_batch_size=4),
            "does not divide the batch of 6",
        ),
        (lambda: batch_norm(jnp.ones((1, 3)), jnp.ones(3), jnp.zeros(3), axes=(0,)), "single value"),
        (lambda: batch_norm(jnp.ones((4, 3)), jnp.ones(3), jnp.zeros(3), axes=(0,), backward="magic"), "backward"),
        (
            lambda: batch_norm_inference(
                jnp.ones((4, 3)), jnp.ones(3), jnp.zeros(3), Moments(jnp.zeros(5), jnp.ones(5))
            ),
            "moments.mean has shape",
        ),
        (
            lambda: batch_norm_inference(
                jnp.ones((4, 3)), jnp.ones(3), jnp.zeros(3), Moments(jnp.zeros(3), jnp.ones(2))
            ),
            "moments.var has shape",
        ),
        (lambda: population_moments(Moments(jnp.zeros((2, 3)), jnp.ones((2, 3))), batch_size=1), "m >= 2"),
        (lambda: ema_update(Moments(0.0, 1.0), Moments(0.0, 1.0), momentum=1.5), "momentum=1.5"),
    ],
)
def test_bad_input_raises_value_error_naming_the_problem(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_one_example_conv_batch_is_allowed_because_locations_count():
    y, moments = batch_norm(jnp.asarray(_random((1, 4, 4, 2)), jnp.float32), jnp.ones(2), jnp.zeros(2), axes=(0, 1, 2))
    assert bool(jnp.all(moments.var > 0)) and y.shape == (1, 4, 4, 2)
