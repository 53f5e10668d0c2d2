"""Convolutions for `nn.Conv` (its `conv_general_dilated` argument) that XLA:CPU runs faster, with XLA's values.

* `conv_general_dilated` -- `jax.lax.conv_general_dilated` with 1x1 convolutions as matmuls, and on CPU large 2-D
                   convolutions differentiated as matmuls; `bnrepro.layers.ConvBN` and `models.inception` use it.
* `conv_with_gemm_gradients` -- a 2-D convolution whose gradients are matmuls over its `im2col` patches.

Nothing here depends on BN; it only changes how a convolution is computed, not what.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp


def conv_general_dilated(
    lhs: jax.Array,
    rhs: jax.Array,
    window_strides: Sequence[int],
    padding: str | Sequence[tuple[int, int]],
    lhs_dilation: Sequence[int] | None = None,
    rhs_dilation: Sequence[int] | None = None,
    dimension_numbers: Any = None,
    feature_group_count: int = 1,
    precision: Any = None,
) -> jax.Array:
    """`jax.lax.conv_general_dilated`, computed differently in two cases of `nn.Conv`'s layout (channels last, one
    group, no dilation), with the same values up to float rounding:

    * a 1x1 convolution (stride 1, no padding) as the matmul it is, u @ W[0, 0] over the channels. XLA:CPU
      differentiates a convolution's kernel as another convolution over the whole image, which for a 1x1 kernel
      is 3-5x slower than the matmul u^T dy (8 images at 224x224: 16 ms against 5 ms for 24 -> 64 channels at
      112x112, 14 ms against 3 ms for 320 -> 128 at 28x28), and BN-Inception has 1x1 convolutions in every module;
    * on CPU, a 2-D convolution with at least `GEMM_GRADIENTS_MIN_ELEMENTS` patches' elements is differentiated
      as matmuls (`conv_with_gemm_gradients`), chosen by `jax.lax.platform_dependent` as the program is lowered
      (a GPU or TPU program, even one exported from a CPU machine, keeps XLA's convolution). Below that, XLA's own
      gradients are as fast, and the extra operations cost more than they save (Table 2's CPU-scale step was
      8-25% slower with all its convolutions differentiated so).
    """
    spatial = lhs.ndim - 2

    def xla(u: jax.Array, w: jax.Array) -> jax.Array:  # XLA's own convolution, the default on every platform
        return jax.lax.conv_general_dilated(
            u,
            w,
            window_strides,
            padding,
            lhs_dilation,
            rhs_dilation,
            dimension_numbers,
            feature_group_count,
            precision=precision,
        )

    nhwc = jax.lax.conv_dimension_numbers(
        lhs.shape, rhs.shape, ("N" + "HWD"[:spatial] + "C", "HWD"[:spatial] + "IO", "N" + "HWD"[:spatial] + "C")
    )
    plain = (
        feature_group_count == 1
        and all(d is None or tuple(d) == (1,) * spatial for d in (lhs_dilation, rhs_dilation))
        and jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers) == nhwc
    )
    if plain:
        window = rhs.shape[:spatial]
        pads = padding
        if isinstance(padding, str):
            pads = jax.lax.padtype_to_pads(lhs.shape[1:-1], window, window_strides, padding)
        pads = tuple((int(lo), int(hi)) for lo, hi in pads)
        if window == (1,) * spatial and tuple(window_strides) == (1,) * spatial and pads == ((0, 0),) * spatial:
            return jax.lax.dot_general(lhs, rhs.reshape(rhs.shape[-2:]), (((lhs.ndim - 1,), (0,)), ((), ())), precision)
        if spatial == 2:
            rows = lhs.shape[0] * math.prod(
                (size + lo + hi - k) // stride + 1
                for size, (lo, hi), k, stride in zip(lhs.shape[1:3], pads, window, window_strides)
            )
            if rows * math.prod(rhs.shape[:3]) >= GEMM_GRADIENTS_MIN_ELEMENTS:
                strides = tuple(window_strides)
                return jax.lax.platform_dependent(
                    lhs, rhs, cpu=lambda u, w: conv_with_gemm_gradients(u, w, strides, pads, precision), default=xla
                )
    return xla(lhs, rhs)


# On CPU, a convolution whose im2col matrix (`im2col`) has at least this many elements is differentiated by
# `conv_with_gemm_gradients`. Table 2's CPU-scale net stays below it (its largest: 2.7M), the paper's 224 px net
# is above it from its stem to its 28x28 modules; see `conv_general_dilated`.
GEMM_GRADIENTS_MIN_ELEMENTS = 3 * 2**20

_NHWC = ("NHWC", "HWIO", "NHWC")


def im2col(u: jax.Array, window: Sequence[int], strides: Sequence[int], pads: Sequence[tuple[int, int]]) -> jax.Array:
    """The patches of a 2-D convolution over `u` (N, H, W, C): (N, H', W', kh kw C), at each output location the
    inputs its window covers, in the kernel's HWI order, so that the convolution is im2col(u) @ W.reshape(-1, O)."""
    u = jnp.pad(u, ((0, 0), *pads, (0, 0)))
    (kh, kw), (sh, sw) = window, strides
    ho, wo = (u.shape[1] - kh) // sh + 1, (u.shape[2] - kw) // sw + 1
    taps = [u[:, i : i + (ho - 1) * sh + 1 : sh, j : j + (wo - 1) * sw + 1 : sw] for i in range(kh) for j in range(kw)]
    return jnp.concatenate(taps, axis=-1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def conv_with_gemm_gradients(
    u: jax.Array, kernel: jax.Array, strides: tuple[int, ...], pads: tuple[tuple[int, int], ...], precision: Any
) -> jax.Array:
    """XLA's 2-D convolution of `u` (NHWC) with `kernel` (HWIO), differentiated as two matmuls over the patches
    `cols = im2col(u)` rather than as XLA's transposed convolutions:

        dL/dW = cols^T dy,    dL/du = im2col^T(dy W^T)

    (im2col^T, the transpose of a gather of taps, adds each patch's gradient back at the inputs it came from).
    The values are XLA's up to float rounding. XLA:CPU differentiates a convolution's kernel as a convolution
    over the whole image, 2-4x slower than PyTorch's oneDNN for the paper's net at 224 px. Timed alone
    (`scripts/bench_convs.py`, 8 images, 2 cores), as matmuls (XLA:CPU's YNNPACK GEMMs) the stem's kernel
    gradient took 95 against 142 ms and conv2's (56x56, 64 -> 192) 90 against 159 ms; the input gradients are
    closer (summed over the net, 331 against 409 ms). In the whole step: 0.81x -> 0.99x PyTorch eager's."""
    return jax.lax.conv_general_dilated(u, kernel, strides, pads, dimension_numbers=_NHWC, precision=precision)


def _conv_gemm_forward(
    u: jax.Array, kernel: jax.Array, strides: tuple[int, ...], pads: tuple[tuple[int, int], ...], precision: Any
) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    return conv_with_gemm_gradients(u, kernel, strides, pads, precision), (u, kernel)


def _conv_gemm_backward(
    strides: tuple[int, ...],
    pads: tuple[tuple[int, int], ...],
    precision: Any,
    residuals: tuple[jax.Array, jax.Array],
    dy: jax.Array,
) -> tuple[jax.Array, jax.Array]:
    u, kernel = residuals
    cols, cols_transpose = jax.vjp(lambda v: im2col(v, kernel.shape[:2], strides, pads), u)
    matrix = kernel.reshape(-1, kernel.shape[-1])
    (du,) = cols_transpose(jax.lax.dot_general(dy, matrix, (((3,), (1,)), ((), ())), precision).astype(cols.dtype))
    dw = jax.lax.dot_general(cols, dy, (((0, 1, 2), (0, 1, 2)), ((), ())), precision, jnp.float32)
    return du, dw.reshape(kernel.shape).astype(kernel.dtype)


conv_with_gemm_gradients.defvjp(_conv_gemm_forward, _conv_gemm_backward)
