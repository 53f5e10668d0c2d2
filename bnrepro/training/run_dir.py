"""A run directory's files: what they are called, how metrics are written and read, and the config guard.

    WORKDIR/config.json         the config the run was made with (the guard compares a resumed run's against it)
    WORKDIR/metrics.jsonl       one JSON object per evaluation (`MetricsWriter`), also as TensorBoard events
    WORKDIR/diagnostics.jsonl   a measurement hook's records (e.g. `config.diagnostics_every`), if any
    WORKDIR/DIVERGED            why the run stopped, if its training loss became NaN or infinite
    WORKDIR/checkpoints/        orbax checkpoints (`bnrepro.training.checkpoints`)
    WORKDIR/plugins/profile/    a `jax.profiler` trace of the steps `config.profile_steps` names, if any
    WORKDIR/.lock               held (`fcntl.flock`) by the process training in the workdir (`locked`)

Every file is written so that a kill or a full disk never leaves half of it: whole files go to a temporary file
and replace the old one (`write_atomically`); records are appended a whole line at a time and put on disk before
each checkpoint; a torn last line (a kill or a full disk mid-append) is dropped with a warning on resumption.

This module imports neither jax nor orbax: figures and notebooks read run directories without the trainer.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import reprlib
import socket
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import tensorboardX
from absl import logging

METRICS_FILE = "metrics.jsonl"
DIAGNOSTICS_FILE = "diagnostics.jsonl"
WEIGHT_NORMS_FILE = "weight_norms.jsonl"
CONFIG_FILE = "config.json"
DIVERGED_FILE = "DIVERGED"
CHECKPOINT_DIR = "checkpoints"
LOCK_FILE = ".lock"
SWEEP_STATUS_FILE = "sweep_status.json"  # how a sweep's point ended (`bnrepro.sweep.status`)
# Keys that may change when a run is resumed: none of them changes what is computed at a given step.
RESUMABLE_CHANGES = (
    "num_steps", "eval_every", "checkpoint_every", "checkpoint_every_seconds", "steps_per_dispatch", "cpu_cores",
    "data_dir", "profile_steps", "input.worker_count",
)  # fmt: skip


class WorkdirBusyError(RuntimeError):
    """Another process is training in the workdir."""


@contextlib.contextmanager
def locked(workdir: Path) -> Iterator[None]:
    """Holds `WORKDIR/.lock` while the body runs: a second process that asks for it is refused at once with a
    `WorkdirBusyError` naming the holder's PID and host. The kernel releases the lock when its holder exits,
    however it exits, so the lock of a dead process never blocks. (On several hosts, process 0 holds it.) A
    workdir the body created and left empty (it stopped before writing anything) is removed again."""
    created = not workdir.exists()
    workdir.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(workdir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(descriptor, 4096, 0).decode(errors="replace").strip() or "another process"
        os.close(descriptor)
        raise WorkdirBusyError(
            f"{workdir} is in use by {holder}: wait for it to end, or use another --workdir."
        ) from None
    try:
        os.ftruncate(descriptor, 0)
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        os.pwrite(descriptor, f"process {os.getpid()} on {socket.gethostname()} (since {stamp})\n".encode(), 0)
        yield
    finally:
        if created and [p.name for p in workdir.iterdir()] == [LOCK_FILE]:
            (workdir / LOCK_FILE).unlink()
            workdir.rmdir()
        fcntl.flock(descriptor, fcntl.LOCK_UN)
        os.close(descriptor)


def write_atomically(path: Path, text: str | bytes) -> None:
    """`path` holds `text`, or what it held before if writing fails (a temporary file in the same folder, put
    on disk, then renamed over it)."""
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(descriptor, "wb" if isinstance(text, bytes) else "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _parse_lines(path: Path, checked: bool = False) -> tuple[list[str], list[dict[str, Any]]]:
    """The whole lines of a JSONL file and their records; a torn last line (no newline, or not JSON) is left out
    with a warning; a line before it that is not JSON (or, if `checked`, not a record its readers can use:
    `_check_record`) is a ValueError naming the file and line."""
    text = path.read_text()
    lines = text.splitlines()
    if lines and not text.endswith("\n"):
        logging.warning("%s: dropped its torn last line %r (a write was interrupted).", path, lines[-1][:80])
        lines = lines[:-1]
    kept, records = [], []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}, line {number}: not a JSON record ({e.msg}); the file is damaged.") from None
        if checked:
            _check_record(records[-1], f"{path}, line {number}")
        kept.append(line)
    return kept, records


def _check_record(record: Any, where: str) -> None:
    """Refuses a record unlike those `MetricsWriter` writes, which its readers (figures, the results page, a
    sweep's summary) cannot use: a JSON object with a `step`, each value a number (NaN and infinities included: a
    diverging run writes them) or a (nested) list of numbers. The ValueError names `where` (file and line), the
    key and the value, shortened."""
    if not isinstance(record, dict):
        raise ValueError(f"{where}: {reprlib.repr(record)} is not a JSON object; the file is damaged.")  # noqa: TRY004
    if "step" not in record:
        raise ValueError(f"{where}: the record has no 'step' ({reprlib.repr(record)}); the file is damaged.")
    for key, value in record.items():
        try:
            numeric = np.asarray(value).dtype.kind in "iuf"  # not bool, str or object (None, a dict, a mix)
        except ValueError:  # a ragged list
            numeric = False
        if not numeric:
            kind = "a list of numbers" if isinstance(value, list) else "a number"
            raise ValueError(f"{where}: {key!r} is {reprlib.repr(value)}, not {kind}; the file is damaged.")


def read_records(workdir: str | os.PathLike, filename: str = METRICS_FILE) -> list[dict[str, Any]]:
    """The JSON records of `WORKDIR/filename`, one per line, in file order; a FileNotFoundError naming the file
    if there is none, a ValueError naming it, the line and (`_check_record`) the key and value if a line other
    than a torn last one is not JSON or not a record as `MetricsWriter` writes it."""
    path = Path(workdir) / filename
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: is {workdir} a bnrepro run directory?")
    return _parse_lines(path, checked=True)[1]


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


ABSENT = "<absent>"  # a key one of two configs lacks, in `config_changes`


def config_changes(
    saved: Mapping[str, Any],
    config: Any,
    renamed: Mapping[str, str] | None = None,
    implicit: Mapping[str, Any] | None = None,
) -> dict[str, tuple[Any, Any]]:
    """key -> (recorded value, value now) for each key in which the recorded config `saved` (as `config.json`
    stores it) differs from `config` in what is computed (`RESUMABLE_CHANGES` may differ). A config recorded by an
    earlier version is read in today's terms: its keys renamed since (`renamed`, e.g. "model.bn_momentum" ->
    "model.bn.momentum"), and the keys it did not have yet at the values it had implicitly (`implicit`, e.g.
    "model.bn.eps" -> 1e-5) where `config` has them (a model's key, e.g. "model.dropout_rate", only some models
    have); `config_schema.RENAMED_KEYS` and `IMPLICIT_IN_OLD_RUNS` are bnrepro's."""
    recorded = {(renamed or {}).get(k, k): v for k, v in flatten(saved).items()}
    current = flatten(config_json(config))
    recorded = {**{k: v for k, v in (implicit or {}).items() if k in current}, **recorded}
    return {
        key: (recorded.get(key, ABSENT), current.get(key, ABSENT))
        for key in sorted(set(recorded) | set(current))
        if key not in RESUMABLE_CHANGES and recorded.get(key, ABSENT) != current.get(key, ABSENT)
    }


