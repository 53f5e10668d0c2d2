"""Train-step time of BN-Inception with and without BN, side by side, and of the same net in PyTorch.

By default the net is `configs/fashion_table2.py`'s `bn_x5` (width x0.125, small-input stem, ReLU, no LRN, no
dropout; 28x28x1 input, batch 32, SGD with momentum); `--image_size=224` gives the paper's net (the stride-2 stem
with its first max pool, 224x224x3, 1000 classes; `--width_multiplier=1.0` for Figure 5's widths). BN is the
only difference between the variants:

* no BN: every convolution keeps its bias, nothing normalizes;
* BN, paper VJP: `model.bn.backward="paper"`, Sec. 3's backward pass as a custom VJP (the default);
* BN, XLA's conv gradients: the default, but every convolution differentiated by XLA itself
  (`convolution.GEMM_GRADIENTS_MIN_ELEMENTS` set to infinity; by default the large ones take
  `convolution.conv_with_gemm_gradients`; at the CPU scale none is large enough, so this row is the default's);
* BN, autodiff: `model.bn.backward="autodiff"`;
* BN, flax.linen.BatchNorm: Flax's layer in place of ours (the model unchanged, its `norm` swapped);
* PyTorch eager (and `torch.compile` with `--torch_compile`; its first step compiles for minutes), no BN and BN:
  the same net (`torch_bn_inception`, parameter counts checked equal) and step, when torch is importable
  (it is not a dependency: `pip install --target DIR torch`, then `--torch_path=DIR`).

Each JAX variant trains through the loop's on-device steps (`OnDeviceSteps.train`) with one step per dispatch, as
the config trains on CPU (XLA:CPU runs convolutions several times slower inside a while loop), on random uint8 images.
Compile time is reported apart; then the variants take turns, `--steps` steps each, `--repeats` rounds, so that
load from other processes hits all of them alike, and each one's best round is reported (its median round beside
it: on a noisy machine compare both). The process is pinned to `--cpu_cores` cores before JAX starts, and malloc
keeps freed memory (`bnrepro.cpu.keep_freed_memory`), as `bnrepro.main` and a sweep's workers do, in one arena
for the 224 px net.

    python scripts/bench_inception.py [--steps=10] [--repeats=10] [--cpu_cores=1] [--torch_path=DIR]
    python scripts/bench_inception.py --cpu_cores=0 --image_size=224 --width_multiplier=1.0 --batch_size=8

Results, the targets they were measured against, what was kept, what was tried and where the time goes:
docs/performance.md#bn-inception-train-step.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import math
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from bnrepro import convolution, data, models
from bnrepro.cpu import keep_freed_memory, use_cpu_cores
from bnrepro.models import inception
from bnrepro.training.inputs import OnDeviceData
from bnrepro.training.loop import OnDeviceSteps
from bnrepro.training.sharding import OneModel
from bnrepro.training.state import create_train_state

_CONFIG = config_flags.DEFINE_config_file(
    "config", "configs/fashion_table2.py:bn_x5", "The net's config, BN switched per variant (run from the repo root)."
)
_STEPS = flags.DEFINE_integer("steps", 10, "Steps per variant in each timed round.")
_REPEATS = flags.DEFINE_integer("repeats", 10, "Timed rounds, the variants interleaved; the best is reported.")
_CPU_CORES = flags.DEFINE_integer("cpu_cores", 1, "CPU cores to run on (0 = all).")
_WIDTH = flags.DEFINE_float("width_multiplier", 0.125, "Width multiplier of the net (the config's: 0.125).")
_BATCH = flags.DEFINE_integer("batch_size", 32, "Mini-batch size (the config's: 32).")
_IMAGE_SIZE = flags.DEFINE_integer(
    "image_size",
    28,
    "28: the config's net (small-input stem, 28x28x1, 10 classes); 224: the paper's (224x224x3, 1000).",
)
_TORCH_PATH = flags.DEFINE_string("torch_path", "", "A directory holding torch (pip install --target DIR torch).")
_TORCH_COMPILE = flags.DEFINE_boolean("torch_compile", False, "Add torch.compile rows (each compiles for minutes).")

NUM_EXAMPLES = 4096  # random 28x28 uint8 images, the training and the (unused) test set (224 px: 4 batches)
NO_BN = "no BN"
TORCH_EAGER_BN = "PyTorch eager, BN"


class FlaxBatchNorm(nn.Module):
    """`flax.linen.BatchNorm` behind the interface of `bnrepro.layers.BatchNorm` (its momentum and eps)."""

    momentum: float = 0.99
    eps: float = 1e-5

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        return nn.BatchNorm(use_running_average=not train, momentum=self.momentum, epsilon=self.eps, name="bn")(x)


def _config(batch_norm: bool, backward: str) -> ml_collections.ConfigDict:
    """`--config` at `--width_multiplier` and `--batch_size`, with BN on or off."""
    config = _CONFIG.value.copy_and_resolve_references()
    with config.unlocked():
        config.batch_size = _BATCH.value
        config.model.width_multiplier = _WIDTH.value
        config.model.batch_norm = batch_norm
        config.model.bn.backward = backward
        if _IMAGE_SIZE.value != 28:
            config.model.small_input = False
            config.model.num_classes = 1000
            config.population_batches = 1  # 4 mini-batches of random images; evaluation is not timed
    return config


@contextlib.contextmanager
def xla_conv_gradients() -> Iterator[None]:
    """While in it, `convolution.conv_general_dilated` leaves every convolution's gradients to XLA."""
    default = convolution.GEMM_GRADIENTS_MIN_ELEMENTS
    convolution.GEMM_GRADIENTS_MIN_ELEMENTS = math.inf
    try:
        yield
    finally:
        convolution.GEMM_GRADIENTS_MIN_ELEMENTS = default


