"""What a caller adds to the training loop without the loop knowing what it is, and the hooks a config asks for.

Two kinds, both traced before training (so a bad setting stops the run before its first step):

* an `EvaluationHook` takes something from the inference network at every evaluation (e.g. the percentiles of
  a layer's preactivations for Fig. 1(b, c), `Figure1Percentiles`) and adds it to the evaluation's record in
  `metrics.jsonl`;
* a `MeasurementHook` measures the state on the latest training mini-batch every `every` steps (e.g. Santurkar et
  al.'s gradient measurements, `Diagnostics`) into a file of its own.

`from_config` builds the ones a config asks for: Figure 1's percentiles at every evaluation (`config.plot_layer`),
Santurkar et al.'s measurements every N steps (`config.diagnostics_every`) and the weights' norms every N steps
(`config.weight_norms_every`).

    loop.train_and_evaluate(config, workdir, hooks.from_config(config))

is what `python -m bnrepro.main` and the sweeps run.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple, Protocol

import jax
import ml_collections
import numpy as np

from bnrepro import diagnostics
from bnrepro.training.run_dir import DIAGNOSTICS_FILE, WEIGHT_NORMS_FILE
from bnrepro.training.state import TrainState

PERCENTILES = (15, 50, 85)  # of the plotted unit's input over test examples: Fig. 1(b, c)


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
    """The hooks a caller gives the loop (`from_config` builds a config's)."""

    evaluation: Sequence[EvaluationHook] = ()
    measurement: Sequence[MeasurementHook] = ()


NO_HOOKS = Hooks()


def collect_all(hooks: Sequence[EvaluationHook]) -> Callable[[Mapping[str, Any]], tuple] | None:
    """One `collect` for the evaluation program that runs each hook's, in order (None: there are no hooks)."""
    if not hooks:
        return None
    return lambda intermediates: tuple(hook.collect(intermediates) for hook in hooks)


def from_config(config: ml_collections.ConfigDict) -> Hooks:
    """The hooks `config` asks for: `Figure1Percentiles` if `plot_layer` is set, `Diagnostics` if
    `diagnostics_every` is, `WeightNorms` if `weight_norms_every` is."""
    evaluation = [Figure1Percentiles(config.plot_layer, config.plot_unit)] if config.plot_layer else []
    measurement: list[MeasurementHook] = []
    if config.diagnostics_every:
        measurement.append(
            Diagnostics(config.diagnostics_every, config.diagnostics_layers, config.diagnostics_step_scales)
        )
    if config.weight_norms_every:
        measurement.append(WeightNorms(config.weight_norms_every))
    return Hooks(evaluation, measurement)


def unit_percentiles(preactivation: np.ndarray, unit: int) -> dict[str, Any]:
    """Fig. 1(b, c): the 15th, 50th and 85th percentiles over examples (rows) of unit `unit`'s input
    (`np.percentile`), and the median of every unit (`p50_units`). The medians come from one sort of the columns:
    for 10,000 x 100 values numpy's vectorized sort takes ~5 ms, `np.median`'s partition per column ~12 ms, and
    this runs at every evaluation."""
    ordered = np.sort(np.asarray(preactivation, np.float32), axis=0)
    if not 0 <= unit < ordered.shape[1]:
        raise ValueError(f"config.plot_unit = {unit}: the plotted layer has {ordered.shape[1]} units.")
    percentiles = np.percentile(ordered[:, unit].astype(np.float64), PERCENTILES)
    result = {f"p{q}": float(value) for q, value in zip(PERCENTILES, percentiles)}
    middle = ordered[[(len(ordered) - 1) // 2, len(ordered) // 2]].astype(np.float64)  # the same row if N is odd
    result["p50_units"] = middle.mean(axis=0).tolist()
    return result


class Figure1Percentiles:
    """Fig. 1(b, c): at every evaluation, the {15, 50, 85}th percentiles over the test examples of one unit's
    input to its nonlinearity in layer `layer` (a module path such as "DenseBN_2", which sows its
    `preactivation`), and every unit's median (`unit_percentiles`)."""

    def __init__(self, layer: str, unit: int):
        self.layer, self.unit = layer, unit

    def collect(self, intermediates: Mapping[str, Any]) -> dict[str, jax.Array]:
        tree = intermediates
        for name in self.layer.split("/"):
            if not isinstance(tree, Mapping) or name not in tree:
                raise ValueError(f"config.plot_layer = {self.layer!r}: the model sows no preactivation at {name!r}.")
            tree = tree[name]
        if "preactivation" not in tree:
            raise ValueError(f"config.plot_layer = {self.layer!r}: the model sows no preactivation there.")
        preactivation = tree["preactivation"][0]
        preactivation = preactivation.reshape((-1, preactivation.shape[-1]))
        if self.unit >= preactivation.shape[-1]:
            raise ValueError(f"config.plot_unit = {self.unit}: {self.layer} has {preactivation.shape[-1]} units.")
        return {"preactivation": preactivation}

    def summarize(self, collected: dict[str, np.ndarray]) -> dict[str, Any]:
        return unit_percentiles(collected["preactivation"], self.unit)


class Diagnostics:
    """Santurkar et al. (2018)'s measurements (`diagnostics.measure`) of `layers` every `every` steps, on the
    mini-batch of that step, into `diagnostics.jsonl`."""

    filename = DIAGNOSTICS_FILE

    def __init__(self, every: int, layers: Sequence[str], step_scales: Sequence[float]):
        self.every, self.layers, self.step_scales = every, tuple(layers), tuple(step_scales)

    def measure(self, state: TrainState, batch: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
        try:
            return diagnostics.measure(state, batch, self.layers, self.step_scales)
        except ValueError as e:
            raise ValueError(f"config.diagnostics_layers = {self.layers!r}: {e}") from None


class WeightNorms:
    """The Frobenius norm ||W|| of every layer's weight matrix (`kernel`) every `every` steps, into
    `weight_norms.jsonl`, keyed by the layer's path (`diagnostics.kernel_norms`). Sec. 3.3's stabilization
    argument: under BN, BN((aW)u) = BN(Wu), so the gradient with respect to aW is 1/a times that with respect to
    W, and larger weights grow less."""

    filename = WEIGHT_NORMS_FILE

    def __init__(self, every: int):
        self.every = every

    def measure(self, state: TrainState, batch: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
        del batch  # the weights alone
        return diagnostics.kernel_norms(state.params)
