"""The Batch Normalizing Transform (Ioffe & Szegedy, 2015) as pure JAX functions.

Everything here is a function of explicit arrays; no module state. The Flax layers in
`bnrepro.layers` are a thin wrapper over these.

* `batch_norm`            -- Algorithm 1 (training): normalize with the mini-batch moments.
* `batch_norm_inference`  -- Algorithm 2, step 11: the frozen affine inference network.
* `population_moments`    -- Algorithm 2, steps 8-9: E[x] = E_B[mu_B], Var[x] = m/(m-1) E_B[var_B].
* `ema_update`            -- Sec. 3.1's moving-average alternative to the population pass.

Statistics are computed in (at least) float32 whatever the input dtype, and the output has
the input's dtype. The variance is computed by the two-pass formula mean((x - mean)^2), which
stays exact for inputs with a large offset where E[x^2] - E[x]^2 cancels catastrophically; the
paper's backward pass over several axes (convolutions) takes E[x^2] - E[x]^2 in one pass while no
feature's mean is large against its spread, and the two passes otherwise (`_guarded_moments`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp

Backward = Literal["paper", "autodiff"]
DEFAULT_EPS = 1e-5


class Moments(NamedTuple):
    """Per-feature statistics.

    `var` is the biased mini-batch variance (divided by m) when it comes from `batch_norm`,
    and the unbiased population estimate when it comes from `population_moments` or from
    `ema_update(..., batch_size=m)`.
    """

    mean: jax.Array
    var: jax.Array


def _normalize_axes(axes: int | Sequence[int], ndim: int) -> tuple[int, ...]:
    """Returns `axes` as sorted non-negative ints, or raises ValueError naming the problem."""
    axes = (axes,) if isinstance(axes, int) else tuple(axes)
    if not axes:
        raise ValueError("batch_norm: `axes` is empty; give the reduced axes, e.g. (0,) or (0, 1, 2).")
    for a in axes:
        if not isinstance(a, int) or not -ndim <= a < ndim:
            raise ValueError(f"batch_norm: axis {a!r} in axes={axes} is out of range for an input of rank {ndim}.")
    normalized = tuple(sorted(a % ndim for a in axes))
    if len(set(normalized)) != len(normalized):
        raise ValueError(f"batch_norm: axes={axes} names the same axis twice.")
    return normalized


def _feature_shape(shape: tuple[int, ...], axes: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(d for i, d in enumerate(shape) if i not in axes)


def _keepdims_shape(shape: tuple[int, ...], axes: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(1 if i in axes else d for i, d in enumerate(shape))


def _check_param_shape(name: str, value: jax.Array, feature_shape: tuple[int, ...], what: str) -> None:
    if tuple(jnp.shape(value)) != feature_shape:
        raise ValueError(
            f"{what}: {name} has shape {tuple(jnp.shape(value))} but the feature shape is {feature_shape}."
        )


def _compute_dtype(dtype: jnp.dtype) -> jnp.dtype:
    """float32 for half-precision inputs, float64 stays float64."""
    return jnp.promote_types(dtype, jnp.float32)


def _reduced_count(x: jax.Array, axes: tuple[int, ...], axis_name: str | None) -> int:
    """m: the number of values each feature's statistics are taken over (all devices)."""
    count = math.prod(x.shape[a] for a in axes)
    if axis_name is not None:
        count *= jax.lax.axis_size(axis_name)
    return count


def _mean(x: jax.Array, axes: tuple[int, ...], axis_name: str | None) -> jax.Array:
    """Mean over `axes` (and over devices along `axis_name`; shards have equal sizes)."""
    mean = jnp.mean(x, axes, keepdims=True)
    return mean if axis_name is None else jax.lax.pmean(mean, axis_name)


def _moments(x: jax.Array, axes: tuple[int, ...], axis_name: str | None) -> tuple[jax.Array, jax.Array]:
    """Algorithm 1, lines 1-2: mu_B and the biased var_B, kept with singleton `axes`.

    Two passes, var = mean((x - mu)^2): exact for inputs with a large offset, where
    E[x^2] - E[x]^2 cancels catastrophically. Across devices the variance is the mean squared
    deviation from the *global* mean, never the average of per-device variances around
    different per-device means.
    """
    mean = _mean(x, axes, axis_name)
    return mean, _mean(jnp.square(x - mean), axes, axis_name)


