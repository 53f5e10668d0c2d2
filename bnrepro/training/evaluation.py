"""Evaluation of the inference network (Algorithm 2), whatever the data's placement: `evaluate` runs the compiled
evaluation step over an iterator of test batches, with BN's fixed statistics either the moving averages or
Algorithm 2's population statistics of an iterator of training mini-batches (`population_statistics`).

The loop (`bnrepro.training.loop`) compiles the programs these run, mapped over the models a layout holds; the
data (`bnrepro.training.inputs`) yield the batches, on the devices: test batches of one shape, the last padded
with `mask` marking its real examples.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple

import jax
import numpy as np

from bnrepro.training.sharding import ModelLayout
from bnrepro.training.state import TrainState


class Evaluation(NamedTuple):
    """One model's `steps.eval_step` sums over the evaluated examples, and what the hooks collected from each."""

    sums: dict[str, Any]
    collected: Any


def population_statistics(
    moments: Callable[[TrainState, Mapping[str, jax.Array]], Any],
    population: Callable[[list[Any]], Any],
    state: TrainState,
    batches: Iterable[Mapping[str, jax.Array]],
) -> Any:
    """Algorithm 2, steps 8-9: every BN layer's E[x] = E_B[mu_B] and Var[x] = m/(m-1) E_B[var_B] over the
    training mini-batches `batches`, with `state`'s parameters, as `batch_stats`: `moments` (`steps.batch_moments`,
    compiled) of each mini-batch, then `population` (`steps.population`, compiled) of them all. A net without BN
    has none: its (empty) `batch_stats` are returned, and no mini-batch is read."""
    if not state.batch_stats:
        return state.batch_stats
    return population([moments(state, batch) for batch in batches])


def evaluate(
    eval_step: Callable[[TrainState, Any, Mapping[str, jax.Array]], tuple[Any, Any]],
    state: TrainState,
    batch_stats: Any,
    batches: Iterable[Mapping[str, jax.Array]],
    layout: ModelLayout,
) -> list[Evaluation]:
    """The inference network of each model `layout` holds (Algorithm 2, step 11: BN with the fixed `batch_stats`)
    on every test batch of `batches`: `eval_step` (`steps.eval_step`, compiled) of each, its sums added up over the
    batches, what the hooks collected kept for the real examples (`mask`) in order. A batch's results are read
    back while the next batch runs, so the devices hold two batches at most. Each example's output depends on that
    example only (the inference network), so the results do not depend on how the test set is batched."""
    results, pending = [], []  # (sums, collected) and the batch's mask: on the host, still on the devices
    for batch in batches:
        pending.append((eval_step(state, batch_stats, batch), batch.get("mask")))
        if len(pending) == 2:
            output, mask = pending.pop(0)
            results.append((jax.device_get(output), mask))
    results += [(jax.device_get(output), mask) for output, mask in pending]
    evaluations = []
    for i in range(layout.size):
        sums = jax.tree.map(lambda *v: np.sum(v), *[layout.member(output[0], i) for output, _ in results])
        collected = [_real_rows(layout.member(output[1], i), mask) for output, mask in results]
        evaluations.append(Evaluation(sums, jax.tree.map(lambda *v: np.concatenate(v), *collected)))
    return evaluations


def _real_rows(collected: Any, mask: jax.Array | None) -> Any:
    """The rows of the real examples in what a hook collected from a batch (k rows per example, in order: a conv
    layer's locations); all of them without a mask. The mask is read back only when there is something to cut."""
    if mask is None or not jax.tree.leaves(collected):
        return collected
    real = np.asarray(mask, bool)
    return jax.tree.map(lambda x: x[np.repeat(real, len(x) // len(real))], collected)
