"""The LSTM and the batch-normalized LSTM (BN-LSTM) of Cooijmans et al. (2016), "Recurrent Batch Normalization",
as sequence classifiers for sequential MNIST (their Sec. 5.1).

The BN-LSTM step (their Eqs. 6-8), gates in the order i, f, g, o:

    (i, f, g, o) = BN(W_h h_{t-1}; gamma_h, 0) + BN(W_x x_t; gamma_x, 0) + b
    c_t = sigmoid(f) * c_{t-1} + sigmoid(i) * tanh(g)
    h_t = sigmoid(o) * tanh(BN(c_t; gamma_c, beta_c))

BN has no beta on the two input terms (b is the one shift) and none in the cell update. gamma and beta are
shared over time; the statistics are not: each time step t < T has its own mini-batch moments in training and
its own population statistics at inference, `batch_stats` with a leading time axis of length T, the sequence
length the model was initialized with. At inference a sequence longer than T reuses step T-1's statistics for
the steps after it (their Sec. 3); training on another length than T is refused. Without BN, the standard LSTM
(i, f, g, o) = W_h h_{t-1} + W_x x_t + b, h_t = sigmoid(o) * tanh(c_t).

Initialization as in the authors' code (github.com/cooijmanstim/recurrent-batch-normalization,
`sequential_mnist.py`, `--init id`): W_x orthogonal; W_h orthogonal except the block of the cell input g,
the identity ("the hidden-to-hidden weight matrix ... identity", their Sec. 5.1); b = 0 except the forget gate's
(`forget_bias`, 1 there); gamma = 0.1 (their Sec. 4), beta_c = 0. The softmax layer reads h_T.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from bnrepro.layers import MOMENTS_COLLECTION, BatchNorm

SEQUENCES = ("pixels", "rows")
PERMUTATION_SEED = 0  # numpy.random.default_rng(0).permutation: the fixed pixel order of permuted MNIST
GATES = 4  # i, f, g, o


def pixel_permutation(num_pixels: int) -> np.ndarray:
    """The fixed random order of permuted MNIST (pMNIST): the same in every run, drawn from
    `numpy.random.default_rng(PERMUTATION_SEED)`. (The authors' code draws `randint(0, 784, 784)`, which repeats
    and drops pixels; this is a permutation.)"""
    return np.random.default_rng(PERMUTATION_SEED).permutation(num_pixels)


def image_sequence(images: jax.Array, sequence: str, permuted: bool) -> jax.Array:
    """(N, H, W[, C]) images as (N, T, d) sequences: "pixels" feeds one value per step (T = H W C, scanline
    order, Cooijmans et al.'s sequential MNIST), "rows" d = W C values per step (T = H). `permuted` first puts
    the pixels in `pixel_permutation`'s order (with "rows", each step then reads the next W C of them)."""
    flat = images.reshape((images.shape[0], -1))
    if permuted:
        flat = flat[:, pixel_permutation(flat.shape[1])]
    if sequence == "pixels":
        return flat[:, :, None]
    if sequence == "rows":
        return flat.reshape((images.shape[0], images.shape[1], -1))
    raise ValueError(f"model.sequence: unknown sequence {sequence!r}; expected one of {list(SEQUENCES)}.")


def recurrent_kernel_init(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
    """W_h, (H, 4H): the identity in the block of the cell input g (the third of i, f, g, o), the other three
    blocks together an orthogonal (H, 3H) matrix, as the authors' `--init id`."""
    hidden = shape[0]
    rest = nn.initializers.orthogonal()(key, (hidden, shape[1] - hidden), dtype)
    return jnp.concatenate([rest[:, : 2 * hidden], jnp.eye(hidden, dtype=dtype), rest[:, 2 * hidden :]], axis=1)


def gate_bias_init(forget_bias: float) -> Callable[..., jax.Array]:
    """b, (4H,): zero but for the forget gate's block (the second of i, f, g, o), `forget_bias`."""

    def init(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
        hidden = shape[0] // GATES
        return jnp.zeros(shape, dtype).at[hidden : 2 * hidden].set(forget_bias)

    return init


class LSTMCell(nn.Module):
    """One time step of the (BN-)LSTM, Cooijmans et al. (2016) Eqs. 6-8 (see the module docstring).

    `carry` is (c_{t-1}, h_{t-1}); returns ((c_t, h_t), None). Under `nn.scan` (`LSTMClassifier`) every BN
    layer gets its own statistics per step; the parameters are shared.

    Attributes:
      hidden_size: H.
      batch_norm: the BN-LSTM; False the LSTM.
      train: BN on the mini-batch's moments (Algorithm 1) or on the stored ones (Algorithm 2).
      norm: the BN layer, e.g. `functools.partial(BatchNorm, momentum=0.99)`.
      gamma_init: the initial gamma of every BN layer (0.1, their Sec. 4).
      forget_bias: the initial bias of the forget gate.
      dtype: of the matmuls, the gates and the carry (c, h); parameters and BN's statistics stay float32.
    """

    hidden_size: int
    batch_norm: bool
    train: bool
    norm: Callable[..., nn.Module] = BatchNorm
    gamma_init: float = 0.1
    forget_bias: float = 1.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, carry: tuple[jax.Array, jax.Array], x: jax.Array) -> tuple[tuple[jax.Array, jax.Array], None]:
        c, h = carry
        features = GATES * self.hidden_size
        dense = functools.partial(nn.Dense, features, use_bias=False, dtype=self.dtype)
        recurrent = dense(kernel_init=recurrent_kernel_init, name="hidden")(h)
        inputs = dense(kernel_init=nn.initializers.orthogonal(), name="input")(x)
        gamma = nn.initializers.constant(self.gamma_init)
        if self.batch_norm:
            recurrent = self.norm(use_bias=False, scale_init=gamma, name="bn_hidden")(recurrent, train=self.train)
            inputs = self.norm(use_bias=False, scale_init=gamma, name="bn_input")(inputs, train=self.train)
        bias = self.param("bias", gate_bias_init(self.forget_bias), (features,), jnp.float32).astype(self.dtype)
        i, f, g, o = jnp.split(recurrent + inputs + bias, GATES, axis=-1)
        c = nn.sigmoid(f) * c + nn.sigmoid(i) * jnp.tanh(g)
        cell = self.norm(scale_init=gamma, name="bn_cell")(c, train=self.train) if self.batch_norm else c
        return (c, nn.sigmoid(o) * jnp.tanh(cell)), None


# Parameters shared over time, statistics (and the mini-batch moments reported for Algorithm 2) per time step.
ScannedLSTMCell = nn.scan(
    LSTMCell,
    variable_broadcast="params",
    variable_axes={"batch_stats": 0, MOMENTS_COLLECTION: 0},
    split_rngs={"params": False},
    in_axes=1,
)


def fit_time_axis(stats: Any, length: int) -> Any:
    """Per-time-step statistics (leading axis T) for a sequence of `length` steps: the first `length`, or all T
    followed by step T-1's repeated (Cooijmans et al. Sec. 3: beyond T_max, the statistics of T_max)."""

    def fit(s: jax.Array) -> jax.Array:
        if length <= s.shape[0]:
            return s[:length]
        return jnp.concatenate([s, jnp.repeat(s[-1:], length - s.shape[0], axis=0)])

    return jax.tree.map(fit, stats)


class LSTMClassifier(nn.Module):
    """Sequential (permuted) MNIST with an LSTM or BN-LSTM (Cooijmans et al. 2016, Sec. 5.1): the image read
    as a sequence (`image_sequence`), one (BN-)LSTM layer from c_0 = h_0 = 0, and a softmax layer on the last
    hidden state h_T.

    Attributes:
      hidden_size: H, the LSTM's units (100 in the paper).
      num_classes: outputs of the softmax layer.
      batch_norm: the BN-LSTM; False the LSTM with its biases.
      sequence: "pixels" (784 steps of one pixel, the paper's task) or "rows" (28 steps of a row).
      permuted: the pixels in the fixed order `pixel_permutation` (pMNIST).
      norm: the BN layer of the BN-LSTM, `layers.BatchNorm` with its options bound (`bnrepro.models.create_model`
        binds `config.model.bn`).
      gamma_init: the initial gamma of every BN layer (0.1, Cooijmans et al. Sec. 4).
      forget_bias: the forget gate's initial bias (1, as the authors' code).
      h0_noise: in training, h_0 ~ N(0, h0_noise^2) instead of 0, drawn from the "dropout" stream: the authors'
        work-around (their Sec. 5.1, 0.1 in their in-order BN-LSTM run) for the zero variance of the first
        steps' activations on in-order MNIST, whose normalization makes the gradient explode (and, measured on
        rows, leaves population statistics that fit no mini-batch: `configs/seq_mnist.py`). h_0 = 0 at
        inference. 0 = off.
      dtype: the compute dtype, one of `bnrepro.layers.COMPUTE_DTYPES` (`config.dtype`): matmuls, gates and the
        carry; parameters, BN's statistics and the returned logits are float32.
    """

    hidden_size: int = 100
    num_classes: int = 10
    batch_norm: bool = True
    sequence: str = "pixels"
    permuted: bool = False
    norm: Callable[..., nn.Module] = BatchNorm
    gamma_init: float = 0.1
    forget_bias: float = 1.0
    h0_noise: float = 0.0
    dtype: str = "float32"

    @nn.compact
    def __call__(self, images: jax.Array, train: bool) -> jax.Array:
        xs = image_sequence(images.astype(self.dtype), self.sequence, self.permuted)
        batch, steps = xs.shape[:2]
        stored = self._stored_steps()
        if train and stored is not None and steps != stored:
            raise ValueError(
                f"LSTMClassifier: training on sequences of {steps} steps, but the BN statistics have {stored} "
                "(the length the model was initialized with); only inference generalizes to other lengths."
            )
        # The statistics enter the scan cut or extended to the sequence's length (a no-op in training).
        cell = nn.map_variables(
            ScannedLSTMCell,
            "batch_stats",
            trans_in_fn=functools.partial(fit_time_axis, length=steps),
            mutable=train or self.is_initializing(),
        )(
            hidden_size=self.hidden_size,
            batch_norm=self.batch_norm,
            train=train,
            norm=self.norm,
            gamma_init=self.gamma_init,
            forget_bias=self.forget_bias,
            dtype=self.dtype,
            name="lstm",
        )
        c0 = jnp.zeros((batch, self.hidden_size), self.dtype)
        h0 = c0
        if train and self.h0_noise > 0.0:
            h0 = self.h0_noise * jax.random.normal(self.make_rng("dropout"), c0.shape, self.dtype)
        (_, h), _ = cell((c0, h0), xs)
        return nn.Dense(self.num_classes, dtype=self.dtype, name="classifier")(h).astype(jnp.float32)

    def _stored_steps(self) -> int | None:
        """T, the time steps the stored statistics cover (None before they exist, or without BN)."""
        stats = self.variables.get("batch_stats", {})
        leaves = jax.tree.leaves(stats)
        return leaves[0].shape[0] if leaves else None