def _transform(x, gamma, beta, axes, eps, axis_name):
    """Algorithm 1 in plain JAX, two-pass moments: (y, mu_B, var_B, 1/sqrt(var_B + eps), x - mu_B).

    y = gamma xhat + beta is evaluated as (x - mu) (gamma / sqrt(var + eps)) + beta: the scale
    is formed on the feature vector, which saves a full-size multiply in both passes. The
    centered x - mu is formed once and serves the variance, y and (as the residual of a dense
    layer's paper backward pass) dl/dgamma and dl/dx.
    """
    mean = _mean(x, axes, axis_name)
    centered = x - mean
    var = _mean(jnp.square(centered), axes, axis_name)
    inv_std = jax.lax.rsqrt(var + eps)
    return centered * (gamma * inv_std) + beta, mean, var, inv_std, centered


def _transform_autodiff(x, gamma, beta, axes, eps, axis_name):
    """`jax.grad` derives the backward pass."""
    return _transform(x, gamma, beta, axes, eps, axis_name)[:3]


# One-pass moments lose about log2(1 + mu^2 / var) bits of var_B to cancellation: past mu^2 = 16 var (|mu| > 4 sigma,
# ~4 bits of float32's 24) a layer takes the two-pass formula instead (`_guarded_moments`).
ONE_PASS_LIMIT = 16.0


def _guarded_moments(x, axes, axis_name):
    """Algorithm 1, lines 1-2, for statistics over several axes (a convolution's N, H, W):
    (mu_B, var_B, two_pass), kept with singleton `axes`.

    var_B = E[x^2] - mu_B^2 (clamped at 0) from two reductions of x alone, unless some feature's
    mu_B^2 > ONE_PASS_LIMIT var_B, where that cancels: then (`two_pass`, the same on all devices)
    var_B = mean((x - mu)^2), as `_moments`. On CPU the one-pass form is the faster one: XLA:CPU's
    reductions take no per-feature broadcast, so the two-pass form writes x - mu out at full size
    first, about half of what BN cost the CPU-scale BN-Inception step (scripts/bench_inception.py).
    Under `vmap` with a per-model `two_pass` both forms are computed, one selected: a dense layer's
    (N, d), small, and often vmapped in sweeps, keeps the two passes (`_transform`).
    """
    mean = _mean(x, axes, axis_name)
    var = jnp.maximum(_mean(jnp.square(x), axes, axis_name) - jnp.square(mean), 0.0)
    two_pass = jnp.any(jnp.square(mean) > ONE_PASS_LIMIT * var)
    var = jax.lax.cond(two_pass, lambda: _mean(jnp.square(x - mean), axes, axis_name), lambda: var)
    return mean, var, two_pass


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def _transform_paper(x, gamma, beta, axes, eps, axis_name):
    """Algorithm 1 (`_transform`, or with `_guarded_moments` over several axes), and the backward
    pass written out from Sec. 3 (`_transform_paper_bwd`)."""
    return _transform_paper_fwd(x, gamma, beta, axes, eps, axis_name)[0]


def _transform_paper_fwd(x, gamma, beta, axes, eps, axis_name):
    if len(axes) == 1:
        y, mean, var, inv_std, centered = _transform(x, gamma, beta, axes, eps, axis_name)
        return (y, mean, var), (centered, gamma, inv_std)
    mean, var, two_pass = _guarded_moments(x, axes, axis_name)
    inv_std = jax.lax.rsqrt(var + eps)
    y = (x - mean) * (gamma * inv_std) + beta  # elementwise: fuses with what follows (the nonlinearity)
    return (y, mean, var), (x, mean, gamma, inv_std, two_pass)


