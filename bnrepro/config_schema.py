"""What a training config may contain: the keys `bnrepro.training` reads, their types and allowed values.

These keys are the contract between config files, sweeps and notebooks. `validate` checks a config against
it before anything is trained, and names the offending key in a ValueError: an unknown or missing key, a
wrong type, or an impossible value (a batch size of 0, negative steps, an unknown activation or dataset).
Keys under `model` other than `model.name` and `model.bn` are the attributes of the model class `model.name`
selects; `model.bn` holds the options of every BatchNorm layer (`bnrepro.models.bn_config`).
A key renamed since runs were made (`RENAMED_KEYS`, e.g. `model.bn_momentum`) is refused with its new name.
`input` holds the ImageNet input pipeline's settings; it is required for `dataset="imagenet2012"` and refused
otherwise (MNIST-size datasets live on the device and have no pipeline to configure).
`dtype` is the compute dtype (`layers.COMPUTE_DTYPES`), which `models.create_model` gives the model.
`profile_steps` is "" (off) or "START:END" (`profile_range`): a range that starts at or after `num_steps` is
refused (nothing would be traced), an END beyond `num_steps` is clipped to it (the trace ends with the run).

A config file's `get_config` returns a typed, locked ConfigDict, so an override of a key it lacks (`check_key`) or
of the wrong type is refused as it is applied. Each run is validated once, before anything trains: a single run,
from the command line or a notebook, by `bnrepro.training.loop.train_and_evaluate`; every sweep point by
`bnrepro.sweep.plan.check_points`, as the sweep starts, before Ray does. This module imports JAX only when it
checks the model keys (their types come from the model classes), so that a sweep's points can be read without it.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import math
import re
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import ml_collections

from bnrepro import data
from bnrepro.data import imagenet

EVAL_STATISTICS = ("population", "moving_average")
OPTIMIZERS = ("sgd", "rmsprop")
DATASETS = (*data.DATASET_NAMES, imagenet.DATASET_NAME)  # the last one is read from disk by a host pipeline


class Field(NamedTuple):
    """The type of a config value and, optionally, a check returning what is wrong with it (or None)."""

    type: type | tuple[type, ...]
    check: Callable[[Any], str | None] | None = None


def _one_of(allowed: tuple[str, ...]) -> Callable[[Any], str | None]:
    return lambda v: None if v in allowed else f"expected one of {list(allowed)}"


def _at_least(low: int) -> Callable[[Any], str | None]:
    return lambda v: None if v >= low else f"must be >= {low}"


def _positive_finite(v: float) -> str | None:
    return None if math.isfinite(v) and v > 0 else "must be a positive finite number"


def _non_negative(v: float) -> str | None:
    return None if math.isfinite(v) and v >= 0.0 else "must be >= 0"


def _in_unit_interval(v: float) -> str | None:
    return None if 0.0 <= v < 1.0 else "must lie in [0, 1)"


def _positive_floats(v: tuple) -> str | None:
    ok = all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0 for x in v)
    return None if ok else "must be a tuple of positive finite numbers"


def _names(v: tuple) -> str | None:
    return None if all(isinstance(x, str) and x for x in v) else "must be a tuple of non-empty strings"


def _positive_ints(v: tuple) -> str | None:
    ok = all(isinstance(w, int) and not isinstance(w, bool) and w >= 1 for w in v)
    return None if ok else "must be a tuple of positive ints"


_STEP_RANGE = re.compile(r"(\d+):(\d+)")


def _step_range(v: str) -> str | None:
    match = _STEP_RANGE.fullmatch(v)
    ok = v == "" or (match is not None and int(match[1]) < int(match[2]))
    return None if ok else "must be START:END with 0 <= START < END (steps), or '' (off)"


TRAINING_FIELDS: Mapping[str, Field] = {
    "model": Field(ml_collections.ConfigDict),
    "dataset": Field(str, _one_of(DATASETS)),
    "data_source": Field(str, _one_of(data.SOURCES)),
    "data_dir": Field(str),
    "validation_size": Field(int, _at_least(0)),
    "num_steps": Field(int, _at_least(1)),
    "batch_size": Field(int, _at_least(1)),
    "optimizer": Field(str, _one_of(OPTIMIZERS)),
    "learning_rate": Field(float, _positive_finite),
    "momentum": Field(float, _in_unit_interval),
    "weight_decay": Field(float, _non_negative),
    "lr_decay_rate": Field(float, lambda v: None if 0.0 < v <= 1.0 else "must lie in (0, 1]"),
    "lr_decay_steps": Field(int, _at_least(1)),
    "grad_clip_norm": Field(float, _non_negative),
    "seed": Field(int),
    "eval_every": Field(int, _at_least(1)),
    "eval_examples": Field(int, _at_least(0)),
    "eval_train_examples": Field(int, _at_least(0)),
    "eval_statistics": Field(str, _one_of(EVAL_STATISTICS)),
    "population_batches": Field(int, _at_least(1)),
    "plot_layer": Field(str),
    "plot_unit": Field(int, _at_least(0)),
    "diagnostics_every": Field(int, _at_least(0)),
    "diagnostics_layers": Field(tuple, _names),
    "diagnostics_step_scales": Field(tuple, _positive_floats),
    "weight_norms_every": Field(int, _at_least(0)),
    "steps_per_dispatch": Field(int, _at_least(1)),
    "checkpoint_every": Field(int, _at_least(1)),
    "checkpoint_every_seconds": Field(int, _at_least(0)),
    "cpu_cores": Field(int, _at_least(0)),
    "num_devices": Field(int, _at_least(0)),
    "profile_steps": Field(str, _step_range),
    "dtype": Field(str, lambda v: _one_of(_model_side().compute_dtypes)(v)),  # the models' layers define them
}

# `config.input`, the host-fed ImageNet pipeline (`bnrepro.data.imagenet.train_dataset` / `eval_dataset`).
INPUT_FIELDS: Mapping[str, Field] = {
    "image_size": Field(int, _at_least(16)),
    "shuffle": Field(str, _one_of(imagenet.SHUFFLE_MODES)),
    "distortion": Field(str, _one_of(tuple(imagenet.DISTORTIONS))),
    "train_split": Field(str),
    "eval_split": Field(str),
    "eval_batch_size": Field(int, _at_least(1)),
    "read_threads": Field(int, _at_least(0)),
    "prefetch_buffer_size": Field(int, _at_least(0)),
    "worker_count": Field(int, _at_least(0)),
}


class _ModelSide(NamedTuple):
    """The contract's keys under `config.model`, which the model classes define (`_model_side`)."""

    models: Any  # the `bnrepro.models` module
    compute_dtypes: tuple[str, ...]
    field_checks: Mapping[str, Callable[[Any], str | None]]
    bn_fields: Mapping[str, Field]
    renamed_keys: Mapping[str, str]
    implicit_in_old_runs: Mapping[str, Any]


