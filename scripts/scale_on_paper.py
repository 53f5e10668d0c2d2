r"""Table 2's five ImageNet runs on 8, 64 and 256 chips, on paper, from the programs themselves.

    python scripts/scale_on_paper.py [--chips=8,64,256] [--images_per_core_second=240]

One replica per chip, 32 examples each (`configs/imagenet_*.py:R`, Sec. 4.2's mini-batches of 32). For each run
and number of chips N it prints:
* the global batch and the number of steps, and the epochs they make;
* the bytes every device holds: the parameters, BN's moving statistics and the optimizer state, from the state's
  shapes (`state.initializer` under `jax.eval_shape`: nothing is computed); data parallelism replicates all of it;
* the bytes a step moves in collectives, read from the data-parallel training step (`loop.host_fed_training_program`,
  the one a run compiles) compiled for 8 simulated CPU devices: the partitioner inserts the collectives as it
  splits the program, so they are in the compiled program, not in the lowered one. Each collective's operand
  bytes per device are summed, the gradient's all-reduce apart from BN's cross-replica moments: the runs normalize
  each replica's 32 examples (`virtual_batch_size` 32, no moments cross devices); the same step with global-batch
  BN gives what BN over all devices would add. Pure data parallelism's collectives have the same operands on any N
  (checked: `--check_chips` compiles for another N and compares); a ring all-reduce of B bytes over N devices
  sends (and receives) 2(N-1)/N B per device, which the table gives per N;
* the checkpoint, measured: a real state of the 224 px network (initialized here) saved with the runs' own
  `checkpoints.save` (orbax) into a temporary folder: its bytes on disk and the seconds until the save is committed;
* the input: each chip takes 32 images a step, so a host's cores must decode what its chips consume. At a chip's
  rate of R images/s, it needs R / D host cores, D the images one core decodes a second
  (`--images_per_core_second`, default: `scripts/bench_input.py`'s grain pipeline with worker processes, 239-254
  images per CPU-second, docs/performance.md). The run is input-bound where that exceeds the cores a host has
  per chip.

The figures and their reading: docs/scaling.md. The program is compiled for the CPU (no accelerator here); the
collectives are the partitioner's, the same on every platform for this sharding; `tests/test_export.py` checks the
programs GPUs and TPUs compile.
"""

from __future__ import annotations

import os

_DEVICES = 8
if "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):  # before JAX starts
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=16".strip()
# 16 simulated CPU devices: the steps are compiled for 8 of them, and for `--check_chips` (at most 16).

import importlib
import math
import re
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from absl import app, flags

from bnrepro import models
from bnrepro.cli import quiet_orbax
from bnrepro.training import checkpoints, inputs, loop
from bnrepro.training.sharding import OneModel
from bnrepro.training.state import create_train_state, initializer
from configs.imagenet_inception import TRAIN_EXAMPLES

RUNS = ("inception", "bn_baseline", "bn_x5", "bn_x30", "bn_x5_sigmoid")  # Table 2's ImageNet runs
_CHIPS = flags.DEFINE_list("chips", ["8", "64", "256"], "Numbers of chips (one replica of 32 examples each).")
_CORE_RATE = flags.DEFINE_float(
    "images_per_core_second", 240, "Training images one host core decodes and augments a second (bench_input.py)."
)
_CHIP_RATES = flags.DEFINE_list("chip_images_per_second", ["1000", "2500", "5000"], "A chip's training rates.")
_CHECK_CHIPS = flags.DEFINE_integer(
    "check_chips", 16, "Compile the global-BN step for this many devices too and compare its collectives (0: skip)."
)
COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "collective-permute", "all-to-all")
_BYTES = {"f64": 8, "f32": 4, "bf16": 2, "f16": 2, "s64": 8, "u64": 8, "s32": 4, "u32": 4, "s8": 1, "u8": 1, "pred": 1}


def run_config(run: str, chips: int) -> ml_collections.ConfigDict:
    return importlib.import_module(f"configs.imagenet_{run}").get_config(str(chips))