def recorded_config_changes(
    config: Any, workdir: Path, renamed: Mapping[str, str] | None = None, implicit: Mapping[str, Any] | None = None
) -> dict[str, tuple[Any, Any]]:
    """`config_changes` between the run recorded in `WORKDIR/config.json` and `config`; none without that file."""
    path = workdir / CONFIG_FILE
    if not path.exists():
        return {}
    return config_changes(json.loads(path.read_text()), config, renamed, implicit)


def check_resumed_config(
    config: Any, workdir: Path, renamed: Mapping[str, str] | None = None, implicit: Mapping[str, Any] | None = None
) -> None:
    """Refuses to resume the run in `workdir` under a config that changes what is computed
    (`recorded_config_changes`). A key that even today's terms do not know stops it."""
    changes = recorded_config_changes(config, workdir, renamed, implicit)
    if not changes:
        return
    changed = list(changes)
    key = changed[0]
    gone = [k for k, (_, now) in changes.items() if now == ABSENT]
    if gone:
        raise ValueError(
            f"config.{gone[0]}: {workdir} holds a run made with keys this version of bnrepro does not know ({gone}); "
            "it cannot be resumed: use a new --workdir."
        )
    raise ValueError(
        f"config.{key}: {workdir} holds a run with {key}={changes[key][0]!r}, not {changes[key][1]!r} "
        f"(changed keys: {changed}). Use a new --workdir."
    )


def write_config(config: Any, workdir: Path) -> None:
    """`WORKDIR/config.json`: the config the run is made with."""
    write_atomically(workdir / CONFIG_FILE, json.dumps(config_json(config), indent=2) + "\n")


class MetricsWriter:
    """One JSON object per record in `WORKDIR/FILENAME` (`metrics.jsonl`: one per evaluation), and the scalars
    as TensorBoard events. Arrays are written as (nested) lists.

    Resuming from step T drops what a killed run wrote after T (and a torn last line), so no step appears twice.
    """

    def __init__(self, workdir: Path, resume_step: int, filename: str = METRICS_FILE):
        self._workdir = workdir
        self._path = workdir / filename
        if self._path.exists():
            lines, records = _parse_lines(self._path)
            kept = [line for line, record in zip(lines, records) if record["step"] <= resume_step]
            write_atomically(self._path, "".join(line + "\n" for line in kept))
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
        try:
            with self._path.open("a") as f:  # one write of a whole line
                f.write(json.dumps(record) + "\n")
        except OSError as e:  # a failed flush at close names no file: a full disk's message names this one
            raise OSError(e.errno, e.strerror, str(self._path)) from e
        for key, value in record.items():
            if key != "step" and isinstance(value, (int, float)):
                self._tensorboard.add_scalar(key, value, record["step"])
        try:
            self._tensorboard.flush()
        except OSError as e:
            raise OSError(e.errno, e.strerror, f"{self._workdir}/events.out.tfevents.*") from e

    def sync(self, step: int) -> None:
        """Puts everything written so far on disk; call it before checkpointing `step`. (tensorboardX writes
        from a thread, and only `close` waits for it.)"""
        if self._path.exists():
            with self._path.open("a") as f:
                os.fsync(f.fileno())
        self._tensorboard.close()
        self._tensorboard = self._open_tensorboard(step)

    def close(self) -> None:
        self._tensorboard.close()
