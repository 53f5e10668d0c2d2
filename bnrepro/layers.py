"""Flax linen layers over the functional core in `bnrepro.batchnorm`.

* `BatchNorm`   -- Algorithm 1 in training, Algorithm 2's inference network otherwise; the
                   running (population) moments live in the `batch_stats` collection.
* `DenseBN`, `ConvBN` -- z = g(BN(Wu)) with the bias of W dropped (Sec. 3.2: beta subsumes
                   it); with `batch_norm=False` the baseline z = g(Wu + b).
* `population_statistics` -- Algorithm 2, steps 8-9, for a whole model: K training
                   mini-batches in, a `batch_stats` tree of population moments out.

Mixed precision (`COMPUTE_DTYPES`): with `dtype="bfloat16"` a layer's matmul or convolution and its output are
bfloat16, while its parameters, and BN's statistics (`bnrepro.batchnorm` computes them in float32), stay float32.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util

from bnrepro import batchnorm
from bnrepro.batchnorm import Moments
from bnrepro.convolution import conv_general_dilated

# The collection in which `BatchNorm` reports each training call's mini-batch moments (and the
# count m they were taken over) when the caller makes it mutable; `population_statistics` reads it.
MOMENTS_COLLECTION = "bn_moments"

# The dtypes a model may compute its activations, matmuls and convolutions in (`config.dtype`).
COMPUTE_DTYPES = ("float32", "bfloat16")

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "sigmoid": nn.sigmoid,
    "relu": nn.relu,
    "tanh": jnp.tanh,
    "identity": lambda x: x,
}


def activation_fn(name: str) -> Callable[[jax.Array], jax.Array]:
    """The nonlinearity g named `name`, or a ValueError listing the known ones."""
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; expected one of {sorted(ACTIVATIONS)}.") from None


class BatchNorm(nn.Module):
    """Batch Normalization (Algorithms 1 and 2) with explicit `batch_stats`.

    In training (`train=True`) it normalizes with the mini-batch moments and updates the
    running moments `batch_stats/{mean,var}` by `batchnorm.ema_update`; in inference it applies
    the affine map of Algorithm 2 with the stored moments. Parameters are named as in
    `flax.linen.BatchNorm` (`scale` = gamma, `bias` = beta) so trees are interchangeable.

    Attributes:
      axis: the feature axis or axes (the others are reduced), -1 for `(N, d)` and NHWC.
      momentum: weight of the old value in the moving average (Flax convention; PyTorch's
        `momentum=0.1` is 0.9 here).
      eps: added to the variance.
      unbiased_running_var: store m/(m-1) var_B in the moving average, as Algorithm 2 and
        PyTorch do (default); False averages the biased var_B, as Flax does.
      axis_name, virtual_batch_size, backward: as in `batchnorm.batch_norm`.
      device_group_size: with the mini-batch split across `batch_shards` devices (data parallelism,
        `config.num_devices`), normalize over groups of this many devices rather than over all of them: each
        group's shares of the mini-batch, together, are one virtual batch (`virtual_batch_size` = the group's
        examples), so the moments are reduced within a group only. What pod-scale training does when the
        per-device batch is small (e.g. 4 devices x 32 = 128 examples). None: over all devices.
      batch_shards: how many devices the mini-batch is split across; `bnrepro.models.create_model` binds it from
        the run's layout (1: not split).
      renorm: train with Batch Renormalization (`batchnorm.batch_renorm`, Ioffe 2017) against the moving
        averages, rmax and dmax relaxed by `batchnorm.renorm_limits` over the layer's training steps (counted in
        `batch_stats/renorm_steps`); inference is unchanged.
      noise_shift, noise_scale: "noisy BN" (Santurkar et al. 2018): in training, each activation's output is
        scaled by s ~ U(1, noise_scale) and shifted by m ~ U(-noise_shift, noise_shift), drawn anew at every
        call from the "bn_noise" RNG stream and shared by the mini-batch, so that the next layer's input
        distribution keeps changing. Off by default (0 and 1); the statistics are those of the clean output. At
        inference the noise is replaced by its mean: the output scaled by E[s] = (1 + noise_scale) / 2.
      use_bias: learn beta (default); False fixes beta = 0 and creates no `bias` parameter, as the BN-LSTM
        (Cooijmans et al. 2016, Eq. 6) does for W_h h and W_x x, whose shift the LSTM's own bias b provides.
      dtype: the output dtype (default: the input's); statistics are float32 regardless.
      param_dtype: dtype of gamma, beta and the running moments.
    """

    axis: int | Sequence[int] = -1
    momentum: float = 0.99
    eps: float = batchnorm.DEFAULT_EPS
    unbiased_running_var: bool = True
    axis_name: str | None = None
    virtual_batch_size: int | None = None
    device_group_size: int | None = None
    batch_shards: int = 1
    backward: batchnorm.Backward = "paper"
    renorm: bool = False
    noise_shift: float = 0.0
    noise_scale: float = 1.0
    use_bias: bool = True
    dtype: Any = None
    param_dtype: Any = jnp.float32
    scale_init: Callable[..., jax.Array] = nn.initializers.ones
    bias_init: Callable[..., jax.Array] = nn.initializers.zeros

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        feature_axes = (self.axis,) if isinstance(self.axis, int) else tuple(self.axis)
        feature_axes = tuple(a % x.ndim for a in feature_axes)
        reduced_axes = tuple(i for i in range(x.ndim) if i not in feature_axes)
        feature_shape = tuple(x.shape[a] for a in feature_axes)

        gamma = self.param("scale", self.scale_init, feature_shape, self.param_dtype)
        if self.use_bias:
            beta = self.param("bias", self.bias_init, feature_shape, self.param_dtype)
        else:
            beta = jnp.zeros(feature_shape, self.param_dtype)
        running_mean = self.variable("batch_stats", "mean", jnp.zeros, feature_shape, self.param_dtype)
        running_var = self.variable("batch_stats", "var", jnp.ones, feature_shape, self.param_dtype)
        if self.dtype is not None:
            x = x.astype(self.dtype)
        if self.renorm and self.is_initializing():  # created with the statistics, whatever the mode
            self.variable("batch_stats", "renorm_steps", jnp.zeros, (), jnp.float32)

        if not train:
            moments = Moments(running_mean.value, running_var.value)
            y = batchnorm.batch_norm_inference(x, gamma, beta, moments, axes=reduced_axes, eps=self.eps)
            # Noisy BN's inference network: the noise replaced by its mean, E[s] = (1 + noise_scale) / 2, E[m] = 0,
            # as dropout's inference network scales by the keep probability.
            return y * ((1.0 + self.noise_scale) / 2.0) if self.noise_scale > 1.0 else y

        virtual_batch_size = self._virtual_batch_size(x.shape[0])
        if self.renorm:
            if virtual_batch_size is not None:
                raise ValueError("BatchNorm: renorm=True does not combine with virtual_batch_size.")
            steps = self.variable("batch_stats", "renorm_steps", jnp.zeros, (), jnp.float32)
            rmax, dmax = batchnorm.renorm_limits(steps.value)
            y, moments = batchnorm.batch_renorm(
                x, gamma, beta, Moments(running_mean.value, running_var.value), axes=reduced_axes, rmax=rmax,
                dmax=dmax, eps=self.eps, axis_name=self.axis_name, backward=self.backward,
            )  # fmt: skip
            if not self.is_initializing():
                steps.value = steps.value + 1
        else:
            y, moments = batchnorm.batch_norm(
                x,
                gamma,
                beta,
                axes=reduced_axes,
                eps=self.eps,
                axis_name=self.axis_name,
                virtual_batch_size=virtual_batch_size,
                backward=self.backward,
            )
        moments = jax.tree.map(jax.lax.stop_gradient, moments)
        count = self._values_per_statistic(x, reduced_axes, virtual_batch_size)
        if self.is_mutable_collection(MOMENTS_COLLECTION):
            self.put_variable(MOMENTS_COLLECTION, "mean", moments.mean)
            self.put_variable(MOMENTS_COLLECTION, "var", moments.var)
            self.put_variable(MOMENTS_COLLECTION, "count", jnp.asarray(count, jnp.float32))
        if not self.is_initializing():
            updated = batchnorm.ema_update(
                Moments(running_mean.value, running_var.value),
                moments,
                momentum=self.momentum,
                batch_size=count if self.unbiased_running_var else None,
            )
            running_mean.value = updated.mean.astype(self.param_dtype)
            running_var.value = updated.var.astype(self.param_dtype)
        if self.noise_shift > 0.0 or self.noise_scale > 1.0:
            y = self._add_noise(y, feature_axes)
        return y

    def _add_noise(self, y: jax.Array, feature_axes: tuple[int, ...]) -> jax.Array:
        """Noisy BN: y * s + m with a scale s ~ U(1, noise_scale) and a shift m ~ U(-noise_shift, noise_shift)
        per activation, the same for every example of the mini-batch."""
        shape = tuple(y.shape[a] if a in feature_axes else 1 for a in range(y.ndim))
        scale_key, shift_key = jax.random.split(self.make_rng("bn_noise"))
        scale = jax.random.uniform(scale_key, shape, jnp.float32, 1.0, self.noise_scale)
        shift = jax.random.uniform(shift_key, shape, jnp.float32, -self.noise_shift, self.noise_shift)
        return (y * scale + shift).astype(y.dtype)

    def _virtual_batch_size(self, batch: int) -> int | None:
        """The examples each normalized group holds: `virtual_batch_size`, or a group of devices' shares of the
        mini-batch of `batch` examples (`device_group_size`), or None (the whole mini-batch)."""
        if self.device_group_size is None:
            return self.virtual_batch_size
        if self.virtual_batch_size is not None:
            raise ValueError("BatchNorm: set device_group_size or virtual_batch_size, not both.")
        if self.device_group_size < 1 or self.batch_shards % self.device_group_size:
            raise ValueError(
                f"BatchNorm: device_group_size = {self.device_group_size} (config.model.bn.device_group_size) does "
                f"not divide the {self.batch_shards} device(s) the mini-batch is split across (config.num_devices)."
            )
        return batch // (self.batch_shards // self.device_group_size)

    def _values_per_statistic(self, x: jax.Array, reduced_axes: tuple[int, ...], virtual_batch_size: int | None) -> int:
        """m of Algorithm 2: values behind one mini-batch statistic (one group's, if virtual)."""
        count = 1
        for a in reduced_axes:
            count *= x.shape[a]
        if virtual_batch_size is not None:
            return count // x.shape[0] * virtual_batch_size
        if self.axis_name is not None:
            count *= jax.lax.axis_size(self.axis_name)
        return count


class DenseBN(nn.Module):
    """A fully connected layer z = g(BN(Wu)) (Sec. 3.2), or the baseline z = g(Wu + b).

    With `batch_norm` the bias of W is dropped: BN subtracts the mean, and its beta takes the
    bias's role. `preactivation` (the input to g, Fig. 1(b, c)) is sown into `intermediates`.

    Attributes:
      features: width of the layer.
      activation: name of g (`sigmoid`, `relu`, `tanh`, `identity`).
      batch_norm: insert BN before g.
      norm: the BN layer to use, e.g. `functools.partial(BatchNorm, momentum=0.9)`.
      kernel_init: initializer of W.
      dtype: of the matmul and the output (`COMPUTE_DTYPES`); W, b and BN's parameters and statistics stay float32.
    """

    features: int
    activation: str = "relu"
    batch_norm: bool = True
    norm: Callable[..., nn.Module] = BatchNorm
    kernel_init: Callable[..., jax.Array] = nn.linear.default_kernel_init
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, u: jax.Array, train: bool) -> jax.Array:
        g = activation_fn(self.activation)
        x = nn.Dense(self.features, use_bias=not self.batch_norm, kernel_init=self.kernel_init, dtype=self.dtype)(u)
        if self.batch_norm:
            x = self.norm()(x, train=train)
        self.sow("intermediates", "preactivation", x)
        return g(x)


class ConvBN(nn.Module):
    """A convolution z = g(BN(W * u)) with one (gamma, beta) and one mean/variance per feature
    map, over the batch and all locations (Sec. 3.2); or the baseline g(W * u + b).

    Attributes:
      features, kernel_size, strides, padding: of the convolution (NHWC), computed by
        `bnrepro.convolution.conv_general_dilated`.
      activation, batch_norm, norm, kernel_init: as in `DenseBN`.
      dtype: of the convolution and the output, as in `DenseBN`.
    """

    features: int
    kernel_size: Sequence[int] = (3, 3)
    strides: Sequence[int] = (1, 1)
    padding: str | Sequence[tuple[int, int]] = "SAME"
    activation: str = "relu"
    batch_norm: bool = True
    norm: Callable[..., nn.Module] = BatchNorm
    kernel_init: Callable[..., jax.Array] = nn.linear.default_kernel_init
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, u: jax.Array, train: bool) -> jax.Array:
        g = activation_fn(self.activation)
        x = nn.Conv(
            self.features,
            tuple(self.kernel_size),
            strides=tuple(self.strides),
            padding=self.padding,
            use_bias=not self.batch_norm,
            kernel_init=self.kernel_init,
            dtype=self.dtype,
            conv_general_dilated=conv_general_dilated,
        )(u)
        if self.batch_norm:
            x = self.norm()(x, train=train)
        return g(x)


