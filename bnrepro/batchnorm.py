"""The Batch Normalizing Transform (Ioffe & Szegedy, 2015) as pure JAX functions.

Everything here is a function of explicit arrays; no module state. The Flax layers in
`bnrepro.layers` are a thin wrapper over these.

* `batch_norm`            -- Algorithm 1 (training): normalize with the mini-batch moments.
* `batch_norm_inference`  -- Algorithm 2, step 11: the frozen affine inference network.
* `population_moments`    -- Algorithm 2, steps 8-9: E[x] = E_B[mu_B], Var[x] = m/(m-1) E_B[var_B].
* `ema_update`            -- Sec. 3.1's moving-average alternative to the population pass.

Statistics are computed in (at least) float32 whatever the input dtype, and the output has
the input's dtype. The variance is computed by the two-pass formula mean((x - mean)^2), which
stays exact for inputs with a large offset where E[x^2] - E[x]^2 cancels catastrophically.
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
        f"{what}: {name} has shape {tuple(jnp.shape(value))} but the feature shape is {feature_shape}.")


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
  """Algorithm 1, lines 1-2: mu_B and the biased var_B, two-pass (exact for large offsets).

  Across devices the variance is the mean squared deviation from the *global* mean, never
  the average of per-device variances around different per-device means.
  """
  mean = _mean(x, axes, axis_name)
  var = _mean(jnp.square(x - mean), axes, axis_name)
  return mean, var


def _normalize_autodiff(x, axes, eps, axis_name):
  """x -> (xhat, mu_B, var_B) in plain JAX; `jax.grad` derives the backward pass."""
  mean, var = _moments(x, axes, axis_name)
  return (x - mean) * jax.lax.rsqrt(var + eps), mean, var


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _normalize_paper(x, axes, eps, axis_name):
  """Same as `_normalize_autodiff`, with the backward pass written out from Sec. 3."""
  return _normalize_autodiff(x, axes, eps, axis_name)


def _normalize_paper_fwd(x, axes, eps, axis_name):
  mean, var = _moments(x, axes, axis_name)
  inv_std = jax.lax.rsqrt(var + eps)
  xhat = (x - mean) * inv_std
  return (xhat, mean, var), (xhat, inv_std)


def _normalize_paper_bwd(axes, eps, axis_name, residuals, cotangents):
  """The chain rule of Sec. 3, with sums over the mini-batch (all devices) and m its size.

      dl/dvar = sum_i dl/dxhat_i (x_i - mu) (-1/2) (var + eps)^(-3/2)
      dl/dmu  = sum_i dl/dxhat_i (-1/sqrt(var + eps))  [+ dl/dvar sum_i -2 (x_i - mu) / m = 0,
                                                       since sum_i (x_i - mu) = 0 by definition of mu]
      dl/dx_i = dl/dxhat_i / sqrt(var + eps) + dl/dvar 2 (x_i - mu) / m + dl/dmu / m

  (x_i - mu) is recovered as xhat_i * sqrt(var + eps). Cotangents arriving at the returned
  mean and variance themselves (zero when they only feed running statistics) add to dl/dmu
  and dl/dvar.
  """
  del eps
  xhat, inv_std = residuals
  d_xhat, d_mean_out, d_var_out = cotangents
  m = _reduced_count(xhat, axes, axis_name)

  def total(v):  # sum over the mini-batch, on every device
    s = jnp.sum(v, axes, keepdims=True)
    return s if axis_name is None else jax.lax.psum(s, axis_name)

  d_var = -0.5 * jnp.square(inv_std) * total(d_xhat * xhat) + d_var_out
  d_mean = -inv_std * total(d_xhat) + d_mean_out
  d_x = d_xhat * inv_std + d_var * (2.0 / m) * xhat / inv_std + d_mean / m
  return (d_x,)


_normalize_paper.defvjp(_normalize_paper_fwd, _normalize_paper_bwd)


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
    backward: "paper" uses a `jax.custom_vjp` with Sec. 3's formulas for dl/dvar, dl/dmu and
      dl/dx (dl/dxhat = dl/dy gamma, dl/dgamma = sum dl/dy xhat and dl/dbeta = sum dl/dy
      are the affine's gradients, which autodiff forms exactly so, and which it also reduces
      correctly across devices when gamma and beta are replicated); "autodiff" lets JAX
      differentiate the forward pass. They agree to rounding; see
      `scripts/bench_batchnorm.py` for their speed.

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
          f"batch_norm: virtual_batch_size={virtual_batch_size!r} does not divide the batch of {x.shape[0]}.")
    x32 = x32.reshape((x.shape[0] // virtual_batch_size, virtual_batch_size) + x.shape[1:])
    axes = tuple(a + 1 for a in axes)  # groups live on the new leading axis
    param_shape = (1,) + param_shape
  group_axis_name = None if virtual_batch_size is not None else axis_name
  if _reduced_count(x32, axes, group_axis_name) < 2:
    raise ValueError(
        "batch_norm: each feature is normalized over a single value in training mode, so var_B = 0 "
        f"(input shape {x.shape}, axes {axes}); use a mini-batch of at least 2 or inference mode.")

  normalize = _normalize_paper if backward == "paper" else _normalize_autodiff
  xhat, mean, var = normalize(x32, axes, eps, group_axis_name)
  gamma = jnp.reshape(gamma, param_shape).astype(dtype)
  beta = jnp.reshape(beta, param_shape).astype(dtype)
  y = (gamma * xhat + beta).astype(x.dtype).reshape(x.shape)

  if virtual_batch_size is not None:  # average the groups' moments (see docstring)
    mean, var = jnp.mean(mean, 0), jnp.mean(var, 0)
    if axis_name is not None:
      mean, var = jax.lax.pmean((mean, var), axis_name)
  return y, Moments(mean.reshape(feature_shape), var.reshape(feature_shape))


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
        f"shapes, got {jnp.shape(stacked.mean)} and {jnp.shape(stacked.var)}.")
  return Moments(jnp.mean(stacked.mean, 0), _unbiased_factor(batch_size) * jnp.mean(stacked.var, 0))


def ema_update(running: Moments, batch: Moments, *, momentum: float,
               batch_size: int | jax.Array | None = None) -> Moments:
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
