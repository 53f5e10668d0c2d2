"""Orbax checkpoints of a run's `TrainState` in `WORKDIR/checkpoints/<step>`: the latest two are kept."""

from __future__ import annotations

from pathlib import Path

import jax
import ml_collections
import orbax.checkpoint as ocp
from absl import logging

from bnrepro import config_schema
from bnrepro.training import run_dir
from bnrepro.training.state import TrainState


def manager(workdir: Path) -> ocp.CheckpointManager:
    """The checkpoint manager of the run in `workdir` (its folder is created if needed)."""
    return ocp.CheckpointManager(
        (workdir / run_dir.CHECKPOINT_DIR).absolute(), options=ocp.CheckpointManagerOptions(max_to_keep=2, create=True)
    )


def restore_latest(
    checkpoints: ocp.CheckpointManager, state: TrainState, config: ml_collections.ConfigDict, workdir: Path
) -> TrainState:
    """The state of the latest checkpoint in `workdir`, or `state` if there is none. A run whose `config.json`
    differs from `config` in what is computed is refused (`run_dir.check_resumed_config`); one made before a
    key was renamed is read under its new name (`config_schema.RENAMED_KEYS`)."""
    step = checkpoints.latest_step()
    if step is None:
        return state
    run_dir.check_resumed_config(config, workdir, config_schema.RENAMED_KEYS, config_schema.IMPLICIT_IN_OLD_RUNS)
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
    try:
        state = checkpoints.restore(step, args=ocp.args.StandardRestore(abstract))
    except ValueError as e:  # a tree of another shape: the model or optimizer changed since the checkpoint
        raise ValueError(
            f"{workdir / run_dir.CHECKPOINT_DIR / str(step)}: the checkpoint does not fit this config's model and "
            f"optimizer ({str(e).splitlines()[0][:200]}). Use a new --workdir."
        ) from None
    logging.info("Resumed from the checkpoint at step %d.", int(state.step))
    return state
