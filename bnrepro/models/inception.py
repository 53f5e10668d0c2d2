"""BN-Inception, the ImageNet network of Sec. 4.2, as the appendix's Figure 5 table describes it.

The table as data (`FIGURE_5_MODULES`), one `InceptionModule` per row, and `BNInception`: the stem,
modules 3a-5b, global average pooling and the linear classifier. Every convolution is
z = g(BN(W * u)) with the bias of W dropped (`bnrepro.layers.ConvBN`, Sec. 3.2); without BN it is
the baseline g(W * u + b).

The table's errata (see `pool_proj_4cd` on `BNInception`):
  * 3c and 4e are printed 28x28 and 14x14; their stride-2 branches halve the grid, so they output
    14x14 and 7x7 (as in TF-slim and the Caffe/PyTorch ports; the table's own 5a/5b rows are 7x7).
  * The branches of 4c and 4d sum to 608, not the printed 576; 4e, which passes its input through,
    then outputs 1056, not 1024.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from bnrepro.convolution import conv_general_dilated
from bnrepro.layers import BatchNorm, ConvBN, activation_fn

# The collection `BNInception` sows each stage's output into (keys: `STAGES`), when the caller
# makes it mutable; e.g. `model.apply(variables, x, train=False, mutable=[STAGE_OUTPUTS])`.
STAGE_OUTPUTS = "stage_outputs"


class ModuleSpec(NamedTuple):
    """One Inception module, a row of the Figure 5 table (output channels of each convolution).

    A stride-2 module (3c, 4e) has no 1x1 branch (`ch_1x1 = 0`) and passes its input through the
    pooling branch (`pool_proj = 0`); its 3x3 and second double-3x3 convolutions and its max pool
    have stride 2.
    """

    name: str
    ch_1x1: int
    ch_3x3_reduce: int
    ch_3x3: int
    ch_double_3x3_reduce: int
    ch_double_3x3: int
    pool: Literal["avg", "max"]
    pool_proj: int
    stride: int = 1


# Figure 5, literally: #1x1, #3x3 reduce, #3x3, double #3x3 reduce, double #3x3, pool + proj.
FIGURE_5_MODULES: tuple[ModuleSpec, ...] = (
    ModuleSpec("3a", 64, 64, 64, 64, 96, "avg", 32),
    ModuleSpec("3b", 64, 64, 96, 64, 96, "avg", 64),
    ModuleSpec("3c", 0, 128, 160, 64, 96, "max", 0, stride=2),
    ModuleSpec("4a", 224, 64, 96, 96, 128, "avg", 128),
    ModuleSpec("4b", 192, 96, 128, 96, 128, "avg", 128),
    ModuleSpec("4c", 160, 128, 160, 128, 160, "avg", 128),
    ModuleSpec("4d", 96, 128, 192, 160, 192, "avg", 128),
    ModuleSpec("4e", 0, 128, 192, 192, 256, "max", 0, stride=2),
    ModuleSpec("5a", 352, 192, 320, 160, 224, "avg", 128),
    ModuleSpec("5b", 352, 192, 320, 192, 224, "max", 128),
)

# TF-slim's inception_v2 reads the pool projections of 4c and 4d as 96, so both output 576 and 4e 1024.
TFSLIM_POOL_PROJ_4CD = 96

# The table's rows, in order: the keys under which `BNInception` sows each stage's output.
STAGES: tuple[str, ...] = (
    ("conv1", "pool1", "conv2", "pool2") + tuple(m.name for m in FIGURE_5_MODULES) + ("avg_pool", "logits")
)


def figure_5_modules(pool_proj_4cd: Literal["literal", "tfslim"] = "literal") -> tuple[ModuleSpec, ...]:
    """The table's modules; `"tfslim"` sets 4c's and 4d's pool projections to 96 (see the errata above)."""
    if pool_proj_4cd == "literal":
        return FIGURE_5_MODULES
    if pool_proj_4cd == "tfslim":
        return tuple(
            m._replace(pool_proj=TFSLIM_POOL_PROJ_4CD) if m.name in ("4c", "4d") else m for m in FIGURE_5_MODULES
        )
    raise ValueError(f"pool_proj_4cd: expected 'literal' or 'tfslim', got {pool_proj_4cd!r}.")