@functools.cache
def _model_side() -> _ModelSide:
    """The model keys' checks and types, built on first use: they import the models, and with them JAX."""
    # Imported here, not at the top: JAX only when a model is checked.
    from bnrepro import batchnorm, layers, models
    from bnrepro.models.inception import FIGURE_5_MODULES
    from bnrepro.models.lstm import SEQUENCES

    # Checks of model attributes by name, shared by every model that has them; their types come from the class.
    field_checks = {
        "activation": _one_of(tuple(layers.ACTIVATIONS)),
        "hidden": _positive_ints,
        "num_classes": _at_least(1),
        "init_std": _positive_finite,
        "dropout_rate": _in_unit_interval,
        "hidden_size": _at_least(1),
        "sequence": _one_of(SEQUENCES),
        "gamma_init": _positive_finite,
        "h0_noise": _non_negative,
        "num_modules": lambda v: (
            None if v is None or 1 <= v <= len(FIGURE_5_MODULES) else f"must lie in [1, {len(FIGURE_5_MODULES)}]"
        ),
    }
    # The BatchNorm options, `config.model.bn.*`: every `models.BN_OPTIONS`, typed by `layers.BatchNorm`'s defaults.
    bn_checks = {
        "momentum": lambda v: None if 0.0 <= v <= 1.0 else "must lie in [0, 1]",
        "eps": _positive_finite,
        "axis_name": lambda v: None if v is None or v else "must be a non-empty string or None",
        "virtual_batch_size": lambda v: None if v is None or v >= 1 else "must be >= 1 or None",
        "device_group_size": lambda v: None if v is None or v >= 1 else "must be >= 1 or None",
        "backward": _one_of(typing.get_args(batchnorm.Backward)),
        "noise_shift": _non_negative,
        "noise_scale": lambda v: None if v >= 1.0 else "must be >= 1",
    }
    # Keys renamed since runs were made, old -> new (dotted, under `config.`): the BN options moved into `model.bn`.
    renamed = {
        **{f"model.bn_{option}": f"model.bn.{option}" for option in models.BN_OPTIONS},
        "model.bn_gamma_init": "model.gamma_init",
    }
    # What a run made before `model.bn` existed used for the options its config did not name: BatchNorm's
    # defaults, which every model then passed on (eps 1e-5 in all three); and before `dtype` existed, every run
    # computed in float32. Such a run resumes under today's config.
    bn_defaults = json.loads(models.bn_config().to_json_best_effort())
    # Dropout in the MLP (`model.dropout_rate`) and the training-set evaluation came later, off.
    implicit = {
        **{f"model.bn.{option}": value for option, value in bn_defaults.items()},
        "dtype": "float32",
        "model.dropout_rate": 0.0,
        "eval_train_examples": 0,
        "weight_norms_every": 0,
    }
    bn_fields = attribute_fields(layers.BatchNorm, models.BN_OPTIONS, bn_checks)
    return _ModelSide(models, tuple(layers.COMPUTE_DTYPES), field_checks, bn_fields, renamed, implicit)