class Runner:
    """One variant, compiled: `run(steps)` trains that many steps, one dispatch each (the training loop's
    `OnDeviceSteps.train`, which starts a new epoch at each epoch's end), and blocks. With `xla_gradients`, the
    step is traced and compiled inside `xla_conv_gradients`."""

    def __init__(
        self,
        config: ml_collections.ConfigDict,
        splits: data.Splits,
        flax_bn: bool = False,
        xla_gradients: bool = False,
    ):
        with xla_conv_gradients() if xla_gradients else contextlib.nullcontext():
            self._compile(config, splits, flax_bn)

    def _compile(self, config: ml_collections.ConfigDict, splits: data.Splits, flax_bn: bool) -> None:
        model = models.create_model(config.model, config.dtype)
        if flax_bn:  # the model unchanged, Flax's layer as its BN layer
            bn = config.model.bn
            model = model.clone(norm=functools.partial(FlaxBatchNorm, momentum=bn.momentum, eps=bn.eps))
        layout = OneModel(config.num_devices, config.batch_size)
        data = OnDeviceData(config, layout, splits)
        self._input = OnDeviceSteps(config, layout, data)
        state = create_train_state(config, model, jax.random.key(0), data.example_images())
        self._state = layout.place_states([state])
        self._input.start(self._state)
        chunk = self._input.train(self._state, 1)
        self._state, self.compile_s = chunk.state, chunk.compile_seconds
        self.num_params = sum(p.size for p in jax.tree.leaves(state.params))

    def run(self, steps: int) -> None:
        for _ in range(steps):
            self._state = self._input.train(self._state, 1).state
        jax.block_until_ready(self._state)