def local_response_normalization(
    x: jax.Array, depth_radius: int = 2, bias: float = 1.0, alpha: float = 1e-4 / 5, beta: float = 0.75
) -> jax.Array:
    """Cross-channel local response normalization (Krizhevsky et al. 2012), on the last axis:

        y[..., c] = x[..., c] / (bias + alpha * sum_{|c' - c| <= depth_radius} x[..., c']^2) ** beta

    with the window clipped at the first and last channel. This is `tf.nn.local_response_normalization`'s
    formula; the defaults are not TF's (5, 1, 1, 0.5) but the original Inception's (GoogLeNet, Szegedy
    et al. 2014): its reference Caffe model (`models/bvlc_googlenet`) has LRN with local_size 5,
    alpha 1e-4, beta 0.75, k = 1, and Caffe divides alpha by local_size, hence depth_radius = 2,
    alpha = 1e-4 / 5 here.
    """
    squares = jnp.square(x.astype(jnp.float32))
    window = (1,) * (x.ndim - 1) + (2 * depth_radius + 1,)
    padding = ((0, 0),) * (x.ndim - 1) + ((depth_radius, depth_radius),)
    sums = jax.lax.reduce_window(squares, 0.0, jax.lax.add, window, (1,) * x.ndim, padding)
    return (x * (bias + alpha * sums) ** -beta).astype(x.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def max_pool(x: jax.Array, window: tuple[int, int], strides: tuple[int, int]) -> jax.Array:
    """`nn.max_pool(x, window, strides, padding="SAME")` on NHWC `x`, with the same gradient computed without
    XLA's select-and-scatter, which XLA:CPU runs as a serial scatter (on 8 images at 224x224: 190 ms for the
    stem's pool alone, against 190 ms for the net's whole forward pass). The gradient goes to the first maximum of
    each window in row-major order, as select-and-scatter's (equal up to the order of summation where windows
    overlap); here each window offset's share is shifted into one of the stride's phases of the input grid and
    the phases are interleaved, all elementwise (68 ms for that pool)."""
    return nn.max_pool(x, window, strides=strides, padding="SAME")


def _max_pool_fwd(x, window, strides):
    y = max_pool(x, window, strides)
    return y, (x, y)


def _max_pool_bwd(window, strides, residuals, d_y):
    x, y = residuals
    (sh, sw), (oh, ow) = strides, y.shape[1:3]
    pads = jax.lax.padtype_to_pads(x.shape[1:3], window, strides, "SAME")
    # Pad to whole strides, so that the padded grid splits into sh x sw phases of rows / sh x cols / sw cells.
    rows, cols = (oh + (window[0] - 1) // sh + 1) * sh, (ow + (window[1] - 1) // sw + 1) * sw
    (top, _), (left, _) = pads
    xp = jnp.pad(
        x, ((0, 0), (top, rows - top - x.shape[1]), (left, cols - left - x.shape[2]), (0, 0)), constant_values=-jnp.inf
    )
    taken = jnp.zeros(y.shape, bool)
    phases = [[jnp.zeros((), d_y.dtype)] * sw for _ in range(sh)]
    for i in range(window[0]):
        for j in range(window[1]):
            window_x = jax.lax.slice(
                xp, (0, i, j, 0), (y.shape[0], i + (oh - 1) * sh + 1, j + (ow - 1) * sw + 1, y.shape[3]), (1, sh, sw, 1)
            )
            first = (window_x == y) & ~taken
            taken = taken | first
            # Offset (i, j) of output (r, c) reads padded cell (r sh + i, c sw + j): phase (i % sh, j % sw),
            # cell (r + i // sh, c + j // sw) of that phase.
            shifted = jnp.pad(
                jnp.where(first, d_y, 0),
                ((0, 0), (i // sh, rows // sh - oh - i // sh), (j // sw, cols // sw - ow - j // sw), (0, 0)),
            )
            phases[i % sh][j % sw] = phases[i % sh][j % sw] + shifted
    full = [jnp.broadcast_to(p, (y.shape[0], rows // sh, cols // sw, y.shape[3])) for row in phases for p in row]
    d_xp = jnp.stack(full, 3).reshape(y.shape[0], rows // sh, cols // sw, sh, sw, y.shape[3])
    d_xp = d_xp.transpose(0, 1, 3, 2, 4, 5).reshape(y.shape[0], rows, cols, y.shape[3])
    return (d_xp[:, top : top + x.shape[1], left : left + x.shape[2]],)


max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)


class ConvParams(nn.Module):
    """A convolution's parameters and nothing else: `kernel` of shape `shape` (HWIO) and, with `use_bias`, a zero-
    initialized `bias` per output channel, the names and shapes `nn.Conv` gives them; float32, returned in `dtype`
    (the compute dtype), as `nn.Conv` uses them."""

    shape: tuple[int, ...]
    use_bias: bool
    kernel_init: Callable[..., jax.Array]
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self) -> tuple[jax.Array, jax.Array | None]:
        kernel = self.param("kernel", self.kernel_init, self.shape).astype(self.dtype)
        if not self.use_bias:
            return kernel, None
        return kernel, self.param("bias", nn.initializers.zeros, self.shape[-1:]).astype(self.dtype)


class SeparableConvBN(nn.Module):
    """The stem's "7x7/2 separable, depth multiplier 8" convolution, z = g(BN(P * (D * u))).

    D is a depthwise 7x7 convolution giving `depth_multiplier` maps per input channel (24 for RGB),
    P a 1x1 pointwise convolution to `features` maps. As in TF-slim's `separable_conv2d` (and
    `tf.nn.separable_conv2d`) the two are one factorized convolution: no nonlinearity and no BN
    between them, and one BN (or, without BN, one bias) on the output. TF-slim's inception_v2 gives
    this layer a bias and no BN (its arg scope adds BN to `conv2d` only); here it has BN like every
    other convolution, as the paper says ("every conv is followed by BN").

    The parameters are the factors, D (`depthwise/kernel`, as `nn.Conv(feature_group_count=channels)`'s) and
    P (`pointwise/kernel`, and `pointwise/bias` without BN); the layer computes their product, one dense
    7x7 convolution from the input channels to `features` maps, whose kernel W = P D costs little to form
    and to differentiate. The function is the same, up to float rounding. XLA:CPU runs the factors slowly:
    a grouped convolution's kernel gradient is a 3-D convolution over the whole image, and even as a dense
    block-diagonal convolution the 3 -> 24 maps took 82 ms forward on 8 images at 224x224, against 19 ms
    for the 3 -> 64 product (151 ms against 36 ms with the kernels' gradients; measured side by side).
    The product runs through `bnrepro.convolution.conv_general_dilated`, which on CPU at 224 px takes its
    gradients as matmuls (`conv_with_gemm_gradients`).

    Attributes:
      features: output channels of the pointwise convolution.
      kernel_size, strides: of the depthwise convolution.
      depth_multiplier: depthwise maps per input channel.
      activation, batch_norm, norm, kernel_init, dtype: as in `bnrepro.layers.ConvBN`.
    """

    features: int
    kernel_size: tuple[int, int] = (7, 7)
    strides: tuple[int, int] = (2, 2)
    depth_multiplier: int = 8
    activation: str = "relu"
    batch_norm: bool = True
    norm: Callable[..., nn.Module] = BatchNorm
    kernel_init: Callable[..., jax.Array] = nn.linear.default_kernel_init
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, u: jax.Array, train: bool) -> jax.Array:
        channels, maps = u.shape[-1], u.shape[-1] * self.depth_multiplier
        depthwise, _ = ConvParams((*self.kernel_size, 1, maps), False, self.kernel_init, self.dtype, name="depthwise")()
        pointwise, bias = ConvParams(
            (1, 1, maps, self.features), not self.batch_norm, self.kernel_init, self.dtype, name="pointwise"
        )()
        # Map c m + k of D reads channel c only, so (P * (D * u))[o] = sum_c W[:, :, c, o] * u[c] with
        # W[i, j, c, o] = sum_k D[i, j, 0, c m + k] P[0, 0, c m + k, o].
        kernel = jnp.einsum(
            "ijck,cko->ijco",
            depthwise.reshape(*self.kernel_size, channels, self.depth_multiplier),
            pointwise.reshape(channels, self.depth_multiplier, self.features),
        )
        x = conv_general_dilated(
            u.astype(self.dtype),
            kernel,
            self.strides,
            "SAME",
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )
        if bias is not None:
            x = x + bias
        if self.batch_norm:
            x = self.norm()(x, train=train)
        return activation_fn(self.activation)(x)


class InceptionModule(nn.Module):
    """One Inception module (Figure 5): four branches concatenated along channels.

      1x1:         conv 1x1                                    (absent in stride-2 modules)
      3x3:         conv 1x1 (reduce) -> conv 3x3 (stride s)
      double 3x3:  conv 1x1 (reduce) -> conv 3x3 -> conv 3x3 (stride s), GoogLeNet's 5x5 replaced
      pool:        avg or max pool 3x3 (stride s) -> conv 1x1 (proj); the bare pool ("pass through")
                   in stride-2 modules

    Padding is SAME everywhere; average pooling counts only the pixels inside the image, as
    TensorFlow's (and TF-slim's) does.

    Attributes:
      spec: the module's row of the table (channels already scaled by any width multiplier).
      conv: the convolution layer, `functools.partial(ConvBN, activation=..., batch_norm=..., norm=...)`.
    """

    spec: ModuleSpec
    conv: Callable[..., nn.Module] = ConvBN

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        s = self.spec
        strides = (s.stride, s.stride)
        branches = []
        if s.ch_1x1:
            branches.append(self.conv(s.ch_1x1, (1, 1), name="1x1")(x, train=train))

        y = self.conv(s.ch_3x3_reduce, (1, 1), name="3x3_reduce")(x, train=train)
        branches.append(self.conv(s.ch_3x3, (3, 3), strides=strides, name="3x3")(y, train=train))

        y = self.conv(s.ch_double_3x3_reduce, (1, 1), name="double_3x3_reduce")(x, train=train)
        y = self.conv(s.ch_double_3x3, (3, 3), name="double_3x3_a")(y, train=train)
        branches.append(self.conv(s.ch_double_3x3, (3, 3), strides=strides, name="double_3x3_b")(y, train=train))

        if s.pool == "avg":
            y = nn.avg_pool(x, (3, 3), strides=strides, padding="SAME", count_include_pad=False)
        elif s.pool == "max":
            y = max_pool(x, (3, 3), strides)
        else:
            raise ValueError(f"module {s.name}: pool must be 'avg' or 'max', got {s.pool!r}.")
        if s.pool_proj:
            y = self.conv(s.pool_proj, (1, 1), name="pool_proj")(y, train=train)
        branches.append(y)
        return jnp.concatenate(branches, axis=-1)


class BNInception(nn.Module):
    """BN-Inception (Sec. 4.2, appendix Figure 5), for NHWC images.

    Stem (224x224x3 input): conv 7x7/2 (64; separable with depth multiplier 8) -> 112x112x64;
    max pool 3x3/2 -> 56x56x64; conv 1x1 (64) + conv 3x3 (192) -> 56x56x192; max pool 3x3/2 ->
    28x28x192. Then modules 3a-5b (`figure_5_modules`), 3c and 4e halving the grid to 14x14 and
    7x7; global average pooling (the table's 7x7/1 average pool, written as a mean over the grid so
    other input sizes work); dropout (if `dropout_rate`); a linear layer to `num_classes` logits
    (softmax belongs to the loss). Each row's output is sown into `STAGE_OUTPUTS` under its `STAGES` key
    (all but `pool1` with `small_input`).

    Parameters (`params`; 1000 classes, separable stem, BN): 11,278,528 with the literal table,
    11,188,288 with `pool_proj_4cd="tfslim"`; the plain 7x7 stem adds 6,696, and without BN each
    convolution's bias replaces its gamma and beta (11,268,512 literal). `batch_stats` hold another
    20,032 (19,904) running moments, which are not parameters. The paper states 13.6M, which no
    reading of the table reaches: conv biases or a plain stem add far too little, and GoogLeNet's
    auxiliary classifiers, which the table does not list, would add about 3.2M each (~14.5M with one,
    ~17.7M with two). The count here is the table's; the 13.6M stays unexplained.

    Attributes:
      num_classes: outputs of the final linear layer.
      batch_norm: BN before every nonlinearity (bias dropped); False is the Inception baseline, whose
        convolutions keep their biases.
      activation: the nonlinearity g after every convolution (`relu`; `sigmoid` for BN-x5-Sigmoid).
      dropout_rate: dropout before the classifier (the Inception baseline: 0.4, as GoogLeNet;
        Sec. 4.2.1 removes it). With `train=True` and a rate > 0, `apply` needs a `dropout` rng.
      lrn: local response normalization (`local_response_normalization`) where GoogLeNet has it:
        after the first max pool (after conv1 when `small_input` drops that pool) and after the stem's
        3x3 conv. Sec. 4.2.1 removes it from the BN networks.
      pool_proj_4cd: `"literal"` (default) takes the table's numbers, as the Caffe/PyTorch
        BN-Inception ports do: 4c and 4d output 608 channels and 4e 1056. `"tfslim"` uses TF-slim's
        inception_v2 reading, pool projections of 96 in 4c and 4d, so that they output the printed
        576 and 4e the printed 1024.
      separable_stem: the paper's separable 7x7 first convolution (`SeparableConvBN`); False: a
        plain 7x7 convolution, as the Caffe/PyTorch ports have.
      stem_depth_multiplier: depthwise maps per input channel in the separable stem, at most; TF-slim
        caps it so the depthwise output does not exceed the pointwise one:
        min(stem_depth_multiplier, width(64) // input channels), at least 1.
      width_multiplier: every convolution's output channels d become max(int(d * width_multiplier),
        min_depth) (TF-slim's `depth_multiplier` rule: truncation, then the floor).
      min_depth: the floor of that rule (TF-slim uses 16; 1 here so that widths scale uniformly).
      num_modules: keep only the first `num_modules` Inception modules of the table (3a, 3b, ...), then pool
        and classify; None: all ten. Not in the paper: a shallower net that compiles in a fraction of the time,
        for smoke tests (the quick variants of `configs/fashion_table2.py`).
      small_input: for 28x28 or 32x32 images: the stem's 7x7 conv has stride 1 and its first max pool
        is dropped, so the net downsamples 8x instead of 32x (32x32 -> 32, 16 at module 3, 8 after 3c,
        4 after 4e; 28x28 -> 28, 14, 7, 4). Other input sizes work unchanged (SAME padding, global pool).
      norm: the BN layer of every convolution, `bnrepro.layers.BatchNorm` with its options bound
        (`bnrepro.models.create_model` binds `config.model.bn`). The paper gives none of them; TF-slim's
        Inception uses decay 0.9997 and eps 0.001.
      kernel_init: initializer of every weight: by default He's fan-in truncated normal, TF-slim's
        `variance_scaling_initializer()` for Inception (the paper does not say).
      dtype: the compute dtype of every convolution, activation and the classifier's matmul, one of
        `bnrepro.layers.COMPUTE_DTYPES` (`config.dtype`); weights, BN's statistics and the returned logits are
        float32.
    """

    num_classes: int = 1000
    batch_norm: bool = True
    activation: str = "relu"
    dropout_rate: float = 0.0
    lrn: bool = False
    pool_proj_4cd: Literal["literal", "tfslim"] = "literal"
    separable_stem: bool = True
    stem_depth_multiplier: int = 8
    width_multiplier: float = 1.0
    min_depth: int = 1
    num_modules: int | None = None
    small_input: bool = False
    norm: Callable[..., nn.Module] = BatchNorm
    kernel_init: Callable[..., Any] = nn.initializers.variance_scaling(2.0, "fan_in", "truncated_normal")
    dtype: str = "float32"

    def width(self, channels: int) -> int:
        """Output channels of a convolution the table gives `channels` (the width multiplier's rule)."""
        if self.width_multiplier <= 0:
            raise ValueError(f"width_multiplier must be > 0, got {self.width_multiplier}.")
        return max(int(channels * self.width_multiplier), self.min_depth)

    def _stage(self, name: str, x: jax.Array) -> jax.Array:
        self.sow(STAGE_OUTPUTS, name, x)
        return x

    @nn.compact
    def __call__(self, images: jax.Array, train: bool) -> jax.Array:
        x = images.astype(self.dtype)
        if x.ndim == 3:  # grayscale (N, H, W), as the trainer serves MNIST/Fashion-MNIST: one channel
            x = x[..., None]
        conv = functools.partial(
            ConvBN,
            activation=self.activation,
            batch_norm=self.batch_norm,
            norm=self.norm,
            kernel_init=self.kernel_init,
            dtype=self.dtype,
        )
        stem_strides = (1, 1) if self.small_input else (2, 2)

        if self.separable_stem:
            multiplier = max(min(self.stem_depth_multiplier, self.width(64) // x.shape[-1]), 1)
            x = SeparableConvBN(
                self.width(64),
                (7, 7),
                strides=stem_strides,
                depth_multiplier=multiplier,
                activation=self.activation,
                batch_norm=self.batch_norm,
                norm=self.norm,
                kernel_init=self.kernel_init,
                dtype=self.dtype,
                name="conv1_7x7",
            )(x, train=train)
        else:
            x = conv(self.width(64), (7, 7), strides=stem_strides, name="conv1_7x7")(x, train=train)
        x = self._stage("conv1", x)
        if not self.small_input:
            x = self._stage("pool1", max_pool(x, (3, 3), (2, 2)))
        if self.lrn:
            x = local_response_normalization(x)
        x = conv(self.width(64), (1, 1), name="conv2_1x1_reduce")(x, train=train)
        x = conv(self.width(192), (3, 3), name="conv2_3x3")(x, train=train)
        if self.lrn:
            x = local_response_normalization(x)
        x = self._stage("conv2", x)
        x = self._stage("pool2", max_pool(x, (3, 3), (2, 2)))

        modules = figure_5_modules(self.pool_proj_4cd)
        if self.num_modules is not None and not 1 <= self.num_modules <= len(modules):
            raise ValueError(f"num_modules must lie in [1, {len(modules)}], got {self.num_modules}.")
        for spec in modules[: self.num_modules]:
            scaled = spec._replace(
                ch_1x1=self.width(spec.ch_1x1) if spec.ch_1x1 else 0,
                ch_3x3_reduce=self.width(spec.ch_3x3_reduce),
                ch_3x3=self.width(spec.ch_3x3),
                ch_double_3x3_reduce=self.width(spec.ch_double_3x3_reduce),
                ch_double_3x3=self.width(spec.ch_double_3x3),
                pool_proj=self.width(spec.pool_proj) if spec.pool_proj else 0,
            )
            x = self._stage(spec.name, InceptionModule(scaled, conv=conv, name=f"inception_{spec.name}")(x, train))

        x = self._stage("avg_pool", jnp.mean(x, axis=(1, 2), keepdims=True))
        x = x.reshape((x.shape[0], -1))
        if self.dropout_rate > 0:
            x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        logits = nn.Dense(self.num_classes, kernel_init=self.kernel_init, dtype=self.dtype, name="classifier")(x)
        return self._stage("logits", logits.astype(jnp.float32))