def __getattr__(name: str) -> Any:
    """`RENAMED_KEYS` (old dotted key -> new) and `IMPLICIT_IN_OLD_RUNS` (dotted key -> the value runs made before
    it existed used), built on first use (`_model_side`)."""
    if name in ("RENAMED_KEYS", "IMPLICIT_IN_OLD_RUNS"):
        return getattr(_model_side(), name.lower())
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def check_not_renamed(key: str) -> None:
    """A ValueError naming the new key if the dotted `key` (e.g. "model.bn_momentum") was renamed."""
    renamed = _model_side().renamed_keys
    if key in renamed:
        raise ValueError(f"config.{key}: renamed to config.{renamed[key]}.")


def check_key(config: ml_collections.ConfigDict, key: str, name: str) -> None:
    """A ValueError if the dotted `key` (e.g. "model.activation") names no value of `config`, written as `name`
    (how the user wrote it: `--config.KEY`, a sweep point's key): the section it lacks, or the closest known key;
    or the key's new name if it was renamed (`check_not_renamed`)."""
    check_not_renamed(key)
    *sections, leaf = key.split(".")
    node = config
    for section in sections:
        node = node.get(section)
        if not isinstance(node, ml_collections.ConfigDict):
            raise ValueError(f"{name}: no such section {section!r}.")  # noqa: TRY004 -- a user's key, not a type
    if leaf not in node:
        close = difflib.get_close_matches(key, _dotted_keys(config), n=1)
        raise ValueError(f"{name}: unknown key" + (f"; did you mean {close[0]!r}?" if close else "."))