def torch_bn_inception(
    torch: Any, model: inception.BNInception, bn: ml_collections.ConfigDict, in_channels: int
) -> Any:
    """`model`'s BN-Inception (`bnrepro.models.inception.BNInception`: separable stem, Figure 5's modules,
    global average pool, linear classifier) as a PyTorch NCHW module, layer for layer. Padding is PyTorch's
    symmetric k // 2 where XLA's SAME pads one more on the far side of a stride-2 layer (same shapes and FLOPs)."""
    nn, width = torch.nn, model.width

    def conv(cin: int, cout: int, k: int, stride: int = 1) -> Any:
        layers = [nn.Conv2d(cin, cout, k, stride, k // 2, bias=not model.batch_norm)]
        if model.batch_norm:  # PyTorch's momentum is the new batch's weight, ours the old value's
            layers.append(nn.BatchNorm2d(cout, bn.eps, 1 - bn.momentum))
        return nn.Sequential(*layers, nn.ReLU())

    class Module(nn.Module):  # one row of the table, as `InceptionModule`
        def __init__(self, spec: inception.ModuleSpec, cin: int):
            super().__init__()
            s, c = spec, width
            self.branch_1x1 = conv(cin, c(s.ch_1x1), 1) if s.ch_1x1 else None
            self.branch_3x3 = nn.Sequential(
                conv(cin, c(s.ch_3x3_reduce), 1), conv(c(s.ch_3x3_reduce), c(s.ch_3x3), 3, s.stride)
            )
            self.branch_double_3x3 = nn.Sequential(
                conv(cin, c(s.ch_double_3x3_reduce), 1),
                conv(c(s.ch_double_3x3_reduce), c(s.ch_double_3x3), 3),
                conv(c(s.ch_double_3x3), c(s.ch_double_3x3), 3, s.stride),
            )
            pool = (
                nn.AvgPool2d(3, s.stride, 1, count_include_pad=False)
                if s.pool == "avg"
                else nn.MaxPool2d(3, s.stride, 1)
            )
            self.branch_pool = nn.Sequential(pool, conv(cin, c(s.pool_proj), 1)) if s.pool_proj else pool
            self.out_channels = (c(s.ch_1x1) if s.ch_1x1 else 0) + c(s.ch_3x3) + c(s.ch_double_3x3)
            self.out_channels += c(s.pool_proj) if s.pool_proj else cin

        def forward(self, x: Any) -> Any:
            branches = [self.branch_1x1(x)] if self.branch_1x1 is not None else []
            return torch.cat(branches + [self.branch_3x3(x), self.branch_double_3x3(x), self.branch_pool(x)], 1)

    multiplier = max(min(model.stem_depth_multiplier, width(64) // in_channels), 1)
    stem_stride = 1 if model.small_input else 2
    stem = [
        nn.Conv2d(in_channels, in_channels * multiplier, 7, stem_stride, 3, groups=in_channels, bias=False),
        *conv(in_channels * multiplier, width(64), 1),
    ]
    stem += [] if model.small_input else [nn.MaxPool2d(3, 2, 1)]
    stem += [conv(width(64), width(64), 1), conv(width(64), width(192), 3), nn.MaxPool2d(3, 2, 1)]
    layers, channels = stem, width(192)
    for spec in inception.figure_5_modules(model.pool_proj_4cd):
        layers.append(Module(spec, channels))
        channels = layers[-1].out_channels
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, model.num_classes)]
    return nn.Sequential(*layers)


class TorchRunner:
    """The same net and step (SGD with momentum on random uint8 images scaled to [0, 1]) in PyTorch, eager or
    under `torch.compile`; `compile_s` is the first step's time."""

    def __init__(self, torch: Any, config: ml_collections.ConfigDict, images: np.ndarray, compiled: bool):
        self._torch = torch
        torch.set_num_threads(len(os.sched_getaffinity(0)))
        pixels = torch.from_numpy(images if images.ndim == 4 else images[..., None]).permute(0, 3, 1, 2)
        net = torch_bn_inception(torch, models.create_model(config.model), config.model.bn, pixels.shape[1])
        self.num_params = sum(p.numel() for p in net.parameters())
        self._optimizer = torch.optim.SGD(net.parameters(), lr=config.learning_rate, momentum=0.9)
        self._net = torch.compile(net) if compiled else net
        self._batches = pixels.contiguous().split(config.batch_size)
        self._labels = torch.randint(0, config.model.num_classes, (config.batch_size,))
        self._step = 0
        start = time.perf_counter()
        self.run(1)
        self.compile_s = time.perf_counter() - start

    def run(self, steps: int) -> None:
        torch = self._torch
        for _ in range(steps):
            batch = self._batches[self._step % len(self._batches)].float() * (1.0 / 255.0)
            self._optimizer.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(self._net(batch), self._labels).backward()
            self._optimizer.step()
            self._step += 1


def round_seconds(runners: dict[str, Runner | TorchRunner], steps: int, repeats: int) -> dict[str, list[float]]:
    """Wall time of `steps` steps per variant in each of `repeats` rounds in which the variants take turns."""
    seconds: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(repeats):
        for name, runner in runners.items():
            start = time.perf_counter()
            runner.run(steps)
            seconds[name].append(time.perf_counter() - start)
    return seconds


def markdown_table(compile_s: dict[str, float], rounds: dict[str, list[float]], steps: int) -> str:
    """The results as a markdown table of each variant's best round (and its median round's ms/step): overhead is
    relative to the same framework and mode's no-BN net, speed to PyTorch eager's BN net (when measured; > 1 is
    faster), both of best rounds."""
    seconds = {name: min(times) for name, times in rounds.items()}
    columns = [
        "variant",
        "compile (s)",
        "steps/s",
        "ms/step",
        "median ms/step",
        "overhead vs no BN",
        "speed vs PyTorch eager BN",
    ]
    rows = ["| " + " | ".join(columns) + " |", "| --- |" + " ---: |" * (len(columns) - 1)]
    for name, total in seconds.items():
        baseline = name.rsplit(", ", 1)[0] + f", {NO_BN}" if name.startswith("PyTorch") else NO_BN
        overhead = 100 * (total / seconds[baseline] - 1)
        speed = f"{seconds[TORCH_EAGER_BN] / total:.2f}x" if TORCH_EAGER_BN in seconds else "-"
        rows.append(
            f"| {name} | {compile_s[name]:.1f} | {steps / total:.1f} | {1e3 * total / steps:.1f} "
            f"| {1e3 * statistics.median(rounds[name]) / steps:.1f} | {overhead:+.1f}% | {speed} |"
        )
    return "\n".join(rows)


def main(argv: list[str]) -> None:
    del argv
    # As bnrepro.main does, and one arena for the paper's net, whose steps' temporaries exceed 64 MiB (PyTorch's
    # rows run with it too).
    size = _IMAGE_SIZE.value
    keep_freed_memory(one_arena=size != 28)
    use_cpu_cores(_CPU_CORES.value)
    rng = np.random.default_rng(0)
    shape = (size, size) if size == 28 else (size, size, 3)
    count = NUM_EXAMPLES if size == 28 else 4 * _BATCH.value
    random = data.Split(rng.integers(0, 256, (count, *shape), dtype=np.uint8), rng.integers(0, 10, count, np.int32))
    splits = data.Splits(train=random, validation=None, test=random)
    variants: dict[str, Callable[[], Runner | TorchRunner]] = {
        NO_BN: lambda: Runner(_config(False, "paper"), splits),
        "BN, paper VJP (default)": lambda: Runner(_config(True, "paper"), splits),
        "BN, XLA's conv gradients": lambda: Runner(_config(True, "paper"), splits, xla_gradients=True),
        "BN, autodiff": lambda: Runner(_config(True, "autodiff"), splits),
        "BN, flax.linen.BatchNorm": lambda: Runner(_config(True, "autodiff"), splits, flax_bn=True),
    }
    if _TORCH_PATH.value:
        sys.path.insert(0, _TORCH_PATH.value)
    if importlib.util.find_spec("torch") is not None:
        import torch  # Only here: torch is not a dependency.

        modes = {"eager": False} | ({"torch.compile": True} if _TORCH_COMPILE.value else {})
        for mode, compiled in modes.items():
            for batch_norm in (False, True):
                name = f"PyTorch {mode}, {'BN' if batch_norm else 'no BN'}"
                variants[name] = functools.partial(
                    TorchRunner, torch, _config(batch_norm, "paper"), random.images, compiled
                )
    runners = {name: make() for name, make in variants.items()}
    for name, runner in runners.items():
        ours = runners[NO_BN if name.endswith(NO_BN) else "BN, autodiff"].num_params
        print(f"{name}: {runner.num_params:,} parameters")
        if runner.num_params != ours:
            raise ValueError(f"{name}: not our net ({runner.num_params:,} parameters, ours {ours:,}).")
    print()
    for runner in runners.values():
        runner.run(3)  # warm-up
    rounds = round_seconds(runners, _STEPS.value, _REPEATS.value)
    print(
        f"JAX {jax.__version__} on {jax.default_backend()}, {_CPU_CORES.value or 'all'} core(s); BN-Inception "
        f"x{_WIDTH.value}, {'small input, 28x28x1' if size == 28 else f'{size}x{size}x3'}, batch {_BATCH.value}; "
        f"{_STEPS.value} steps per variant and round, best of {_REPEATS.value} interleaved rounds; "
        f"load average {os.getloadavg()[0]:.1f}\n"
    )
    print(markdown_table({name: r.compile_s for name, r in runners.items()}, rounds, _STEPS.value))


if __name__ == "__main__":
    app.run(main)
