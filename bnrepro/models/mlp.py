"""The fully connected net of the MNIST experiment (Sec. 4.1, Figure 1)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from bnrepro.layers import BatchNorm, DenseBN


class MLP(nn.Module):
    """784-100-100-100-10 by default: hidden layers z = g(BN(Wu)) (or g(Wu + b) without BN),
    then a linear 10-way layer whose logits feed softmax cross-entropy.

    Weights are drawn from N(0, init_std^2): the paper says only "small random Gaussian values".
    With `dtype="bfloat16"` the matmuls and activations are bfloat16; the weights, BN's statistics and the
    logits (so the loss) are float32.

    Attributes:
      hidden: widths of the hidden layers.
      num_classes: outputs of the final linear layer.
      activation: the hidden nonlinearity g (`sigmoid` in the paper).
      batch_norm: BN before every hidden nonlinearity.
      init_std: standard deviation of every weight's Gaussian initialization.
      dropout_rate: dropout after every hidden nonlinearity (not in the paper's Figure 1 net; Sec. 3.4's
        comparison of BN with dropout as a regularizer). With `train=True` and a rate > 0, `apply` needs a
        `dropout` rng; at inference (`train=False`) and at rate 0 the net is the one without dropout.
      norm: the BN layer of every hidden layer, `layers.BatchNorm` with its options bound
        (`bnrepro.models.create_model` binds `config.model.bn`).
      dtype: the compute dtype, one of `layers.COMPUTE_DTYPES` (`config.dtype`).
    """

    hidden: Sequence[int] = (100, 100, 100)
    num_classes: int = 10
    activation: str = "sigmoid"
    batch_norm: bool = True
    init_std: float = 0.1
    dropout_rate: float = 0.0
    norm: Callable[..., nn.Module] = BatchNorm
    dtype: str = "float32"

    @nn.compact
    def __call__(self, images: jax.Array, train: bool) -> jax.Array:
        u = images.reshape((images.shape[0], -1)).astype(self.dtype)
        kernel_init = nn.initializers.normal(self.init_std)
        for width in self.hidden:
            u = DenseBN(
                width,
                activation=self.activation,
                batch_norm=self.batch_norm,
                norm=self.norm,
                kernel_init=kernel_init,
                dtype=self.dtype,
            )(u, train=train)
            if self.dropout_rate > 0:
                u = nn.Dropout(self.dropout_rate, deterministic=not train)(u)
        return nn.Dense(self.num_classes, kernel_init=kernel_init, dtype=self.dtype)(u).astype(jnp.float32)
