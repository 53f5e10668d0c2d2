"""Where BN-Inception's step spends its convolution time: every convolution of the net, timed alone, forward, input
gradient and kernel gradient, in XLA (ours, and XLA's own gradients) and in PyTorch (oneDNN), side by side.

The convolutions are read from the model's own forward pass (`jax.make_jaxpr`), so the shapes are the net's: by
default the paper's net at 224x224x3, width 1.0, batch 8, without BN (BN does not change the convolutions). Each
is run through `bnrepro.convolution.conv_general_dilated` as the model runs it (1x1 convolutions as matmuls, large ones
with `conv_with_gemm_gradients` on CPU) and through `lax.conv_general_dilated` with XLA's own gradients; PyTorch's
row is `conv2d` and `aten.convolution_backward` on the same shapes in NCHW. Times are the best of `--repeats`
calls, in ms; the last rows sum each column over the net. Timed alone, a convolution pays for allocating its
output (the VM here faults each fresh page in), so the sums exceed a whole step's time; compare columns, not a
column with `scripts/bench_inception.py`.

    python scripts/bench_convs.py --torch_path=DIR [--cpu_cores=0] [--batch_size=8] [--repeats=5]

Results: docs/performance.md#each-convolution-of-bn-inception.
"""

from __future__ import annotations

import collections
import importlib.util
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.extend
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from bnrepro import convolution, models
from bnrepro.cpu import use_cpu_cores

_CONFIG = config_flags.DEFINE_config_file("config", "configs/fashion_table2.py:bn_x5", "The net's config.")
_BATCH = flags.DEFINE_integer("batch_size", 8, "Mini-batch size.")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 224, "Input size (224: the paper's stem, 224x224x3).")
_WIDTH = flags.DEFINE_float("width_multiplier", 1.0, "Width multiplier of the net.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed calls per measurement; the best is reported.")
_CPU_CORES = flags.DEFINE_integer("cpu_cores", 0, "CPU cores to run on (0 = all).")
_TORCH_PATH = flags.DEFINE_string("torch_path", "", "A directory holding torch (pip install --target DIR torch).")

COLUMNS = ("fwd", "d input", "d kernel")


def net_convolutions() -> list[dict[str, Any]]:
    """The shapes and parameters of every convolution (and 1x1-as-matmul) in the model's forward pass."""
    config = _CONFIG.value.copy_and_resolve_references()
    with config.unlocked():
        config.model.width_multiplier = _WIDTH.value
        config.model.batch_norm = False
        if _IMAGE_SIZE.value != 28:
            config.model.small_input, config.model.num_classes = False, 1000
    model = models.create_model(config.model, config.dtype)
    size, channels = _IMAGE_SIZE.value, 1 if _IMAGE_SIZE.value == 28 else 3
    x = jax.ShapeDtypeStruct((_BATCH.value, size, size, channels), np.float32)
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), np.zeros(x.shape, x.dtype), train=False))
    jaxpr = jax.make_jaxpr(lambda v, u: model.apply(v, u, train=False))(variables, x)
    convolutions = []

    def visit(jaxpr: Any) -> None:
        for eqn in jaxpr.eqns:
            lhs, rhs = (v.aval.shape for v in eqn.invars[:2]) if len(eqn.invars) >= 2 else ((), ())
            if eqn.primitive.name == "conv_general_dilated" or (
                eqn.primitive.name == "dot_general" and len(lhs) == 4 and len(rhs) == 2
            ):
                params = eqn.params
                if eqn.primitive.name == "dot_general":  # a 1x1 convolution, run as a matmul
                    rhs = (1, 1, *rhs)
                    params = {"window_strides": (1, 1), "padding": ((0, 0), (0, 0))}
                convolutions.append({"lhs": lhs, "rhs": rhs, "strides": params["window_strides"], **params})
            for sub in jax.extend.core.jaxprs_in_params(eqn.params):
                visit(sub)

    visit(jaxpr.jaxpr)
    return convolutions


def best_ms(fn: Callable[[], Any]) -> float:
    """Best time of `fn()` (blocked on) over `--repeats` calls, after one warm-up call (which compiles)."""
    jax.block_until_ready(fn())
    best = float("inf")
    for _ in range(_REPEATS.value):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        best = min(best, time.perf_counter() - start)
    return 1e3 * best


