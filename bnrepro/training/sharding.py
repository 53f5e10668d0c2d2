"""How models and mini-batches are laid out on the devices.

A run trains one model; its state is replicated on the devices and each mini-batch is split across them
(data parallelism, `data_parallel_sharding`), so BN's statistics are those of the whole mini-batch. The loop
and the data see this through a `ModelLayout`: how many models a state holds, where their data and states go,
and how a program maps over them. `OneModel` is a single run's layout; a sweep stacks several models on a leading
axis with a layout of its own (`bnrepro.sweep.group`), and the same loop trains them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import jax
import numpy as np

from bnrepro.training.state import TrainState


class ModelLayout(Protocol):
    """How the models a state holds are laid out on the devices.

    Attributes:
      size: how many models the state holds.
      batch_sharding: how each training mini-batch is split across the devices (None: not split).
      batch_shards: how many devices each mini-batch is split across (1: not split); BN's
        `model.bn.device_group_size` groups them (`bnrepro.models.create_model`).
    """

    size: int
    batch_sharding: jax.sharding.Sharding | None
    batch_shards: int

    def place_data(self, tree: Any) -> Any:
        """Data all models share (datasets), put on the devices."""

    def place_model_data(self, tree: Any) -> Any:
        """Data of each model (a single model's, or the models' stacked on a leading axis), put where the models are."""

    def place_states(self, states: Sequence[TrainState]) -> TrainState:
        """The models' states as the one state the programs take."""

    def member(self, tree: Any, index: int) -> Any:
        """Model `index`'s part of a result (a state, its losses, its evaluation)."""

    def over_models(self, function: Callable, in_axes: tuple[int | None, ...]) -> Callable:
        """`function` of one model's state mapped over the state's models (`in_axes`: 0 for per-model arguments,
        None for shared ones)."""


class OneModel:
    """A single run's layout: one model, replicated on the first `num_devices` devices (0: all of them), each
    mini-batch of `batch_size` split across them. Programs run as written, without a model axis."""

    size = 1

    def __init__(self, num_devices: int, batch_size: int):
        self.batch_sharding = data_parallel_sharding(num_devices, batch_size)
        self._replicated = (
            None if self.batch_sharding is None else self.batch_sharding.update(spec=jax.sharding.PartitionSpec())
        )

    def place_data(self, tree: Any) -> Any:
        return tree if self._replicated is None else jax.device_put(tree, self._replicated)

    place_model_data = place_data

    @property
    def batch_shards(self) -> int:
        return 1 if self.batch_sharding is None else self.batch_sharding.num_devices

    def place_states(self, states: Sequence[TrainState]) -> TrainState:
        (state,) = states
        return self.place_data(state)

    def member(self, tree: Any, index: int) -> Any:
        return tree

    def over_models(self, function: Callable, in_axes: tuple[int | None, ...]) -> Callable:
        return function


def data_parallel_sharding(num_devices: int, batch_size: int) -> jax.sharding.NamedSharding | None:
    """How a mini-batch is split across the first `num_devices` devices (0: all of them): along its leading
    axis, named "batch"; None for a single device. The batch must split evenly."""
    return _leading_axis_sharding(num_devices, "batch", batch_size, f"config.batch_size = {batch_size}")


def model_axis_sharding(num_devices: int, num_models: int) -> jax.sharding.NamedSharding | None:
    """How models stacked on a leading axis are split across the first `num_devices` devices (0: all of them):
    along that axis, named "models"; None for a single device."""
    return _leading_axis_sharding(num_devices, "models", num_models, f"a group of {num_models} models")


def _leading_axis_sharding(num_devices: int, axis: str, size: int, what: str) -> jax.sharding.NamedSharding | None:
    if num_devices > jax.device_count():
        raise ValueError(
            f"config.num_devices = {num_devices}: only {jax.device_count()} {jax.default_backend()} device(s) here "
            "(0 uses all of them)."
        )
    devices = jax.devices()[: num_devices or None]
    if len(devices) == 1:
        return None
    if size % len(devices):
        raise ValueError(f"{what}: does not split evenly across {len(devices)} devices (config.num_devices).")
    mesh = jax.sharding.Mesh(np.asarray(devices), (axis,), axis_types=(jax.sharding.AxisType.Auto,))
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(axis))
