"""Many models in one program: which sweep points may share one (`check_group`), and how (`VmappedGroup`).

Points that differ only in seed and learning rate train together: their states are stacked on a leading axis and
every program is `jax.vmap`ped over it, so one dispatch trains them all: process start-up, compilation and dispatch
are paid once per group (16 points trained 3.1x faster than one after another, `scripts/bench_sweep.py`). The MNIST
MLP's steps themselves are matmul-bound, so the models axis saves no arithmetic: on one CPU core 1, 5 and 8 vmapped
MLPs train at 3,935, 4,010 and 3,605 model-steps/s (measured on a loaded box). The loop
(`bnrepro.training.loop.train_models`) is the one a single run uses; each model still writes its own run directory
as if it had trained alone.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from bnrepro import hooks
from bnrepro.training import loop, run_dir
from bnrepro.training.sharding import OneModel, model_axis_sharding
from bnrepro.training.state import TrainState

GROUP_KEYS = ("seed", "learning_rate")  # what models trained together may differ in


def check_group(configs: Sequence[ml_collections.ConfigDict]) -> None:
    """Refuses configs that cannot train as one group: they may differ in `GROUP_KEYS` only, and in the
    learning rate only when it does not decay (a decay schedule is one function, shared by the group)."""
    flat = [run_dir.flatten(run_dir.config_json(config)) for config in configs]
    for other in flat[1:]:
        changed = sorted(k for k in set(flat[0]) | set(other) if flat[0].get(k) != other.get(k) and k not in GROUP_KEYS)
        if changed:
            raise ValueError(
                f"config.{changed[0]}: models trained as a group may differ only in {list(GROUP_KEYS)}, not in "
                f"{changed}."
            )
    if len({f["learning_rate"] for f in flat}) > 1 and configs[0].lr_decay_rate < 1.0:
        raise ValueError("config.learning_rate: a group with a learning-rate decay must share the learning rate.")
    if len(configs) > 1 and "input" in configs[0]:
        raise ValueError(f"config.dataset = {configs[0].dataset!r}: a host-fed dataset trains one model at a time.")


def compatible(first: ml_collections.ConfigDict, other: ml_collections.ConfigDict) -> bool:
    """Whether `other` may train in a group with `first`."""
    try:
        check_group([first, other])
    except ValueError:
        return False
    return True


class VmappedGroup:
    """The layout (`bnrepro.training.sharding.ModelLayout`) of `size` models stacked on a leading axis, every
    program `jax.vmap`ped over it; with several devices (`num_devices`) the models are split across them, each
    device training its share on whole mini-batches."""

    batch_sharding, batch_shards = None, 1  # each model trains on whole mini-batches

    def __init__(self, size: int, num_devices: int):
        self.size = size
        self._sharding = model_axis_sharding(num_devices, size)

    def place_data(self, tree: Any) -> Any:
        if self._sharding is None:
            return tree
        return jax.device_put(tree, self._sharding.update(spec=jax.sharding.PartitionSpec()))

    def place_model_data(self, tree: Any) -> Any:
        return tree if self._sharding is None else jax.device_put(tree, self._sharding)

    def place_states(self, states: Sequence[TrainState]) -> TrainState:
        """The states stacked; the optimizer of the first serves all (the learning rates are in the optimizer
        states)."""
        shared = [s.replace(tx=states[0].tx) for s in states]
        return self.place_model_data(jax.tree.map(lambda *leaves: jnp.stack(leaves), *shared))

    def member(self, tree: Any, index: int) -> Any:
        """Model `index`'s slice of every leaf, taken on the host: indexing a stacked array split across devices
        eagerly compiles and runs a multi-device gather, which aborted the process (SIGABRT in XLA:CPU's
        dispatch) in long test sessions; a host copy runs no program."""
        return jax.tree.map(lambda x: np.asarray(x)[index], tree)

    def over_models(self, function: Callable, in_axes: tuple[int | None, ...]) -> Callable:
        return jax.vmap(function, in_axes=in_axes)


def train_group(
    configs: Sequence[ml_collections.ConfigDict], workdirs: Sequence[str | Path]
) -> list[TrainState | loop.DivergedError]:
    """Trains configs that differ only in `GROUP_KEYS` (seed, learning rate) together, each in its workdir, with
    the hooks its config asks for; resumes from their checkpoints, which must be at the same step. A model whose
    loss diverges is recorded as diverged and the others go on.

    Returns:
      Each model's final state, or the `DivergedError` that stopped it.
    """
    check_group(configs)
    if len(configs) == 1:  # a models axis of size 1 would cost ~27% of the BN MLP's steps/s: train it plainly
        layout = OneModel(configs[0].num_devices, configs[0].batch_size)
    else:
        layout = VmappedGroup(len(configs), configs[0].num_devices)
    return loop.train_models(configs, workdirs, layout, hooks.from_config(configs[0]))