def minibatch_moments(model: nn.Module, variables: dict, batch: Any, **kwargs: Any) -> dict:
    """Algorithm 1's mini-batch moments of every `BatchNorm` in `model` on one training mini-batch `batch`:
    a tree of {"mean", "var", "count"} per layer (`model.apply(variables, batch, train=True, **kwargs)`).
    Parameters and `batch_stats` are not changed. Jittable."""
    _, collections = model.apply(variables, batch, train=True, mutable=["batch_stats", MOMENTS_COLLECTION], **kwargs)
    return collections[MOMENTS_COLLECTION]


def population_from_moments(stacked: dict) -> dict:
    """Algorithm 2, steps 8-9: a `batch_stats` tree with E[x] = E_B[mu_B] and Var[x] = m/(m-1) E_B[var_B],
    from `minibatch_moments` trees of K mini-batches stacked on a leading axis. A layer with statistics per
    position (a leading time axis, `models.lstm`) gets population moments per position."""
    flat = traverse_util.flatten_dict(stacked)
    result = {}
    for layer in {path[:-1] for path in flat}:
        mean, var, count = flat[layer + ("mean",)], flat[layer + ("var",)], flat[layer + ("count",)][0]
        # A layer applied at several positions (the BN-LSTM's time steps) has leading axes on its moments and
        # a count per position: m broadcasts over the features.
        count = jnp.reshape(count, jnp.shape(count) + (1,) * (mean.ndim - 1 - jnp.ndim(count)))
        population = batchnorm.population_moments(Moments(mean, var), count)
        result[layer + ("mean",)] = population.mean
        result[layer + ("var",)] = population.var
    return traverse_util.unflatten_dict(result)


