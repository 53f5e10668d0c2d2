"""A sweep's spec: the `Sweep` a sweep file's `get_sweep(arg)` returns, the helpers that build its points
(`product`, `seeded`, `variant_overrides`, `seed_count`), and each point's config and run directory name.

Imports neither jax nor ray: a sweep file, a notebook or a plot reads a sweep without the trainer.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import ml_collections

from bnrepro import config_schema
from bnrepro.cli import call_file_function
from bnrepro.training.run_dir import flatten


class Sweep(NamedTuple):
    """A base config, the overrides of each point (dotted keys, e.g. "model.activation"), the test accuracy
    whose first reaching step the summary reports, and optionally each point's run directory name (else
    `point_name` of its overrides)."""

    base: ml_collections.ConfigDict
    points: list[dict[str, Any]]
    threshold: float
    names: tuple[str, ...] = ()

    def run_name(self, index: int) -> str:
        """The name of point `index`'s run directory in the sweep's workdir."""
        return self.names[index] if self.names else point_name(self.points[index])


def product(axes: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """Every combination of the axes' values, the last axis varying fastest."""
    return [dict(zip(axes, values)) for values in itertools.product(*axes.values())]


def variant_overrides(base: ml_collections.ConfigDict, variant: ml_collections.ConfigDict) -> dict[str, Any]:
    """The dotted keys whose values differ between `base` and `variant` (configs with the same keys): a config
    file's variant written as a sweep point over another of its variants."""
    before, after = flatten(base.to_dict()), flatten(variant.to_dict())
    if before.keys() != after.keys():
        raise ValueError(f"variants with different keys cannot be one sweep: {sorted(before.keys() ^ after.keys())}.")
    return {key: value for key, value in after.items() if before[key] != value}


def seeded(variants: Mapping[str, Mapping[str, Any]], seeds: int) -> tuple[list[dict[str, Any]], tuple[str, ...]]:
    """The points and run directory names of each variant (its run directory name: its overrides) with seeds 0
    to `seeds` - 1: seed 0 in the variant's own directory, seed S in its sibling `NAME_seedS` (where
    `bnrepro.figures.seed_dirs` finds them). A variant's seeds differ only in the seed, so they train as one
    vmapped group."""
    points, names = [], []
    for name, overrides in variants.items():
        for seed in range(seeds):
            points.append({**overrides, "seed": seed})
            names.append(f"{name}_seed{seed}" if seed else name)
    return points, tuple(names)


def seed_count(arg: str, default: int, sweep_file: str) -> int:
    """A sweep file's argument that is a number of seeds (`""`: `default`); anything else is a ValueError naming
    the file."""
    if not arg:
        return default
    if not (arg.isdigit() and int(arg) > 0):
        raise ValueError(f"{sweep_file}: bad argument {arg!r}; expected a number of seeds.")
    return int(arg)


def point_name(overrides: Mapping[str, Any]) -> str:
    """The run directory name of a point: its overrides as `key=value` joined by commas, in their order."""
    if not overrides:
        return "base"
    parts = [f"{key}={value:g}" if isinstance(value, float) else f"{key}={value}" for key, value in overrides.items()]
    return ",".join(part.replace("/", "_").replace(" ", "") for part in parts)


def point_config(base: ml_collections.ConfigDict, overrides: Mapping[str, Any]) -> ml_collections.ConfigDict:
    """`base` with `overrides` applied (`ConfigDict.update_from_flattened_dict`: an int learning rate in a sweep
    file is still a float); a key the base lacks is a ValueError naming the point and the key (and the key's new
    name, if it was renamed: `config_schema.check_key`)."""
    for key in overrides:
        config_schema.check_key(base, key, f"sweep point {dict(overrides)}: config.{key}")
    config = copy.deepcopy(base)
    config.update_from_flattened_dict(dict(overrides))
    return config


def load_sweep(spec: str) -> Sweep:
    """The `Sweep` of `PATH.py[:ARG]`: the file's `get_sweep(ARG)`. Sweep files import their base configs from
    the installed `configs` package, whatever the working directory; a shipped sweep file may be named as in the
    repository (`configs/sweeps/NAME.py`) from any directory (`cli.call_file_function`)."""
    sweep = call_file_function(spec, "--sweep", "get_sweep")
    if not sweep.points:
        raise ValueError(f"--sweep={spec}: the sweep has no points.")
    if sweep.names and len(sweep.names) != len(sweep.points):
        raise ValueError(f"--sweep={spec}: {len(sweep.names)} names for {len(sweep.points)} points.")
    names = [sweep.run_name(i) for i in range(len(sweep.points))]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"--sweep={spec}: points {duplicates} appear more than once.")
    return sweep


def with_overrides(sweep: Sweep, overrides: Mapping[str, Any]) -> Sweep:
    """`sweep` with `overrides` applied to every point, over the point's own values (as `--config.KEY=VALUE`
    overrides a single run's config); the run directories keep their names. A key the base config lacks is a
    ValueError naming it."""
    if not overrides:
        return sweep
    point_config(sweep.base, overrides)  # names a bad key before anything trains
    names = tuple(sweep.run_name(i) for i in range(len(sweep.points)))
    return sweep._replace(points=[{**point, **overrides} for point in sweep.points], names=names)
