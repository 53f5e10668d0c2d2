"""Speed of BN's backward pass: the paper's Sec. 3 formulas (custom VJP) vs JAX autodiff, with
`flax.linen.BatchNorm` alongside, side by side in one run.

Each case runs forward + backward and a gradient step on the inputs, `--steps` times inside one
`lax.scan` (so dispatch overhead does not hide the kernels), and prints compile time and steps/s
(the best of `--repeats`).

    python scripts/bench_batchnorm.py [--steps=2000] [--repeats=5]
"""

from __future__ import annotations

import time
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from absl import app, flags

from bnrepro.batchnorm import batch_norm

_STEPS = flags.DEFINE_integer("steps", 2000, "Gradient steps per timed call.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed calls per case; the best is reported.")

# (name, input shape, reduced axes): the MNIST MLP's BN layer, and a BN-Inception-like conv BN.
CASES = [
    ("dense 60x100", (60, 100), (0,)),
    ("conv 32x28x28x64", (32, 28, 28, 64), (0, 1, 2)),
]


def _ours(backward: str, axes: tuple[int, ...]) -> Callable:
    def normalize(x, gamma, beta):
        return batch_norm(x, gamma, beta, axes=axes, backward=backward)[0]

    return normalize


def _flax(axes: tuple[int, ...]) -> Callable:
    del axes  # Flax reduces all but the last axis, as our cases do.
    layer = nn.BatchNorm(use_running_average=False, momentum=0.99, epsilon=1e-5)

    def normalize(x, gamma, beta):
        variables = {
            "params": {"scale": gamma, "bias": beta},
            "batch_stats": {"mean": jnp.zeros_like(gamma), "var": jnp.ones_like(gamma)},
        }
        return layer.apply(variables, x, mutable=["batch_stats"])[0]

    return normalize


def _time_case(normalize: Callable, shape: tuple[int, ...], steps: int, repeats: int) -> tuple[float, float]:
    features = shape[-1]
    head = jax.random.normal(jax.random.key(1), shape)

    def loss(x, gamma, beta):
        return jnp.sum(jax.nn.sigmoid(normalize(x, gamma, beta)) * head)

    def step(carry, _):
        x, gamma, beta = carry
        gx, gg, gb = jax.grad(loss, argnums=(0, 1, 2))(x, gamma, beta)
        return (x - 1e-3 * gx, gamma - 1e-3 * gg, beta - 1e-3 * gb), None

    run = jax.jit(lambda carry: jax.lax.scan(step, carry, None, length=steps)[0])
    carry = (jax.random.normal(jax.random.key(0), shape), jnp.ones(features), jnp.zeros(features))
    start = time.perf_counter()
    compiled = run.lower(carry).compile()
    compile_s = time.perf_counter() - start
    jax.block_until_ready(compiled(carry))  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(compiled(carry))
        best = min(best, time.perf_counter() - start)
    return compile_s, steps / best


def main(argv: list[str]) -> None:
    del argv
    print(
        f"JAX {jax.__version__} on {jax.devices()[0].platform} ({jax.devices()[0].device_kind}); "
        f"{_STEPS.value} steps per call, best of {_REPEATS.value}"
    )
    header = f"{'case':<18} {'implementation':<26} {'compile s':>9} {'steps/s':>10} {'vs autodiff':>11}"
    print(header)
    print("-" * len(header))
    for name, shape, axes in CASES:
        steps = _STEPS.value if len(shape) == 2 else max(_STEPS.value // 100, 5)
        results = {
            "ours, paper VJP (default)": _time_case(_ours("paper", axes), shape, steps, _REPEATS.value),
            "ours, autodiff": _time_case(_ours("autodiff", axes), shape, steps, _REPEATS.value),
            "flax.linen.BatchNorm": _time_case(_flax(axes), shape, steps, _REPEATS.value),
        }
        baseline = results["ours, autodiff"][1]
        for impl, (compile_s, rate) in results.items():
            print(f"{name:<18} {impl:<26} {compile_s:>9.3f} {rate:>10.1f} {rate / baseline:>10.2f}x")


if __name__ == "__main__":
    app.run(main)
