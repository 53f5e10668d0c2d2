"""Training speed of the Figure 1 MLP (batch 60, real MNIST), side by side in one run:

* ours: the training loop's on-device steps (`OnDeviceSteps.train`), `--steps_per_dispatch` SGD steps fused with
  `lax.scan`, mini-batches drawn on the device; the BN net with the paper's backward pass (the default) and
  with autodiff, and the baseline;
* a plain per-step `jax.jit` loop over the same net with `flax.linen.BatchNorm`, fed from host memory, as
  the Flax examples train;
* PyTorch eager (`nn.BatchNorm1d`), when torch is installed.

Compile time is reported apart from steps/s (best of `--repeats`). The process is pinned to `--cpu_cores`
cores before JAX starts, as `bnrepro.main` does (for this net one core is fastest).

    python scripts/bench_mnist.py [--steps=5000] [--cpu_cores=1]
"""

from __future__ import annotations

import importlib.util
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags
from flax_mnist_mlp import BATCH, LR, FlaxMLP, flat_images, train_step_fn  # scripts/, next to this file
from ml_collections import config_flags

from bnrepro import data, models
from bnrepro.cpu import use_cpu_cores
from bnrepro.training.inputs import OnDeviceData
from bnrepro.training.loop import OnDeviceSteps
from bnrepro.training.sharding import OneModel
from bnrepro.training.state import create_train_state

_CONFIG = config_flags.DEFINE_config_file(
    "config", "configs/mnist_mlp.py:bn", "The Figure 1 config (run from the repo root)."
)
_STEPS = flags.DEFINE_integer("steps", 5000, "Steps per timed repetition.")
_STEPS_PER_DISPATCH = flags.DEFINE_integer("steps_per_dispatch", 1000, "Steps fused per program in our loop.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed repetitions; the best is reported.")
_CPU_CORES = flags.DEFINE_integer("cpu_cores", 1, "CPU cores to run on (0 = all).")