def _dotted_keys(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
    """Every dotted key of `config`, sections included."""
    keys = []
    for key, value in config.items():
        keys.append(prefix + key)
        if isinstance(value, ml_collections.ConfigDict):
            keys += _dotted_keys(value, f"{prefix}{key}.")
    return keys


def _check_value(key: str, value: Any, field: Field) -> None:
    expected = field.type if isinstance(field.type, tuple) else (field.type,)
    # bool is an int to Python, never to a config; an int is a fine float.
    type_ok = isinstance(value, expected) and not (isinstance(value, bool) and bool not in expected)
    if float in expected and isinstance(value, int) and not isinstance(value, bool):
        type_ok = True
    if not type_ok:
        names = " or ".join(t.__name__ for t in expected)
        raise ValueError(f"config.{key}: expected {names}, got {type(value).__name__} {value!r}.")
    problem = field.check(value) if field.check else None
    if problem:
        raise ValueError(f"config.{key} = {value!r}: {problem}.")


def attribute_fields(
    cls: type, names: Sequence[str], checks: Mapping[str, Callable[[Any], str | None]]
) -> dict[str, Field]:
    """The attributes `names` of the dataclass `cls` as config fields, typed by their defaults, with `checks`."""
    hints = typing.get_type_hints(cls)
    defaults = {f.name: f.default for f in dataclasses.fields(cls)}
    fields = {}
    for name in names:
        kind = tuple if isinstance(defaults[name], (tuple, list)) else type(defaults[name])
        if defaults[name] is None:  # an optional attribute: the types its annotation allows, e.g. `int | None`
            kind = tuple(t for t in typing.get_args(hints[name]) if isinstance(t, type))
        fields[name] = Field(kind, checks.get(name))
    return fields


def model_fields(model_config: ml_collections.ConfigDict) -> dict[str, Field]:
    """The allowed `model.*` keys for the class `model_config.name` names, typed by the class defaults, and
    `model.bn` (the BatchNorm options from which `models.create_model` builds the class's `norm`); not `dtype`,
    which `create_model` sets from `config.dtype`."""
    side = _model_side()
    cls = side.models.model_class(model_config.get("name"))
    names = [
        f.name
        for f in dataclasses.fields(cls)
        if f.name not in ("parent", "name", "norm", "dtype") and f.default is not dataclasses.MISSING
    ]
    return {
        "name": Field(str),
        "bn": Field(ml_collections.ConfigDict),
        **attribute_fields(cls, names, side.field_checks),
    }


def profile_range(config: ml_collections.ConfigDict) -> tuple[int, int] | None:
    """The steps `config.profile_steps` traces, (START, END) with END at most `num_steps`; None when it is off.
    (The loop traces the dispatches that take the state from step START to step END: `bnrepro.training.loop`.)"""
    if not config.profile_steps:
        return None
    start, end = (int(s) for s in config.profile_steps.split(":"))
    return start, min(end, config.num_steps)


def _check_fields(config: ml_collections.ConfigDict, fields: Mapping[str, Field], prefix: str = "") -> None:
    unknown = sorted(set(config.keys()) - set(fields))
    if unknown:
        raise ValueError(f"config.{prefix}{unknown[0]}: unknown key; the known keys are {sorted(fields)}.")
    for key, field in fields.items():
        if key not in config:
            raise ValueError(f"config.{prefix}{key}: missing.")
        _check_value(prefix + key, config[key], field)


def _check_host_fed(config: ml_collections.ConfigDict) -> None:
    """What a host-fed (ImageNet) config needs, and the on-device features it cannot have."""
    _check_fields(config.input, INPUT_FIELDS, prefix="input.")
    if config.data_source != "tfds":
        raise ValueError(f"config.data_source = {config.data_source!r}: {config.dataset} is read through tfds only.")
    for key, value in (("validation_size", 0), ("plot_layer", ""), ("eval_examples", 0), ("eval_train_examples", 0)):
        if config[key] != value:
            raise ValueError(f"config.{key} = {config[key]!r}: only {value!r} is supported for {config.dataset}.")


def validate(config: ml_collections.ConfigDict) -> None:
    """Checks `config` against the training contract.

    Raises:
      ValueError: naming the first key that is unknown, missing, of the wrong type or impossible.
    """
    host_fed = config.get("dataset") == imagenet.DATASET_NAME
    fields = {**TRAINING_FIELDS, "input": Field(ml_collections.ConfigDict)} if host_fed else TRAINING_FIELDS
    _check_fields(config, fields)
    if host_fed:
        _check_host_fed(config)

    models = _model_side().models
    if "name" not in config.model:
        raise ValueError(f"config.model.name: missing; expected one of {sorted(models.MODELS)}.")
    if config.model.name not in models.MODELS:
        raise ValueError(f"config.model.name = {config.model.name!r}: expected one of {sorted(models.MODELS)}.")
    allowed = model_fields(config.model)
    for key in config.model:
        check_not_renamed(f"model.{key}")
        if key not in allowed:
            raise ValueError(
                f"config.model.{key}: unknown key for model {config.model.name!r}; known: {sorted(allowed)}."
            )
        _check_value(f"model.{key}", config.model[key], allowed[key])
    if "bn" not in config.model:
        raise ValueError("config.model.bn: missing; the BatchNorm options, `bnrepro.models.bn_config()`.")
    _check_fields(config.model.bn, _model_side().bn_fields, prefix="model.bn.")

    profiled = profile_range(config)
    if profiled and profiled[0] >= config.num_steps:
        raise ValueError(
            f"config.profile_steps = {config.profile_steps!r}: starts at or after num_steps = {config.num_steps}, "
            "so nothing would be traced."
        )
    if config.model.get("batch_norm", False) and config.batch_size < 2:
        raise ValueError(f"config.batch_size = {config.batch_size}: BN needs at least 2 examples per mini-batch.")
