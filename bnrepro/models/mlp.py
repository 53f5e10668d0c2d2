"""The fully connected net of the MNIST experiment (Sec. 4.1, Figure 1)."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from bnrepro.layers import BatchNorm, DenseBN


class MLP(nn.Module):
    """784-100-100-100-10 by default: hidden layers z = g(BN(Wu)) (or g(Wu + b) without BN),
    then a linear 10-way layer whose logits feed softmax cross-entropy.

    Weights are drawn from N(0, init_std^2): the paper says only "small random Gaussian values".

    Attributes:
      hidden: widths of the hidden layers.
      num_classes: outputs of the final linear layer.
      activation: the hidden nonlinearity g (`sigmoid` in the paper).
      batch_norm: BN before every hidden nonlinearity.
      init_std: standard deviation of every weight's Gaussian initialization.
      bn_momentum, bn_eps: the BN layers' moving-average momentum (Flax convention) and eps.
      bn_virtual_batch_size: normalize groups of this many examples separately (ghost / per-device batches).
      bn_backward: BN's backward pass, "paper" (Sec. 3's formulas) or "autodiff" (`batchnorm.batch_norm`).
      bn_renorm: Batch Renormalization (Ioffe 2017) instead of BN in training (`layers.BatchNorm.renorm`).
      bn_noise_shift, bn_noise_scale: "noisy BN" (Santurkar et al. 2018), see `layers.BatchNorm`.
    """

    hidden: Sequence[int] = (100, 100, 100)
    num_classes: int = 10
    activation: str = "sigmoid"
    batch_norm: bool = True
    init_std: float = 0.1
    bn_momentum: float = 0.99
    bn_eps: float = 1e-5
    bn_virtual_batch_size: int | None = None
    bn_backward: str = "paper"
    bn_renorm: bool = False
    bn_noise_shift: float = 0.0
    bn_noise_scale: float = 1.0

    @nn.compact
    def __call__(self, images: jax.Array, train: bool) -> jax.Array:
        u = images.reshape((images.shape[0], -1)).astype(jnp.float32)
        kernel_init = nn.initializers.normal(self.init_std)
        norm = functools.partial(
            BatchNorm,
            momentum=self.bn_momentum,
            eps=self.bn_eps,
            virtual_batch_size=self.bn_virtual_batch_size,
            backward=self.bn_backward,
            renorm=self.bn_renorm,
            noise_shift=self.bn_noise_shift,
            noise_scale=self.bn_noise_scale,
        )
        for width in self.hidden:
            u = DenseBN(
                width, activation=self.activation, batch_norm=self.batch_norm, norm=norm, kernel_init=kernel_init
            )(u, train=train)
        return nn.Dense(self.num_classes, kernel_init=kernel_init)(u)