def _sum_to_shape(v: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Sums the axes that were broadcast to reach v's shape from `shape`."""
    return jnp.sum(v, tuple(i for i, d in enumerate(shape) if d == 1 and v.shape[i] != 1), keepdims=True)


def _transform_paper_bwd(axes, eps, axis_name, residuals, cotangents):
    """The chain rule of Sec. 3, sums over the mini-batch (all devices), m its size:

        dl/dxhat_i = dl/dy_i gamma
        dl/dvar    = sum_i dl/dxhat_i (x_i - mu) (-1/2) (var + eps)^(-3/2)
        dl/dmu     = sum_i dl/dxhat_i (-1/sqrt(var + eps)) + dl/dvar sum_i -2 (x_i - mu) / m
        dl/dx_i    = dl/dxhat_i / sqrt(var + eps) + dl/dvar 2 (x_i - mu) / m + dl/dmu / m
        dl/dgamma  = sum_i dl/dy_i xhat_i
        dl/dbeta   = sum_i dl/dy_i

    Two reductions serve all six: sum_i dl/dxhat_i = gamma dl/dbeta and
    sum_i dl/dxhat_i (x_i - mu) = gamma sqrt(var + eps) dl/dgamma; the last term of dl/dmu is
    zero because sum_i (x_i - mu) = 0. xhat_i is never formed at full size: dl/dgamma =
    sum_i dl/dy_i (x_i - mu) / sqrt(var + eps), the sum taken on the forward pass's x - mu (a dense
    layer), or over several axes as sum_i dl/dy_i x_i - mu dl/dbeta (reductions of full-size arrays
    only, as in `_guarded_moments`), on x_i - mu where the forward pass found that to cancel
    (`two_pass`). dl/dgamma and dl/dbeta are returned as this device's sums: `batch_norm` feeds
    replicated gamma/beta in through `pcast`, whose transpose adds them up across devices.
    Cotangents that reach the returned mu_B and var_B add to dl/dmu and dl/dvar.
    """
    del eps
    if len(axes) == 1:
        centered, gamma, inv_std = residuals
        return _paper_gradients(cotangents, centered, centered, gamma, inv_std, axes, axis_name)
    x, mean, gamma, inv_std, two_pass = residuals
    # The whole backward pass in each branch: with only dl/dgamma's sum under the `cond`, XLA:CPU fused nothing
    # across it, and BN cost the CPU-scale BN-Inception step (scripts/bench_inception.py, one core, both forms in
    # one process) +22% over no BN, against +15% so, as much as with no guard (one-pass always) at all.
    return jax.lax.cond(
        two_pass,
        lambda: _paper_gradients(cotangents, x - mean, x - mean, gamma, inv_std, axes, axis_name),
        lambda: _paper_gradients(cotangents, x, x - mean, gamma, inv_std, axes, axis_name, mean=mean),
    )


def _paper_gradients(cotangents, summed, centered, gamma, inv_std, axes, axis_name, mean=None):
    """`_transform_paper_bwd`'s formulas, dl/dgamma from sum_i dl/dy_i `summed`_i: `summed` is x - mu
    (`centered`), or x itself with `mean` given (then minus mu dl/dbeta)."""
    d_y, d_mean_out, d_var_out = cotangents
    d_beta = jnp.sum(d_y, axes, keepdims=True)
    d_y_centered = jnp.sum(d_y * summed, axes, keepdims=True)
    if mean is not None:
        d_y_centered = d_y_centered - mean * d_beta
    d_gamma = d_y_centered * inv_std
    m = _reduced_count(centered, axes, axis_name)
    if axis_name is None:
        total_d_gamma, total_d_beta = d_gamma, d_beta
    else:
        total_d_gamma, total_d_beta = jax.lax.psum((d_gamma, d_beta), axis_name)
    d_var = -0.5 * inv_std * inv_std * gamma * total_d_gamma + d_var_out
    d_mean = -inv_std * gamma * total_d_beta + d_mean_out
    d_x = (gamma * inv_std) * d_y + ((2.0 / m) * d_var) * centered + d_mean / m
    return d_x, _sum_to_shape(d_gamma, gamma.shape), _sum_to_shape(d_beta, gamma.shape)


_transform_paper.defvjp(_transform_paper_fwd, _transform_paper_bwd)


def _as_varying(value: jax.Array, axis_name: str) -> jax.Array:
    """Marks a replicated value as varying along `axis_name` (no-op if it already varies).

    Under `shard_map`, the custom VJP returns this device's share of dl/dgamma; entering gamma
    through `pcast` makes JAX sum those shares across devices in the backward pass, exactly as
    autodiff does for a replicated parameter.
    """
    try:
        return jax.lax.pcast(value, axis_name, to="varying")
    except ValueError:  # JAX refuses varying -> varying: it already is.
        return value


def batch_norm(
    x: jax.Array,
    gamma: jax.Array,
    beta: jax.Array,
    *,
    axes: int | Sequence[int],
    eps: float = DEFAULT_EPS,
    axis_name: str | None = None,
    virtual_batch_size: int | None = None,
    backward: Backward = "paper",
) -> tuple[jax.Array, Moments]:
    """Algorithm 1, the Batch Normalizing Transform, in training mode.

        mu_B = mean_i x_i,  var_B = mean_i (x_i - mu_B)^2,
        xhat_i = (x_i - mu_B) / sqrt(var_B + eps),  y_i = gamma xhat_i + beta,

    per feature, with gradients flowing through mu_B and var_B.

    Args:
      x: the activations, e.g. `(N, d)` for a dense layer or `(N, H, W, C)` for a convolution.
      gamma, beta: scale and shift, of the feature shape (`x.shape` without `axes`).
      axes: the reduced axes: `(0,)` for dense `(N, d)`, `(0, 1, 2)` for NHWC convolutions,
        which gives one mean/variance and one (gamma, beta) per feature map over the effective
        mini-batch of m' = N*H*W values (Sec. 3.2).
      eps: the constant added to the variance for numerical stability.
      axis_name: inside `shard_map`/`pmap`, the mapped axis whose devices together hold the
        mini-batch: statistics (and their gradients) are then global over all devices. Shards
        must have equal sizes.
      virtual_batch_size: if set, axis 0 is split into groups ("ghost batches") of this many
        examples, each normalized with its own moments, as the paper's workers each normalize
        their own mini-batch. Groups never span devices. The returned `Moments` are then the
        average over groups (and devices) of the group means and of the biased group variances,
        i.e. E_B[mu_B] and E_B[var_B] of Algorithm 2 over the groups; pass the group's value
        count as `batch_size` to `population_moments`/`ema_update`.
      backward: "paper" uses a `jax.custom_vjp` with Sec. 3's formulas for all of dl/dxhat,
        dl/dvar, dl/dmu, dl/dx, dl/dgamma and dl/dbeta; "autodiff" lets JAX differentiate the
        forward pass. They agree to rounding; `scripts/bench_batchnorm.py` times both. Inside
        `shard_map` *without* `axis_name` (per-device statistics), use `virtual_batch_size`
        with `axis_name`, or "autodiff": the custom rule cannot tell that gamma is replicated.

    Returns:
      `(y, Moments(mu_B, var_B))`: y in x's dtype, moments of the feature shape in float32
      (float64 for float64 input).
    """
    axes = _normalize_axes(axes, x.ndim)
    feature_shape = _feature_shape(x.shape, axes)
    _check_param_shape("gamma", gamma, feature_shape, "batch_norm")
    _check_param_shape("beta", beta, feature_shape, "batch_norm")
    if backward not in ("paper", "autodiff"):
        raise ValueError(f"batch_norm: backward={backward!r}; expected 'paper' or 'autodiff'.")

    dtype = _compute_dtype(x.dtype)
    x32 = x.astype(dtype)
    param_shape = _keepdims_shape(x.shape, axes)
    if virtual_batch_size is not None:
        if 0 not in axes:
            raise ValueError(f"batch_norm: virtual_batch_size needs the batch axis 0 in axes, got axes={axes}.")
        if not isinstance(virtual_batch_size, int) or virtual_batch_size < 1 or x.shape[0] % virtual_batch_size:
            raise ValueError(
                f"batch_norm: virtual_batch_size={virtual_batch_size!r} does not divide the batch of {x.shape[0]}."
            )
        x32 = x32.reshape((x.shape[0] // virtual_batch_size, virtual_batch_size) + x.shape[1:])
        axes = tuple(a + 1 for a in axes)  # groups live on the new leading axis
        param_shape = (1,) + param_shape
    group_axis_name = None if virtual_batch_size is not None else axis_name
    if _reduced_count(x32, axes, group_axis_name) < 2:
        raise ValueError(
            "batch_norm: each feature is normalized over a single value in training mode, so var_B = 0 "
            f"(input shape {x.shape}, axes {axes}); use a mini-batch of at least 2 or inference mode."
        )

    gamma = jnp.reshape(gamma, param_shape).astype(dtype)
    beta = jnp.reshape(beta, param_shape).astype(dtype)
    if backward == "paper":
        if axis_name is not None:
            gamma, beta = _as_varying(gamma, axis_name), _as_varying(beta, axis_name)
        y, mean, var = _transform_paper(x32, gamma, beta, axes, eps, group_axis_name)
    else:
        y, mean, var = _transform_autodiff(x32, gamma, beta, axes, eps, group_axis_name)
    y = y.astype(x.dtype).reshape(x.shape)

    if virtual_batch_size is not None:  # average the groups' moments (see docstring)
        mean, var = jnp.mean(mean, 0), jnp.mean(var, 0)
        if axis_name is not None:
            mean, var = jax.lax.pmean((mean, var), axis_name)
    return y, Moments(mean.reshape(feature_shape), var.reshape(feature_shape))


# Ioffe (2017), Sec. 4: r and d unclipped to rmax = 1, dmax = 0 for the first 5k steps, then relaxed linearly to
# rmax = 3 (reached at 40k steps) and dmax = 5 (reached at 25k steps).
RENORM_SCHEDULE = {"warmup": 5_000, "rmax": 3.0, "rmax_steps": 40_000, "dmax": 5.0, "dmax_steps": 25_000}


def renorm_limits(step: jax.Array | int) -> tuple[jax.Array, jax.Array]:
    """(rmax, dmax) of Batch Renormalization at training step `step`, by `RENORM_SCHEDULE`."""
    s = RENORM_SCHEDULE
    step = jnp.asarray(step, jnp.float32)
    rmax = 1.0 + (s["rmax"] - 1.0) * jnp.clip((step - s["warmup"]) / (s["rmax_steps"] - s["warmup"]), 0.0, 1.0)
    dmax = s["dmax"] * jnp.clip((step - s["warmup"]) / (s["dmax_steps"] - s["warmup"]), 0.0, 1.0)
    return rmax, dmax


def batch_renorm(
    x: jax.Array,
    gamma: jax.Array,
    beta: jax.Array,
    running: Moments,
    *,
    axes: int | Sequence[int],
    rmax: float | jax.Array,
    dmax: float | jax.Array,
    eps: float = DEFAULT_EPS,
    axis_name: str | None = None,
    backward: Backward = "paper",
) -> tuple[jax.Array, Moments]:
    """Batch Renormalization (Ioffe 2017, Algorithm 1), in training mode:

        y = gamma (xhat r + d) + beta,   r = clip(sigma_B / sigma, 1/rmax, rmax),
        d = clip((mu_B - mu) / sigma, -dmax, dmax),

    with xhat, mu_B and sigma_B = sqrt(var_B + eps) of Algorithm 1 (gradients flow through them), r and d held
    constant in the backward pass, and mu, sigma = sqrt(var + eps) from the moving averages `running`. With
    rmax = 1 and dmax = 0 it is `batch_norm`. It is `batch_norm` with scale gamma r and shift gamma d + beta,
    so it shares that function's backward pass (`backward`) and arguments. Returns (y, the mini-batch moments).
    """
    if (isinstance(rmax, (int, float)) and rmax < 1.0) or (isinstance(dmax, (int, float)) and dmax < 0.0):
        raise ValueError(f"batch_renorm: need rmax >= 1 and dmax >= 0, got rmax={rmax}, dmax={dmax}.")
    normalized_axes = _normalize_axes(axes, x.ndim)
    feature_shape = _feature_shape(x.shape, normalized_axes)
    mean, var = _moments(x.astype(_compute_dtype(x.dtype)), normalized_axes, axis_name)
    mean, var = jax.lax.stop_gradient((mean.reshape(feature_shape), var.reshape(feature_shape)))
    sigma = jnp.sqrt(running.var + eps)
    r = jnp.clip(jnp.sqrt(var + eps) / sigma, 1.0 / rmax, rmax)
    d = jnp.clip((mean - running.mean) / sigma, -dmax, dmax)
    return batch_norm(x, gamma * r, gamma * d + beta, axes=axes, eps=eps, axis_name=axis_name, backward=backward)


def batch_norm_inference(
    x: jax.Array,
    gamma: jax.Array,
    beta: jax.Array,
    moments: Moments,
    *,
    axes: int | Sequence[int] | None = None,
    eps: float = DEFAULT_EPS,
) -> jax.Array:
    """Algorithm 2, step 11: the inference network's affine map

        y = gamma / sqrt(Var[x] + eps) * x + (beta - gamma E[x] / sqrt(Var[x] + eps)),

    with fixed (population or moving-average) `moments`, so one example's output depends on
    that example only.

    Args:
      x: the activations.
      gamma, beta, moments: of the feature shape.
      axes: the reduced axes as in `batch_norm`; by default the features are x's trailing
        `gamma.ndim` axes, which covers `(N, d)` and NHWC.
      eps: as in training.
    """
    if axes is None:
        axes = tuple(range(x.ndim - jnp.ndim(gamma))) or (0,)
    axes = _normalize_axes(axes, x.ndim)
    feature_shape = _feature_shape(x.shape, axes)
    what = "batch_norm_inference"
    _check_param_shape("gamma", gamma, feature_shape, what)
    _check_param_shape("beta", beta, feature_shape, what)
    _check_param_shape("moments.mean", moments.mean, feature_shape, what)
    _check_param_shape("moments.var", moments.var, feature_shape, what)

    dtype = _compute_dtype(x.dtype)
    param_shape = _keepdims_shape(x.shape, axes)
    scale = gamma.astype(dtype) * jax.lax.rsqrt(moments.var.astype(dtype) + eps)
    shift = beta.astype(dtype) - moments.mean.astype(dtype) * scale
    y = x.astype(dtype) * scale.reshape(param_shape) + shift.reshape(param_shape)
    return y.astype(x.dtype)


def _unbiased_factor(batch_size: int | jax.Array) -> float | jax.Array:
    """m / (m - 1), Bessel's correction for a biased variance over m values."""
    if isinstance(batch_size, int) and batch_size < 2:
        raise ValueError(f"batch_size={batch_size}: the unbiased variance m/(m-1) var_B needs m >= 2.")
    return batch_size / (batch_size - 1)


def population_moments(stacked: Moments, batch_size: int | jax.Array) -> Moments:
    """Algorithm 2, steps 8-9: population statistics from K training mini-batches of size m.

        E[x] = E_B[mu_B],   Var[x] = m / (m - 1) * E_B[var_B]

    Args:
      stacked: `Moments` from `batch_norm` stacked on a leading axis of length K.
      batch_size: m, the number of values each mini-batch's statistics were taken over
        (m' = N*H*W for convolutions, the group's count with `virtual_batch_size`).
    """
    if jnp.ndim(stacked.mean) < 1 or jnp.shape(stacked.mean) != jnp.shape(stacked.var):
        raise ValueError(
            "population_moments: expected mean and var stacked on a leading mini-batch axis with equal "
            f"shapes, got {jnp.shape(stacked.mean)} and {jnp.shape(stacked.var)}."
        )
    return Moments(jnp.mean(stacked.mean, 0), _unbiased_factor(batch_size) * jnp.mean(stacked.var, 0))


def ema_update(
    running: Moments, batch: Moments, *, momentum: float, batch_size: int | jax.Array | None = None
) -> Moments:
    """Sec. 3.1's moving-average alternative: running <- momentum * running + (1 - momentum) * batch.

    `momentum` is the weight kept on the old value, as in Flax and Haiku: Flax's
    `momentum=0.99` is PyTorch's `momentum=0.01` (PyTorch's is the weight of the new batch).
    With `batch_size` (m) the batch variance is first made unbiased, m/(m-1) var_B, as
    Algorithm 2 and PyTorch do; without it the biased variance is averaged, as Flax and Haiku do.
    """
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"ema_update: momentum={momentum} is not in [0, 1] (it is the weight of the old value).")
    batch_var = batch.var if batch_size is None else _unbiased_factor(batch_size) * batch.var
    return Moments(
        momentum * running.mean + (1.0 - momentum) * batch.mean,
        momentum * running.var + (1.0 - momentum) * batch_var,
    )