def tree_bytes(tree: Any) -> int:
    return sum(math.prod(x.shape) * jnp.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree))


def state_shapes(config: ml_collections.ConfigDict, batch_shards: int = 1) -> Any:
    """The shapes of `config`'s initial state (`state.initializer` under `jax.eval_shape`: nothing computed), its
    model's BN split across `batch_shards` devices."""
    model = models.create_model(config.model, config.dtype, batch_shards=batch_shards)
    images = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)  # the parameters do not depend on the image size
    return jax.eval_shape(initializer(config, model), jax.random.key(0), images)


def state_bytes(config: ml_collections.ConfigDict) -> dict[str, int]:
    """Bytes of the parameters, the BN statistics and the optimizer state of `config`'s run (on every device)."""
    state = state_shapes(config)
    return {"params": tree_bytes(state.params), "bn": tree_bytes(state.batch_stats), "opt": tree_bytes(state.opt_state)}


def compiled_step(run: str, devices: int, global_bn: bool = False) -> str:
    """The data-parallel training step of `run` on `devices` devices (one replica each), compiled: its HLO text.
    With `global_bn`, BN normalizes over the global batch rather than each replica's 32 examples."""
    if devices > jax.device_count():
        raise ValueError(f"{devices} devices: only {jax.device_count()} here (XLA_FLAGS' device count).")
    config = run_config(run, devices)
    if global_bn:
        config.model.bn.virtual_batch_size = None
    layout = OneModel(devices, config.batch_size)
    everywhere = layout.batch_sharding.update(spec=jax.sharding.PartitionSpec())
    shapes = state_shapes(config, layout.batch_shards)
    state = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=everywhere), shapes)
    batch = inputs.host_fed_batch_spec(config.batch_size, config.input.image_size, layout.batch_sharding)
    return loop.host_fed_training_program().lower(state, batch).compile().as_text()


def collective_bytes(hlo: str) -> Counter:
    """Per collective op kind, the bytes of its results (per device; an all-reduce's operand is its result)."""
    totals: Counter = Counter()
    for line in hlo.splitlines():
        found = re.search(r"=\s*(.*?)\s+(" + "|".join(COLLECTIVES) + r")(?:-start)?\(", line)
        if found:
            shapes = re.findall(r"\b(" + "|".join(_BYTES) + r")\[([\d,]*)\]", found[1])
            totals[found[2]] += sum(_BYTES[t] * math.prod(int(d) for d in dims.split(",") if d) for t, dims in shapes)
            totals[found[2] + " ops"] += 1
    return totals


def checkpoint(config: ml_collections.ConfigDict) -> tuple[int, float]:
    """A real initial state of `config`'s net saved as a run saves it: its bytes on disk and the seconds until the
    save is committed."""
    model = models.create_model(config.model, config.dtype)
    state = create_train_state(config, model, jax.random.key(0), jnp.zeros((1, 32, 32, 3), jnp.float32))
    jax.block_until_ready(state)
    with tempfile.TemporaryDirectory() as folder:
        manager = checkpoints.manager(Path(folder), config)
        start = time.perf_counter()
        checkpoints.save(manager, 1, state, config)
        manager.wait_until_finished()
        seconds = time.perf_counter() - start
        size = sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())
        manager.close()
    return size, seconds


def mib(n: float) -> str:
    return f"{n / 2**20:,.1f}"