def _best_rate(run_steps, steps: int, repeats: int) -> float:
    """Best steps/s of `run_steps(steps)` (which must block until done) over `repeats` runs."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run_steps(steps)
        best = min(best, time.perf_counter() - start)
    return steps / best


def bench_ours(batch_norm: bool, backward: str = "paper") -> tuple[float, float]:
    """Our training loop's input on `--config` with or without BN: (compile seconds, steps/s). The steps run as
    `bnrepro.training.loop` runs them: `OnDeviceSteps.train`, `--steps_per_dispatch` steps per program, a new
    epoch's permutation at each epoch's end."""
    config = _CONFIG.value.copy_and_resolve_references()
    config.model.batch_norm, config.model.bn.backward = batch_norm, backward
    config.steps_per_dispatch = _STEPS_PER_DISPATCH.value
    model = models.create_model(config.model, config.dtype)
    layout = OneModel(config.num_devices, config.batch_size)
    data = OnDeviceData(config, layout)
    inputs = OnDeviceSteps(config, layout, data)
    state = layout.place_states([create_train_state(config, model, jax.random.key(0), data.example_images())])
    inputs.start(state)

    def run_steps(steps: int) -> float:
        """Trains `steps` steps; returns the seconds spent compiling."""
        nonlocal state
        done, compile_s = 0, 0.0
        while done < steps:
            chunk = inputs.train(state, min(config.steps_per_dispatch, steps - done))
            state, done, compile_s = chunk.state, done + chunk.losses.shape[-1], compile_s + chunk.compile_seconds
        jax.block_until_ready(state)
        return compile_s

    compile_s = run_steps(config.steps_per_dispatch)  # compiles, and warms up
    return compile_s, _best_rate(run_steps, _STEPS.value, _REPEATS.value)


def bench_flax_per_step(splits: data.Splits) -> tuple[float, float]:
    """A per-step `jax.jit` loop with `flax.linen.BatchNorm`, batches fed from host memory
    (`scripts/flax_mnist_mlp.py`'s net and step)."""
    images, labels = flat_images(splits.train), splits.train.labels
    model, tx = FlaxMLP(), optax.sgd(LR)
    variables = model.init(jax.random.key(0), jnp.zeros((BATCH, 784)), train=False)
    params, batch_stats = variables["params"], variables["batch_stats"]
    opt_state = tx.init(params)
    step = train_step_fn(model, tx)

    start = time.perf_counter()
    compiled = step.lower(params, batch_stats, opt_state, images[:BATCH], labels[:BATCH]).compile()
    compile_s = time.perf_counter() - start
    order = np.random.default_rng(0).permutation(len(labels))
    position = 0

    def run_steps(steps: int) -> None:
        nonlocal params, batch_stats, opt_state, position
        for _ in range(steps):
            if position + BATCH > len(order):
                position = 0
            index = order[position : position + BATCH]
            position += BATCH
            params, batch_stats, opt_state = compiled(params, batch_stats, opt_state, images[index], labels[index])
        jax.block_until_ready(params)

    run_steps(100)  # warm-up
    return compile_s, _best_rate(run_steps, _STEPS.value, _REPEATS.value)


def bench_torch(splits: data.Splits) -> tuple[float, float]:
    """PyTorch eager, the same net with `nn.BatchNorm1d`, single-threaded to match one core."""
    import torch

    torch.set_num_threads(max(_CPU_CORES.value, 1))
    images = torch.from_numpy(splits.train.images.reshape(-1, 784).astype(np.float32) / 255.0)
    labels = torch.from_numpy(splits.train.labels.astype(np.int64))
    layers = []
    for width_in in (784, 100, 100):
        layers += [torch.nn.Linear(width_in, 100, bias=False), torch.nn.BatchNorm1d(100), torch.nn.Sigmoid()]
    net = torch.nn.Sequential(*layers, torch.nn.Linear(100, 10))
    optimizer = torch.optim.SGD(net.parameters(), lr=LR)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    position = 0

    def run_steps(steps: int) -> None:
        nonlocal position
        for _ in range(steps):
            if position + BATCH > len(order):
                position = 0
            index = order[position : position + BATCH]
            position += BATCH
            optimizer.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(net(images[index]), labels[index]).backward()
            optimizer.step()

    run_steps(100)  # warm-up
    return 0.0, _best_rate(run_steps, _STEPS.value, _REPEATS.value)


def main(argv: list[str]) -> None:
    del argv
    use_cpu_cores(_CPU_CORES.value)
    splits = data.load_dataset("mnist")
    print(
        f"JAX {jax.__version__} on {jax.default_backend()}, {_CPU_CORES.value or 'all'} core(s); MLP 784-100x3-10, "
        f"batch {BATCH}; {_STEPS.value} steps per repetition, best of {_REPEATS.value}"
    )
    cases = {
        "ours, BN (paper VJP, default)": lambda: bench_ours(batch_norm=True),
        "ours, BN (autodiff)": lambda: bench_ours(batch_norm=True, backward="autodiff"),
        "ours, baseline (no BN)": lambda: bench_ours(batch_norm=False),
        "per-step jit, flax.linen.BatchNorm": lambda: bench_flax_per_step(splits),
    }
    if importlib.util.find_spec("torch") is not None:
        cases["PyTorch eager, nn.BatchNorm1d"] = lambda: bench_torch(splits)
    results = {name: case() for name, case in cases.items()}
    reference = results["per-step jit, flax.linen.BatchNorm"][1]
    header = f"{'loop':<36} {'compile s':>9} {'steps/s':>9} {'vs flax per-step':>16}"
    print(header)
    print("-" * len(header))
    for name, (compile_s, rate) in results.items():
        print(f"{name:<36} {compile_s:>9.2f} {rate:>9.0f} {rate / reference:>15.2f}x")


if __name__ == "__main__":
    app.run(main)
