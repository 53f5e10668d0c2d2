"""Ablation sweeps: a grid of configs trained as independent runs, resumable, summarized in one table.

    python -m bnrepro.sweep --sweep=configs/sweeps/mnist_activation_bn.py[:quick] --workdir=runs/sweep1

A sweep file's `get_sweep(arg)` returns a `Sweep`: a base config and a list of override dicts (`product` of
axes, plus any hand-listed points). Each point trains with `bnrepro.training.loop` in its own run
directory `WORKDIR/<key=value,...>` (the same `metrics.jsonl`, checkpoints and TensorBoard files as a single
run) and leaves `sweep_status.json` there when it ends: finished, diverged (NaN loss) or failed (an exception,
recorded with its traceback). Re-running the command skips finished and diverged points and resumes the rest
from their last checkpoint, so Ctrl-C or SIGKILL loses at most the work since a point's last checkpoint (the
workers die with the sweep process, `die_with_parent`).

Points that differ only in seed and learning rate train together, up to `--group_size` of them in one vmapped
program (`group.train_group`), each still writing its own run directory as if it had trained alone. Groups
train in worker processes, `--jobs` at a time (default: one per CPU core), each pinned to its own core: on a
CPU host a small net trains fastest on one core, and independent processes on separate cores scale.
At the end `WORKDIR/summary.csv` and `WORKDIR/summary.md` hold one row per point (`summarize`).

A point whose run directory holds a run made with another config than the point's now (the sweep file was
edited: `changed_points`; `RESUMABLE_CHANGES` such as num_steps aside) is refused, named with the keys that
differ, and counted as failed; with `restart_changed` it is retrained in a fresh directory, the old one kept
as `WORKDIR/<point>.old-<time>`. The command exits non-zero if any point failed.
"""

from __future__ import annotations

import csv
import ctypes
import importlib.util
import io
import itertools
import json
import os
import signal
import sys
import time
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import ml_collections
from absl import logging

from bnrepro import config_schema, cpu, figures
from bnrepro.sweep.group import compatible, train_group
from bnrepro.training import loop
from bnrepro.training.run_dir import CHECKPOINT_DIR, recorded_config_changes, write_atomically

STATUS_FILE = "sweep_status.json"
SUMMARY_CSV, SUMMARY_MD = "summary.csv", "summary.md"
PR_SET_PDEATHSIG = 1  # prctl(2)
DONE = ("finished", "diverged")  # statuses a re-run skips; "failed" points are tried again
# Models per vmapped group: on one CPU core, 8 MNIST MLPs train at ~1.8x one model's steps/s in all.
DEFAULT_GROUP_SIZE = 8


class Sweep(NamedTuple):
    """A base config, the overrides of each point (dotted keys, e.g. "model.activation"), and the test
    accuracy whose first reaching step the summary reports."""

    base: ml_collections.ConfigDict
    points: list[dict[str, Any]]
    threshold: float


