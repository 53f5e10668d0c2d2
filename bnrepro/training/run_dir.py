"""A run directory's files: what they are called, how metrics are written and read, and the config guard.

    WORKDIR/config.json         the config the run was made with (the guard compares a resumed run's against it)
    WORKDIR/metrics.jsonl       one JSON object per evaluation (`MetricsWriter`), also as TensorBoard events
    WORKDIR/diagnostics.jsonl   a measurement hook's records (e.g. `config.diagnostics_every`), if any
    WORKDIR/DIVERGED            why the run stopped, if its training loss became NaN or infinite
    WORKDIR/checkpoints/        orbax checkpoints (`bnrepro.training.checkpoints`)

This module imports neither jax nor orbax: figures and notebooks read run directories without the trainer.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import tensorboardX

METRICS_FILE = "metrics.jsonl"
DIAGNOSTICS_FILE = "diagnostics.jsonl"
CONFIG_FILE = "config.json"
DIVERGED_FILE = "DIVERGED"
CHECKPOINT_DIR = "checkpoints"
# Keys that may change when a run is resumed: none of them changes what is computed at a given step.
RESUMABLE_CHANGES = ("num_steps", "eval_every", "checkpoint_every", "steps_per_dispatch", "cpu_cores", "data_dir")


def read_records(workdir: str | os.PathLike, filename: str = METRICS_FILE) -> list[dict[str, Any]]:
    """The JSON records of `WORKDIR/filename`, one per line, in file order; a FileNotFoundError naming the file
    if there is none."""
    path = Path(workdir) / filename
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: is {workdir} a bnrepro run directory?")
    with path.open() as f:
        return [json.loads(line) for line in f if line.strip()]


def config_json(config: Any) -> dict[str, Any]:
    """An `ml_collections.ConfigDict` as `config.json` stores it (tuples become lists)."""
    return json.loads(config.to_json_best_effort())


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested mapping as one level of dotted keys: {"model": {"hidden": ...}} -> {"model.hidden": ...}."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


def check_resumed_config(
    config: Any, workdir: Path, renamed: Mapping[str, str] | None = None, implicit: Mapping[str, Any] | None = None
) -> None:
    """Refuses to resume the run in `workdir` under a config that changes what is computed (`RESUMABLE_CHANGES`
    may change). A run made by an earlier version is read in today's terms: its keys renamed since (`renamed`,
    e.g. "model.bn_momentum" -> "model.bn.momentum"), and the keys it did not have yet at the values it had
    implicitly (`implicit`, e.g. "model.bn.eps" -> 1e-5). A key that is still unknown stops it with that said."""
    path = workdir / CONFIG_FILE
    if not path.exists():
        return
    saved = {(renamed or {}).get(k, k): v for k, v in flatten(json.loads(path.read_text())).items()}
    saved = {**(implicit or {}), **saved}
    current = flatten(config_json(config))
    changed = sorted(
        k for k in set(saved) | set(current) if saved.get(k) != current.get(k) and k not in RESUMABLE_CHANGES
    )
    if not changed:
        return
    key = changed[0]
    gone = [k for k in changed if k not in current]
    if gone:
        raise ValueError(
            f"config.{gone[0]}: {workdir} holds a run made with keys this version of bnrepro does not know ({gone}); "
            "it cannot be resumed: use a new --workdir."
        )
    raise ValueError(
        f"config.{key}: {workdir} holds a run with {key}={saved.get(key)!r}, not {current.get(key)!r} "
        f"(changed keys: {changed}). Use a new --workdir."
    )


def write_config(config: Any, workdir: Path) -> None:
    """`WORKDIR/config.json`: the config the run is made with."""
    (workdir / CONFIG_FILE).write_text(json.dumps(config_json(config), indent=2) + "\n")


class MetricsWriter:
    """One JSON object per record in `WORKDIR/FILENAME` (`metrics.jsonl`: one per evaluation), and the scalars
    as TensorBoard events. Arrays are written as (nested) lists.

    Resuming from step T drops what a killed run wrote after T, so no step appears twice.
    """

    def __init__(self, workdir: Path, resume_step: int, filename: str = METRICS_FILE):
        self._workdir = workdir
        self._path = workdir / filename
        if self._path.exists():
            kept = [line for line in self._path.read_text().splitlines() if json.loads(line)["step"] <= resume_step]
            self._path.write_text("".join(line + "\n" for line in kept))
        # On resumption, TensorBoard drops the killed run's events after `resume_step`.
        self._tensorboard = self._open_tensorboard(resume_step, purge_step=resume_step + 1 if resume_step else None)

    def _open_tensorboard(self, step: int, purge_step: int | None = None) -> tensorboardX.SummaryWriter:
        # One events file per segment between checkpoints; the suffix keeps names unique within a second.
        suffix = f".{self._path.stem}.{step}"
        return tensorboardX.SummaryWriter(str(self._workdir), purge_step=purge_step, filename_suffix=suffix)

    def write(self, record: Mapping[str, Any]) -> None:
        record = {
            k: np.asarray(v).tolist() if isinstance(v, (np.ndarray, np.generic)) else v for k, v in record.items()
        }
        with self._path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        for key, value in record.items():
            if key != "step" and isinstance(value, (int, float)):
                self._tensorboard.add_scalar(key, value, record["step"])
        self._tensorboard.flush()

    def sync(self, step: int) -> None:
        """Puts everything written so far on disk; call it before checkpointing `step`. (tensorboardX writes
        from a thread, and only `close` waits for it.)"""
        self._tensorboard.close()
        self._tensorboard = self._open_tensorboard(step)

    def close(self) -> None:
        self._tensorboard.close()