def xla_times(conv: dict[str, Any], ours: bool) -> list[float]:
    """Forward, input-gradient and kernel-gradient times of one convolution in JAX."""
    rng = np.random.default_rng(0)
    lhs = rng.standard_normal(conv["lhs"], np.float32)
    rhs = rng.standard_normal(conv["rhs"], np.float32)
    lax_conv = convolution.conv_general_dilated if ours else jax.lax.conv_general_dilated

    def forward(u: jax.Array, kernel: jax.Array) -> jax.Array:
        return lax_conv(u, kernel, conv["strides"], conv["padding"], dimension_numbers=("NHWC", "HWIO", "NHWC"))

    dy = rng.standard_normal(jax.eval_shape(forward, lhs, rhs).shape, np.float32)
    grad_input = jax.jit(lambda u, k, g: jax.vjp(lambda v: forward(v, k), u)[1](g)[0])
    grad_kernel = jax.jit(lambda u, k, g: jax.vjp(lambda w: forward(u, w), k)[1](g)[0])
    forward = jax.jit(forward)
    return [
        best_ms(lambda: forward(lhs, rhs)),
        best_ms(lambda: grad_input(lhs, rhs, dy)),
        best_ms(lambda: grad_kernel(lhs, rhs, dy)),
    ]


def torch_times(torch: Any, conv: dict[str, Any]) -> list[float]:
    """The same convolution in PyTorch (NCHW, PyTorch's symmetric padding: same shapes and FLOPs)."""
    (n, h, w, cin), (kh, kw, _, cout) = conv["lhs"], conv["rhs"]
    stride, padding = list(conv["strides"]), [kh // 2, kw // 2]
    u, kernel = torch.randn(n, cin, h, w), torch.randn(cout, cin, kh, kw)
    dy = torch.randn_like(torch.nn.functional.conv2d(u, kernel, None, stride, padding))

    def backward(mask: list[bool]) -> Any:
        return torch.ops.aten.convolution_backward(dy, u, kernel, None, stride, padding, [1, 1], False, [0, 0], 1, mask)

    return [
        best_ms(lambda: torch.nn.functional.conv2d(u, kernel, None, stride, padding)),
        best_ms(lambda: backward([True, False, False])),
        best_ms(lambda: backward([False, True, False])),
    ]


def main(argv: list[str]) -> None:
    del argv
    use_cpu_cores(_CPU_CORES.value)
    if _TORCH_PATH.value:
        sys.path.insert(0, _TORCH_PATH.value)
    torch = importlib.import_module("torch") if importlib.util.find_spec("torch") is not None else None
    if torch is not None:
        torch.set_num_threads(len(os.sched_getaffinity(0)))
    frameworks = ["ours", "XLA's gradients"] + (["PyTorch"] if torch is not None else [])
    header = " | ".join(f"{f} {c}" for f in frameworks for c in COLUMNS)
    print(f"| convolution | {header} |\n|---|" + "---:|" * (3 * len(frameworks)))
    totals: dict[str, float] = collections.defaultdict(float)
    for conv in net_convolutions():
        (_, h, w, cin), (kh, kw, _, cout) = conv["lhs"], conv["rhs"]
        times = {"ours": xla_times(conv, True), "XLA's gradients": xla_times(conv, False)}
        if torch is not None:
            times["PyTorch"] = torch_times(torch, conv)
        for framework, row in times.items():
            for column, ms in zip(COLUMNS, row, strict=True):
                totals[f"{framework} {column}"] += ms
        cells = " | ".join(f"{ms:.2f}" for f in frameworks for ms in times[f])
        print(f"| {h}x{w}x{cin} -> {cout}, {kh}x{kw}/{conv['strides'][0]} | {cells} |", flush=True)
    sums = " | ".join(f"{totals[f + ' ' + c]:.1f}" for f in frameworks for c in COLUMNS)
    print(f"| **sum** | {sums} |")
    for framework in frameworks:
        print(f"{framework}: {sum(totals[f'{framework} {c}'] for c in COLUMNS):.0f} ms over the net's convolutions")


if __name__ == "__main__":
    app.run(main)
