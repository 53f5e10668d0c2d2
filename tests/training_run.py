"""The training loop as `python -m bnrepro.main` runs it (with the hooks its config asks for), and a small config."""

from pathlib import Path

import ml_collections
from config_files import mnist_mlp

from bnrepro import hooks
from bnrepro.training import loop
from bnrepro.training.state import TrainState


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path) -> TrainState:
    return loop.train_and_evaluate(config, workdir, hooks.from_config(config))


def small_config(variant: str = "bn", **overrides) -> ml_collections.ConfigDict:
    """configs/mnist_mlp.py's `variant` for 60 steps, evaluating and checkpointing every 20."""
    config = mnist_mlp.get_config(variant)
    config.update(
        {"num_steps": 60, "eval_every": 20, "checkpoint_every": 20, "steps_per_dispatch": 20, "population_batches": 5}
    )
    config.update(overrides)
    return config
