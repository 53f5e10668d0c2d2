"""Orbax checkpoints of a run's `TrainState` in `WORKDIR/checkpoints/<step>`: the latest two are kept, each checked
before use.

Each checkpoint carries, in orbax's own step metadata (`checkpoints/<step>/_CHECKPOINT_METADATA`, its
`custom_metadata`, written by orbax with the checkpoint and committed atomically with it):

    {"bnrepro": {"format": 1, "state_sha256": <hex>, "config": <the run's config, as config.json stores it>}}

`state_sha256` is a SHA-256 of the state's values (every leaf's dtype, shape and bytes, in tree order), taken when
the state is handed to orbax, so it describes what should come back, whatever orbax and TensorStore make of it on
disk (orbax 0.12.8 has no integrity check of its own: TensorStore checks the OCDBT manifests' CRC-32C, not the
data, so flipped data bytes restore as wrong values). On restore the state is hashed again and compared.

A checkpoint that fails -- orbax cannot read it (a truncated, emptied or missing file), or its values do not hash to
its `state_sha256` -- is corrupt: the previous kept one is tried, with a warning naming both, and the corrupt one is
moved to `WORKDIR/corrupt_checkpoints/<step>` (kept for inspection, the latest two of them, out of orbax's way: the
run then saves that step again). If none is good, a `ValueError` says "checkpoint N in WORKDIR is corrupt: ...". The config guard compares
the current config with the checkpoint's own config, so it works without `WORKDIR/config.json`.

Checkpoints made before this (no "bnrepro" metadata) are legacy: trusted as they are, with an info log, the guard
falling back to `config.json` alone. A checkpoint without the metadata that is newer than one with it cannot be
legacy: it is corrupt. States that are not fully addressable by this process (multi-host) are saved without a
digest (`state_sha256` null) and trusted likewise.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from bnrepro import config_schema
from bnrepro.training import run_dir
from bnrepro.training.state import TrainState

METADATA_KEY = "bnrepro"
FORMAT = 1
LOSSES_KEY = "losses_since_evaluation"  # in the metadata of a checkpoint saved between evaluations
CORRUPT_DIR = "corrupt_checkpoints"
KEEP_CORRUPT = 2  # corrupt checkpoints kept for inspection; a disk that keeps corrupting them does not fill up


class _Corrupt(Exception):
    """A checkpoint that cannot be used; the message says why."""


def manager(workdir: Path, config: ml_collections.ConfigDict) -> ocp.CheckpointManager:
    """The checkpoint manager of the run in `workdir` (its folder is created if needed). Its one item's handler is
    named, so that reading a step's metadata does not warn that the item "could not be restored".

    Its `should_save(step)` is the loop's periodic decision: every `config.checkpoint_every` steps, or once
    `config.checkpoint_every_seconds` (if not 0) have passed since the latest checkpoint was started (or, one made
    by an earlier process, committed), unless a save is still being written. orbax's `ContinuousCheckpointingPolicy`
    takes that decision on process 0 and hands it to every process (they all save together); with no checkpoint yet
    it saves at once, so a fresh run checkpoints at its first boundary. The loop saves with `save` whatever the
    policy says (at the end, after a SIGTERM)."""
    policies: list[ocp.checkpoint_managers.SaveDecisionPolicy] = [
        ocp.checkpoint_managers.FixedIntervalPolicy(config.checkpoint_every)
    ]
    if config.checkpoint_every_seconds:
        policies.append(
            ocp.checkpoint_managers.ContinuousCheckpointingPolicy(minimum_interval_secs=config.checkpoint_every_seconds)
        )
    options = ocp.CheckpointManagerOptions(
        max_to_keep=2, create=True, save_decision_policy=ocp.checkpoint_managers.AnySavePolicy(policies)
    )
    return ocp.CheckpointManager(
        (workdir / run_dir.CHECKPOINT_DIR).absolute(), item_handlers=ocp.StandardCheckpointHandler(), options=options
    )


def state_digest(state: Any) -> str | None:
    """SHA-256 of a state's values (each leaf's dtype, shape and bytes, in tree order); None if some leaf is not
    fully addressable by this process (multi-host), which cannot be hashed here whole."""
    leaves = jax.tree.leaves(state)
    if any(isinstance(leaf, jax.Array) and not leaf.is_fully_addressable for leaf in leaves):
        return None
    digest = hashlib.sha256()
    for leaf in jax.device_get(leaves):
        array = np.ascontiguousarray(leaf)
        digest.update(f"{array.dtype.str}{array.shape};".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def save(
    checkpoints: ocp.CheckpointManager,
    step: int,
    state: TrainState,
    config: ml_collections.ConfigDict,
    losses_since_evaluation: Sequence[float] = (),
) -> None:
    """Checkpoints `state` at `step` (asynchronously, whatever the manager's `should_save` says), with its digest,
    `config` and the training losses of the steps since the last evaluation (which the next evaluation averages) in
    the step's metadata."""
    metadata = {"format": FORMAT, "state_sha256": state_digest(state), "config": run_dir.config_json(config)}
    if len(losses_since_evaluation):
        metadata[LOSSES_KEY] = [float(loss) for loss in losses_since_evaluation]
    checkpoints.save(step, args=ocp.args.StandardSave(state), custom_metadata={METADATA_KEY: metadata}, force=True)


def restore_latest(
    checkpoints: ocp.CheckpointManager, state: TrainState, config: ml_collections.ConfigDict, workdir: Path
) -> TrainState:
    """The state of the latest good checkpoint in `workdir`, or `state` if there is none. A bad latest checkpoint
    falls back to the previous one (with a warning); if none is good, a ValueError. A run made under a config that
    differs from `config` in what is computed is refused (the checkpoint's own config, and `config.json` via
    `run_dir.check_resumed_config`); one made before a key was renamed is read under its new name
    (`config_schema.RENAMED_KEYS`). `config.num_steps` below the restored step is refused too."""
    steps = sorted(checkpoints.all_steps(), reverse=True)
    if not steps:
        return state
    run_dir.check_resumed_config(config, workdir, config_schema.RENAMED_KEYS, config_schema.IMPLICIT_IN_OLD_RUNS)
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
    metadata = {step: _read_metadata(checkpoints, step) for step in steps}
    failures: list[tuple[int, str]] = []
    for i, step in enumerate(steps):
        try:
            restored = _restore_checked(checkpoints, step, abstract, config, workdir, metadata, steps[i + 1 :])
        except _Corrupt as e:
            failures.append((step, str(e)))
            continue
        if config.num_steps < step:  # refused before anything in the workdir is moved
            raise ValueError(
                f"config.num_steps={config.num_steps} is below step {step} of the checkpoint in {workdir}: a run "
                f"cannot be shortened after it trained past the end. Pass num_steps >= {step}, or use a new --workdir."
            )
        for bad, reason in failures:
            logging.warning(
                "checkpoint %d in %s is corrupt: %s. Resuming from checkpoint %d instead; the corrupt one is moved to "
                "%s.",
                bad, workdir, reason, step, workdir / CORRUPT_DIR,
            )  # fmt: skip
            _move_aside(checkpoints, workdir, bad)
        logging.info("Resumed from the checkpoint at step %d.", int(restored.step))
        return restored
    step, reason = failures[0]
    others = "; ".join(f"Checkpoint {s} is corrupt too: {r}" for s, r in failures[1:])
    raise ValueError(
        f"checkpoint {step} in {workdir} is corrupt: {reason}. {others + '. ' if others else ''}"
        f"No good checkpoint is left: delete {workdir / run_dir.CHECKPOINT_DIR} to train from the start, or use a "
        "new --workdir."
    )


def losses_since_evaluation(checkpoints: ocp.CheckpointManager, step: int) -> list[float]:
    """The training losses checkpoint `step` holds of the steps since the evaluation before it (`save`); none if
    it was saved at an evaluation, or before they were saved."""
    metadata = _read_metadata(checkpoints, step)
    return list(metadata.get(LOSSES_KEY, [])) if isinstance(metadata, dict) else []


def _read_metadata(checkpoints: ocp.CheckpointManager, step: int) -> dict[str, Any] | None | _Corrupt:
    """The step's bnrepro metadata; None for a legacy checkpoint; a `_Corrupt` if orbax cannot read it."""
    try:
        custom = checkpoints.metadata(step).custom_metadata or {}
    except Exception as e:  # noqa: BLE001 -- any failure to read is a damaged checkpoint
        return _Corrupt(f"its metadata is unreadable ({_first_line(e)})")
    found = custom.get(METADATA_KEY)
    if found is None:
        return None
    if not isinstance(found, Mapping) or "state_sha256" not in found:
        return _Corrupt(f"its {METADATA_KEY!r} metadata is malformed")
    return dict(found)


def _restore_checked(
    checkpoints: ocp.CheckpointManager,
    step: int,
    abstract: Any,
    config: ml_collections.ConfigDict,
    workdir: Path,
    metadata: Mapping[int, dict[str, Any] | None | _Corrupt],
    older: list[int],
) -> TrainState:
    """Checkpoint `step`, checked; `_Corrupt` if it cannot be used, ValueError if it is not this config's."""
    found = metadata[step]
    if isinstance(found, _Corrupt):
        raise found
    if found is None:
        if any(isinstance(metadata[s], dict) for s in older):
            raise _Corrupt(f"its {METADATA_KEY!r} metadata is missing, though an older checkpoint has it")
        logging.info("Checkpoint %d in %s predates checkpoint digests: restored unchecked.", step, workdir)
    else:
        _check_stored_config(config, found.get("config"), workdir, step)
    try:
        restored = checkpoints.restore(step, args=ocp.args.StandardRestore(abstract))
    except ValueError as e:
        if _is_mismatch(e):  # a tree of another shape: the model or optimizer changed since the checkpoint
            raise ValueError(
                f"{workdir / run_dir.CHECKPOINT_DIR / str(step)}: the checkpoint does not fit this config's model and "
                f"optimizer ({_first_line(e)}). Use a new --workdir."
            ) from None
        raise _Corrupt(f"orbax cannot read it ({_first_line(e)})") from None
    except Exception as e:  # noqa: BLE001 -- whatever orbax or TensorStore raise on damaged files
        raise _Corrupt(f"orbax cannot read it ({type(e).__name__}: {_first_line(e)})") from None
    expected = found and found.get("state_sha256")
    if expected and state_digest(restored) != expected:
        raise _Corrupt("its values do not match the digest saved with it (state_sha256)")
    return restored


def _is_mismatch(error: ValueError) -> bool:
    """Whether orbax refused the restore because the checkpoint's tree differs from the requested one."""
    message = str(error)
    return message.startswith("Structure mismatch") or "not compatible with the stored shape" in message


def _check_stored_config(config: ml_collections.ConfigDict, saved: Any, workdir: Path, step: int) -> None:
    """Refuses `config` if it differs from the config checkpoint `step` was made with in what is computed
    (`run_dir.RESUMABLE_CHANGES` may differ); the saved keys are read in today's terms, as `config.json`'s are."""
    if not isinstance(saved, Mapping):
        raise _Corrupt("the config saved with it is missing")
    changes = run_dir.config_changes(saved, config, config_schema.RENAMED_KEYS, config_schema.IMPLICIT_IN_OLD_RUNS)
    if not changes:
        return
    key, (recorded, now) = next(iter(changes.items()))
    raise ValueError(
        f"config.{key}: checkpoint {step} in {workdir} was made with {key}={recorded!r}, not {now!r} "
        f"(changed keys: {list(changes)}). Use a new --workdir."
    )


def _move_aside(checkpoints: ocp.CheckpointManager, workdir: Path, step: int) -> None:
    """Moves corrupt checkpoint `step` to `WORKDIR/corrupt_checkpoints/<step>[.n]`, out of orbax's listing (the run
    saves that step again), keeping the `KEEP_CORRUPT` latest moved there, and makes the manager forget it. Process
    0 moves it."""
    if jax.process_index() == 0:
        source = workdir / run_dir.CHECKPOINT_DIR / str(step)
        target = workdir / CORRUPT_DIR / str(step)
        n = 0
        while target.exists():
            n += 1
            target = workdir / CORRUPT_DIR / f"{step}.{n}"
        target.parent.mkdir(exist_ok=True)
        shutil.move(source, target)
        os.utime(target)  # the time it was moved aside, by which the oldest go
        kept = sorted(target.parent.iterdir(), key=lambda path: path.stat().st_mtime, reverse=True)
        for old in kept[KEEP_CORRUPT:]:
            logging.info("Deleting %s: only the %d latest corrupt checkpoints are kept.", old, KEEP_CORRUPT)
            shutil.rmtree(old)
    checkpoints.reload()


def _first_line(error: BaseException) -> str:
    """The gist of an orbax or TensorStore error: its first line, without the pointer to TensorStore's details."""
    lines = str(error).strip().splitlines()
    gist = lines[0].split(" See full TensorStore details")[0] if lines else type(error).__name__
    return gist.rstrip(". ")[:200]