def population_statistics(model: nn.Module, variables: dict, batches: Any, **kwargs: Any) -> dict:
    """Algorithm 2, steps 8-9, for every `BatchNorm` in `model`, over K training mini-batches `batches` (arrays
    or a pytree of arrays with a leading axis K) in one `lax.scan`: `population_from_moments` of their
    `minibatch_moments`. Parameters are not changed. Jittable."""
    _, stacked = jax.lax.scan(
        lambda _, batch: (None, minibatch_moments(model, variables, batch, **kwargs)), None, batches
    )
    return population_from_moments(stacked)


def adapt_to_domain(
    model: nn.Module, variables: dict, target_images: jax.Array, batch_size: int, **kwargs: Any
) -> dict:
    """AdaBN (Li et al. 2016): `variables` with every BN layer's statistics re-estimated on unlabelled images of
    the target domain, all weights (gamma and beta too) kept. The statistics are Algorithm 2's
    (`population_statistics`) over the target images in consecutive mini-batches of `batch_size` (a remainder
    that fills no mini-batch is left out)."""
    count = len(target_images) // batch_size
    if count == 0:
        raise ValueError(f"adapt_to_domain: {len(target_images)} target images fill no mini-batch of {batch_size}.")
    batches = target_images[: count * batch_size].reshape((count, batch_size) + target_images.shape[1:])
    return {**variables, "batch_stats": population_statistics(model, variables, batches, **kwargs)}