def product(axes: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """Every combination of the axes' values, the last axis varying fastest."""
    return [dict(zip(axes, values)) for values in itertools.product(*axes.values())]


def point_name(overrides: Mapping[str, Any]) -> str:
    """The run directory name of a point: its overrides as `key=value` joined by commas, in their order."""
    if not overrides:
        return "base"
    parts = [f"{key}={value:g}" if isinstance(value, float) else f"{key}={value}" for key, value in overrides.items()]
    return ",".join(part.replace("/", "_").replace(" ", "") for part in parts)


def point_config(base: ml_collections.ConfigDict, overrides: Mapping[str, Any]) -> ml_collections.ConfigDict:
    """`base` with `overrides` applied; a key the base lacks is a ValueError naming it (and its new name, if it
    was renamed)."""
    config = base.copy_and_resolve_references()
    for key, value in overrides.items():
        config_schema.check_not_renamed(key)
        *sections, name = key.split(".")
        node = config
        for section in sections:
            node = node.get(section)
            if not isinstance(node, ml_collections.ConfigDict):
                message = f"sweep point {dict(overrides)}: config.{key}: no such section {section!r}."
                raise ValueError(message)  # noqa: TRY004 -- a bad key in a sweep file, not a bad argument type
        if name not in node:
            raise ValueError(f"sweep point {dict(overrides)}: config.{key}: unknown key.")
        with node.ignore_type():  # an int learning rate in a sweep file is still a learning rate
            node[name] = value
    return config


def load_sweep(spec: str) -> Sweep:
    """The `Sweep` of `PATH.py[:ARG]`: the file's `get_sweep(ARG)`. Sweep files import their base configs from
    the installed `configs` package, whatever the working directory."""
    path, _, arg = spec.partition(":")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--sweep={spec}: no file {path}.")
    module_spec = importlib.util.spec_from_file_location(Path(path).stem, path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    sweep = module.get_sweep(arg) if arg else module.get_sweep()
    names = [point_name(p) for p in sweep.points]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"--sweep={spec}: points {duplicates} appear more than once.")
    return sweep


def read_status(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / STATUS_FILE
    return json.loads(path.read_text()) if path.exists() else None


def _write_status(run_dir: Path, status: dict[str, Any]) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / STATUS_FILE).write_text(json.dumps(status, indent=2) + "\n")
    logging.info("%s: %s", run_dir.name, status["status"])


def _failure(e: BaseException) -> dict[str, Any]:
    return {"status": "failed", "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}


def die_with_parent() -> None:
    """Called first thing in a worker: the kernel kills this process when the sweep that launched it dies
    (Linux's PR_SET_PDEATHSIG), so that a killed sweep leaves no orphan training on and its next run resumes
    cleanly from the checkpoints. Elsewhere, a no-op."""
    if sys.platform != "linux":
        return
    parent = os.getppid()
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if parent == 1 or os.getppid() != parent:  # the sweep died before the request took effect
        sys.exit(f"the sweep process {parent} is gone")


def run_points(sweep: Sweep, indices: Sequence[int], workdir: Path) -> None:
    """Trains the points `indices` to the end as one `group.train_group` (one vmapped program; resuming
    where they can) and records how each ended in its `sweep_status.json`: finished, diverged, or failed. A
    point whose config is invalid fails alone; an exception while training fails the whole group."""
    start = time.perf_counter()
    configs, run_dirs = [], []
    for index in indices:
        overrides = sweep.points[index]
        try:
            config = point_config(sweep.base, overrides)
            config_schema.validate(config)
        except Exception as e:  # noqa: BLE001 -- a bad point must not stop the others: it is recorded
            _write_status(workdir / point_name(overrides), {**_failure(e), "num_steps": 0, "wall_seconds": 0.0})
            continue
        configs.append(config)
        run_dirs.append(workdir / point_name(overrides))
    if not configs:
        return
    try:
        results = train_group(configs, run_dirs)
    except Exception as e:  # noqa: BLE001
        results = [e] * len(configs)
    wall_seconds = time.perf_counter() - start
    for config, run_dir, result in zip(configs, run_dirs, results):
        if isinstance(result, loop.DivergedError):
            status = {"status": "diverged", "error": str(result)}
        elif isinstance(result, BaseException):
            status = _failure(result)
        else:
            status = {"status": "finished"}
        _write_status(run_dir, {**status, "num_steps": config.num_steps, "wall_seconds": wall_seconds})


def _latest_checkpoint(run_dir: Path) -> int | None:
    steps = [int(p.name) for p in (run_dir / CHECKPOINT_DIR).glob("*") if p.name.isdigit()]
    return max(steps, default=None)


def groups_of(sweep: Sweep, indices: Sequence[int], workdir: Path, max_size: int) -> list[list[int]]:
    """The points `indices` in groups that can train together (`group.check_group`: they differ only in seed
    and learning rate, and their checkpoints are at the same step), each compatible set split into
    near-equal groups of at most `max_size`."""
    classes: list[list[int]] = []
    keys: list[tuple[ml_collections.ConfigDict, int | None]] = []
    for index in indices:
        overrides = sweep.points[index]
        try:
            config = point_config(sweep.base, overrides)
        except ValueError:
            classes.append([index])  # fails alone, with its error recorded by the worker
            keys.append((None, None))
            continue
        progress = _latest_checkpoint(workdir / point_name(overrides))
        for members, (first, step) in zip(classes, keys):
            if first is not None and step == progress and compatible(first, config):
                members.append(index)
                break
        else:
            classes.append([index])
            keys.append((config, progress))
    groups = []
    for members in classes:
        count = -(-len(members) // max(max_size, 1))
        groups += [members[i::count] for i in range(count)]
    return groups


def pending_points(sweep: Sweep, workdir: Path) -> list[int]:
    """The points not yet finished or diverged at their configured length."""
    pending = []
    for index, overrides in enumerate(sweep.points):
        status = read_status(workdir / point_name(overrides))
        length = overrides.get("num_steps", sweep.base.num_steps)
        if not (status and status["status"] in DONE and status["num_steps"] == length):
            pending.append(index)
    return pending


def changed_points(sweep: Sweep, workdir: Path) -> dict[int, str]:
    """The points whose run directory holds a run made with another config than the point's now, each with a
    one-line description of the keys that differ."""
    changed = {}
    for index, overrides in enumerate(sweep.points):
        try:
            config = point_config(sweep.base, overrides)
        except ValueError:
            continue  # a bad point fails in its worker, with its error recorded
        differences = recorded_config_changes(  # read as the config guard reads it
            config, workdir / point_name(overrides), config_schema.RENAMED_KEYS, config_schema.IMPLICIT_IN_OLD_RUNS
        )
        if differences:
            changed[index] = ", ".join(f"{key}: {old!r} -> {new!r}" for key, (old, new) in differences.items())
    return changed


def set_aside(run_dir: Path) -> Path:
    """Renames `run_dir` to `<run_dir>.old-<time>` (nothing is deleted) and returns the new path."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = run_dir.with_name(f"{run_dir.name}.old-{stamp}")
    suffix = 1
    while target.exists():
        target = run_dir.with_name(f"{run_dir.name}.old-{stamp}-{suffix}")
        suffix += 1
    run_dir.rename(target)
    return target


def run_sweep(
    spec: str,
    workdir: Path,
    jobs: int = 0,
    group_size: int = DEFAULT_GROUP_SIZE,
    restart_changed: bool = False,
) -> list[dict[str, Any]]:
    """Trains the sweep's unfinished points, in groups of at most `group_size` (`groups_of`), each group in a
    worker process pinned to a core, `jobs` at a time; then writes and returns the summary. A point recorded
    with another config than its own now (`changed_points`) is refused and summarized as failed, or, with
    `restart_changed`, its directory is set aside (`set_aside`) and it trains afresh."""
    sweep = load_sweep(spec)
    workdir.mkdir(parents=True, exist_ok=True)
    refused = {}
    for index, description in changed_points(sweep, workdir).items():
        run_dir = workdir / point_name(sweep.points[index])
        if restart_changed:
            old = set_aside(run_dir)
            print(f"{run_dir.name}: its config changed ({description}); retraining it, the old run kept in {old}.")
        else:
            refused[point_name(sweep.points[index])] = f"config changed since it was trained: {description}"
            print(
                f"{run_dir.name}: refused: {run_dir} holds a run made with another config ({description}); "
                "rerun with --restart_changed to retrain it (the old run is kept aside), or use another --workdir."
            )
    pending = [i for i in pending_points(sweep, workdir) if point_name(sweep.points[i]) not in refused]
    groups = groups_of(sweep, pending, workdir, group_size)
    done = len(sweep.points) - len(pending) - len(refused)
    print(
        f"{len(sweep.points)} points: {done} already done, {len(refused)} refused, {len(pending)} to train "
        f"in {len(groups)} groups."
    )
    commands = []
    for group in groups:
        names = [point_name(sweep.points[index]) for index in group]
        for name in names:
            (workdir / name).mkdir(exist_ok=True)
        points = ",".join(map(str, group))
        argv = [sys.executable, "-m", "bnrepro.sweep", f"--sweep={spec}", f"--workdir={workdir}", f"--points={points}"]
        commands.append((" + ".join(names), argv, workdir / names[0] / "train.log"))
    codes = cpu.run_pinned(commands, jobs)
    for group, (name, *_) in zip(groups, commands):
        code = codes[name]
        for index in group:
            run_dir = workdir / point_name(sweep.points[index])
            if code != 0 and read_status(run_dir) is None:  # the worker died before recording anything
                _write_status(
                    run_dir, {"status": "failed", "error": f"the worker exited with code {code}", "num_steps": 0}
                )
    return write_summary(sweep, workdir, refused)


def evaluations(run_dir: Path) -> list[dict[str, Any]]:
    """A point's evaluation records (`metrics.jsonl`), by step; none if it has not evaluated yet."""
    try:
        return figures.read_evaluations(run_dir, required=("step", "test_accuracy"))
    except (FileNotFoundError, ValueError):
        return []


def summarize(sweep: Sweep, workdir: Path, refused: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """One row per point: its overrides, then how it ended (from `sweep_status.json`) and its test accuracy
    (from `metrics.jsonl`): final, best and the step of the best, the first step at or above the sweep's
    threshold, and the wall time of the invocation that ended it. A point in `refused` (name: why) is failed,
    with no numbers: its run directory holds another config's run."""
    rows = []
    for overrides in sweep.points:
        run_dir = workdir / point_name(overrides)
        status = read_status(run_dir) or {"status": "not run"}
        records = evaluations(run_dir)
        if refused and point_name(overrides) in refused:  # another config's numbers are not this point's
            status, records = {"status": "failed", "error": refused[point_name(overrides)]}, []
        row = {**overrides, "status": status["status"]}
        accuracies = [r["test_accuracy"] for r in records]
        best = max(range(len(accuracies)), key=accuracies.__getitem__) if accuracies else None
        reached = [r["step"] for r in records if r["test_accuracy"] >= sweep.threshold]
        row.update(
            final_accuracy=accuracies[-1] if accuracies else None,
            best_accuracy=accuracies[best] if accuracies else None,
            best_step=records[best]["step"] if accuracies else None,
            steps_to_threshold=reached[0] if reached else None,
            wall_seconds=status.get("wall_seconds"),
            error=status.get("error", ""),
        )
        rows.append(row)
    return rows


def write_summary(sweep: Sweep, workdir: Path, refused: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """`summary.csv` and `summary.md` in `workdir` (`summarize`), each written atomically; returns the rows."""
    rows = summarize(sweep, workdir, refused)
    columns = summary_columns(rows)
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    write_atomically(workdir / SUMMARY_CSV, table.getvalue())
    write_atomically(workdir / SUMMARY_MD, markdown_table(rows, sweep.threshold) + "\n")
    return rows


def summary_columns(rows: list[dict[str, Any]]) -> list[str]:
    """The summary's columns: every key of any row, in the order they first appear."""
    return list(dict.fromkeys(key for row in rows for key in row))


def markdown_table(rows: list[dict[str, Any]], threshold: float) -> str:
    """The summary rows as a Markdown table (`summary.md`): accuracies in %, the error column only if a point
    failed."""
    columns = summary_columns(rows)

    def cell(key: str, value: Any) -> str:
        if value is None:
            return "—"
        if key.endswith("accuracy"):
            return f"{100 * value:.2f}%"
        if key == "wall_seconds":
            return f"{value:.0f}"
        if key == "error":
            return str(value).splitlines()[0][:80] if value else ""
        return f"{value:g}" if isinstance(value, float) else str(value)

    shown = [c for c in columns if c != "error" or any(row.get("error") for row in rows)]
    header = [f"steps to {100 * threshold:g}%" if c == "steps_to_threshold" else c for c in shown]
    return figures.markdown_table(rows, shown, cell, header)