def main(argv: list[str]) -> None:
    del argv
    quiet_orbax()
    chips = [int(c) for c in _CHIPS.value]
    architectures = {}  # what the bytes depend on: BN or not (dropout, LRN, the activation hold no state)
    for run in RUNS:
        architectures.setdefault(run_config(run, _DEVICES).model.batch_norm, run)

    print("Compiling the data-parallel training steps for 8 devices (224 px; a minute or more each) ...", flush=True)
    programs = {}
    for batch_norm, run in architectures.items():
        programs[run] = collective_bytes(compiled_step(run, _DEVICES))
        if batch_norm:  # BN over the global batch: its moments cross the devices
            programs["global BN"] = collective_bytes(compiled_step(run, _DEVICES, global_bn=True))
    if _CHECK_CHIPS.value:
        other = collective_bytes(compiled_step(architectures[True], _CHECK_CHIPS.value, global_bn=True))
        verdict = "the same as" if other == programs["global BN"] else "NOT the same as"
        print(f"Collectives of the global-BN step on {_CHECK_CHIPS.value} devices: {verdict} on 8 ({dict(other)}).")

    print("\n## Collectives per step, per device (compiled for 8 devices)\n")
    print("| program | all-reduce ops | all-reduce MiB | other collectives |")
    print("|---|---:|---:|---|")
    for name, totals in programs.items():
        others = {k: v for k, v in totals.items() if not k.startswith("all-reduce")}
        print(f"| {name} | {totals['all-reduce ops']} | {mib(totals['all-reduce'])} | {others or 'none'} |")
    bn = architectures[True]
    moments = programs["global BN"]["all-reduce"] - programs[bn]["all-reduce"]
    print(f"\nBN over the global batch adds {programs['global BN']['all-reduce ops'] - programs[bn]['all-reduce ops']} "
          f"all-reduces, {moments / 2**10:,.1f} KiB a step: {moments / programs[bn]['all-reduce']:.2%} of what "
          "the step all-reduces anyway (the gradient, and BN's moments for the moving averages).")  # fmt: skip

    print("\n## Checkpoints (measured here)\n")
    saved, held = {}, {}  # by architecture: the state does not depend on the number of chips
    for batch_norm, run in architectures.items():
        held[batch_norm] = state_bytes(run_config(run, _DEVICES))
        saved[batch_norm] = checkpoint(run_config(run, _DEVICES))
        print(f"{run}'s state: {mib(saved[batch_norm][0])} MiB on disk, committed in {saved[batch_norm][1]:.2f} s.")

    print("\n## The runs\n")
    print("| run | chips | global batch | steps | epochs | params + BN + optimizer MiB per device | "
          "all-reduce MiB per step | ring traffic MiB per device per step | checkpoint MiB (s) |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for run in RUNS:
        for n in chips:
            config = run_config(run, n)
            batch_norm = config.model.batch_norm
            reduced = programs[architectures[batch_norm]]["all-reduce"]
            (size, seconds), state = saved[batch_norm], held[batch_norm]
            epochs = config.num_steps * config.batch_size / TRAIN_EXAMPLES
            print(
                f"| {run} | {n} | {config.batch_size:,} | {config.num_steps:,} | {epochs:.0f} | "
                f"{mib(state['params'])} + {mib(state['bn'])} + {mib(state['opt'])} | {mib(reduced)} | "
                f"{mib(2 * (n - 1) / n * reduced)} | {mib(size)} ({seconds:.2f}) |"
            )

    config = run_config(architectures[True], 1)
    fed = tree_bytes(inputs.host_fed_batch_spec(config.batch_size, config.input.image_size, None))
    print(f"\n## Input: host cores each chip needs, at {_CORE_RATE.value:g} images per core-second\n")
    print(f"Each chip takes {config.batch_size} images a step from its host: {mib(fed)} MiB (the batch as the step "
          "takes it, `inputs.host_fed_batch_spec`).\n")  # fmt: skip
    print("| a chip's rate (images/s) | steps/s | host cores per chip | per 8-chip host | host-to-chip MiB/s |")
    print("|---:|---:|---:|---:|---:|")
    for rate in (float(r) for r in _CHIP_RATES.value):
        cores, steps_per_second = rate / _CORE_RATE.value, rate / config.batch_size
        print(
            f"| {rate:,.0f} | {steps_per_second:.1f} | {cores:.1f} | {8 * cores:.0f} | {mib(fed * steps_per_second)} |"
        )


if __name__ == "__main__":
    app.run(main)
