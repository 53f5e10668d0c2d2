"""Networks built from `bnrepro.layers`, by the name a config gives in `config.model.name`."""

from __future__ import annotations

import flax.linen as nn

from bnrepro.models.inception import BNInception
from bnrepro.models.lstm import LSTMClassifier
from bnrepro.models.mlp import MLP

MODELS: dict[str, type[nn.Module]] = {"mlp": MLP, "bn_inception": BNInception, "lstm": LSTMClassifier}


def model_class(name: str) -> type[nn.Module]:
    """The network class registered as `name`, or a ValueError listing the known ones."""
    try:
        return MODELS[name]
    except KeyError:
        raise ValueError(f"model.name: unknown model {name!r}; expected one of {sorted(MODELS)}.") from None
