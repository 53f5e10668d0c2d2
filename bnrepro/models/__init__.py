"""Networks built from `bnrepro.layers`, by the name a config gives in `config.model.name`.

`create_model(config.model)` builds one: the BatchNorm options of `config.model.bn` (`bn_config`) are bound once
into `layers.BatchNorm` and handed to the model as its `norm` attribute, so every BN layer of every model has
the same options, and a new BN option is one name in `BN_OPTIONS`.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import ml_collections

from bnrepro import layers
from bnrepro.models.inception import BNInception
from bnrepro.models.lstm import LSTMClassifier
from bnrepro.models.mlp import MLP

MODELS: dict[str, type[nn.Module]] = {"mlp": MLP, "bn_inception": BNInception, "lstm": LSTMClassifier}

# The `layers.BatchNorm` attributes a config sets, as `config.model.bn.<option>` (the others, e.g. `axis`,
# `use_bias`, `scale_init`, belong to where a model places the layer).
BN_OPTIONS: tuple[str, ...] = (
    "momentum",
    "eps",
    "unbiased_running_var",
    "axis_name",
    "virtual_batch_size",
    "device_group_size",
    "backward",
    "renorm",
    "noise_shift",
    "noise_scale",
)


def model_class(name: str) -> type[nn.Module]:
    """The network class registered as `name`, or a ValueError listing the known ones."""
    try:
        return MODELS[name]
    except KeyError:
        raise ValueError(f"model.name: unknown model {name!r}; expected one of {sorted(MODELS)}.") from None


def bn_config(**options: Any) -> ml_collections.ConfigDict:
    """`config.model.bn`: every `BN_OPTIONS` at `layers.BatchNorm`'s default, or as given in `options`.

    An option whose default is None is a typed `FieldReference`, so that the command line can set it
    (`--config.model.bn.virtual_batch_size=32`).
    """
    unknown = sorted(set(options) - set(BN_OPTIONS))
    if unknown:
        raise ValueError(f"bn_config: unknown BatchNorm option {unknown[0]!r}; the options are {list(BN_OPTIONS)}.")
    hints = typing.get_type_hints(layers.BatchNorm)
    defaults = {f.name: f.default for f in dataclasses.fields(layers.BatchNorm)}
    config = ml_collections.ConfigDict()
    for option in BN_OPTIONS:
        value = options.get(option, defaults[option])
        if value is None:  # typed by the other type its annotation allows, e.g. int for `int | None`
            (kind,) = (t for t in typing.get_args(hints[option]) if t is not type(None))
            value = ml_collections.FieldReference(None, field_type=kind)
        config[option] = value
    return config


@functools.cache
def bound_batch_norm(**options: Any) -> Callable[..., nn.Module]:
    """`layers.BatchNorm` with `options` bound. Cached: two models built from equal configs get the same object
    and so compare equal, as Flax modules (dataclasses) and jit's static `apply_fn` expect."""
    return functools.partial(layers.BatchNorm, **options)


def create_model(model_config: ml_collections.ConfigDict, dtype: str = "float32", batch_shards: int = 1) -> nn.Module:
    """The network `model_config.name` names, computing in `dtype` (a run's `config.dtype`), its BN layers
    `layers.BatchNorm` with the options of `model_config.bn`, bound here once and passed as the model's `norm`
    (with `batch_shards`, the devices each mini-batch is split across, for `model.bn.device_group_size`);
    the other keys (but `name`, a Flax Module attribute) are the model's attributes."""
    attributes = {key: value for key, value in model_config.items() if key not in ("name", "bn")}
    norm = bound_batch_norm(**model_config.bn, batch_shards=batch_shards)
    return model_class(model_config.name)(norm=norm, dtype=dtype, **attributes)
