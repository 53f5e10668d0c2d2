"""What a caller adds to the training loop without the loop knowing what it is.

Two kinds, both compiled by the input before training (so a bad setting stops the run before its first step):

* an `EvaluationHook` takes something from the inference network at every evaluation (e.g. the percentiles of
  a layer's preactivations for Fig. 1(b, c), `bnrepro.hooks.Figure1Percentiles`) and adds it to the evaluation's
  record in `metrics.jsonl`;
* a `MeasurementHook` measures the state on the latest training mini-batch every `every` steps (e.g. Santurkar et
  al.'s gradient measurements, `bnrepro.hooks.Diagnostics`) into a file of its own.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple, Protocol

import jax
import numpy as np

from bnrepro.training.state import TrainState


class EvaluationHook(Protocol):
    def collect(self, intermediates: Mapping[str, Any]) -> dict[str, jax.Array]:
        """Inside the evaluation program: per-example arrays (leading axis: the batch's examples) taken from the
        inference network's sown intermediates. May raise a ValueError naming a bad config key."""

    def summarize(self, collected: dict[str, np.ndarray]) -> dict[str, Any]:
        """On the host: the record entries from what `collect` took from every evaluated example."""


class MeasurementHook(Protocol):
    every: int  # steps between measurements
    filename: str  # the JSONL file in the run directory its records go to

    def measure(self, state: TrainState, batch: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
        """Jittable: the record of `state` on the latest training mini-batch `batch` (preprocessed). May raise a
        ValueError naming a bad config key when traced."""


class Hooks(NamedTuple):
    """The hooks a caller gives the loop (`bnrepro.hooks.from_config` builds a config's)."""

    evaluation: Sequence[EvaluationHook] = ()
    measurement: Sequence[MeasurementHook] = ()


NO_HOOKS = Hooks()


def collect_all(hooks: Sequence[EvaluationHook]) -> Callable[[Mapping[str, Any]], tuple] | None:
    """One `collect` for the evaluation program that runs each hook's, in order (None: there are no hooks)."""
    if not hooks:
        return None
    return lambda intermediates: tuple(hook.collect(intermediates) for hook in hooks)
