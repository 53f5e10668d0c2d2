"""Ablation sweeps: a grid of configs trained as independent runs, resumable, summarized in one table.

    python -m bnrepro.sweep --sweep=configs/sweeps/mnist_activation_bn.py[:quick] --workdir=runs/sweep1

A sweep file's `get_sweep(arg)` returns a `Sweep` (`bnrepro.sweep.points`): a base config and a list of override
dicts (`product` of axes, plus any hand-listed points), optionally a name per point. Each point trains with
`bnrepro.training.loop` in its own run directory `WORKDIR/<key=value,...>` (or `WORKDIR/<name>`: the same
`metrics.jsonl`, checkpoints and TensorBoard files as a single run) and leaves `sweep_status.json` there when it
ends: finished, diverged (NaN loss) or failed (an exception, recorded with its traceback; or its task's worker
died), with the node it trained on. Re-running the command skips finished and diverged points and resumes the
rest from their last checkpoint, so Ctrl-C or SIGKILL loses at most the work since a point's last checkpoint.

Points that differ only in seed and learning rate train together, up to `--group_size` of them in one vmapped
program (`group.train_group`), each still writing its own run directory as if it had trained alone. Each group
is a Ray task (`bnrepro.sweep.engine`): on a local Ray instance, `--jobs` groups at once (default: one per CPU
core, each pinned to a core of its own), or across a Ray cluster's nodes and devices.
At the end `WORKDIR/summary.csv` and `WORKDIR/summary.md` hold one row per point (`summarize`), and
`WORKDIR/hparams` the same for TensorBoard's HParams tab.

A point whose run directory holds a run made with another config than the point's now (the sweep file was
edited: `changed_points`; `RESUMABLE_CHANGES` such as num_steps aside) is refused, named with the keys that
differ, and counted as failed; with `restart_changed` it is retrained in a fresh directory, the old one kept
as `WORKDIR/<point>.old-<time>`. The command exits non-zero if any point failed.
"""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import ml_collections

from bnrepro import config_schema, figures
from bnrepro.sweep import engine
from bnrepro.sweep.group import compatible
from bnrepro.sweep.hparams import write_hparams
from bnrepro.sweep.points import (
    STATUS_FILE,
    Sweep,
    load_sweep,
    point_config,
    point_name,
    product,
    read_status,
    run_points,
    seed_count,
    seeded,
    variant_overrides,
    write_status,
)
from bnrepro.training.run_dir import CHECKPOINT_DIR, recorded_config_changes, write_atomically

__all__ = [
    "STATUS_FILE", "Sweep", "load_sweep", "point_config", "point_name", "product", "read_status", "run_points",
    "seed_count", "seeded", "variant_overrides",
]  # fmt: skip
SUMMARY_CSV, SUMMARY_MD = "summary.csv", "summary.md"
DONE = ("finished", "diverged")  # statuses a re-run skips; "failed" points are tried again
# Models per vmapped group: a group pays start-up and compilation once (`bnrepro.sweep.group`), its steps about
# what its models' steps cost one by one.
DEFAULT_GROUP_SIZE = 8


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
        try:
            config = point_config(sweep.base, sweep.points[index])
        except ValueError:
            classes.append([index])  # fails alone, with its error recorded by the worker
            keys.append((None, None))
            continue
        progress = _latest_checkpoint(workdir / sweep.run_name(index))
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
    return [index for index in range(len(sweep.points)) if not _done(sweep, index, workdir)]


def _done(sweep: Sweep, index: int, workdir: Path) -> bool:
    """Whether point `index` finished or diverged at its configured length."""
    status = read_status(workdir / sweep.run_name(index))
    length = sweep.points[index].get("num_steps", sweep.base.num_steps)
    return bool(status and status["status"] in DONE and status["num_steps"] == length)


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
            config, workdir / sweep.run_name(index), config_schema.RENAMED_KEYS, config_schema.IMPLICIT_IN_OLD_RUNS
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
    spec: str | Sweep,
    workdir: Path,
    jobs: int = 0,
    group_size: int = DEFAULT_GROUP_SIZE,
    restart_changed: bool = False,
    resources: engine.Resources = engine.Resources(),  # noqa: B008 -- frozen
    address: str | None = None,
) -> list[dict[str, Any]]:
    """Trains the sweep's unfinished points (`spec`: a sweep file `PATH.py[:ARG]`, or a `Sweep`), in groups of at
    most `group_size` (`groups_of`), each group a Ray task (`engine.run_groups`) with `resources`, on the cluster
    at `address` or on a local instance that trains `jobs` groups at once (0: one per core); then writes and
    returns the summary. A point recorded with another config than its own now (`changed_points`) is refused
    and summarized as failed, or, with `restart_changed`, its directory is set aside (`set_aside`) and it trains
    afresh."""
    sweep = load_sweep(spec) if isinstance(spec, str) else spec
    workdir.mkdir(parents=True, exist_ok=True)
    refused = {}
    for index, description in changed_points(sweep, workdir).items():
        run_dir = workdir / sweep.run_name(index)
        if restart_changed:
            old = set_aside(run_dir)
            print(f"{run_dir.name}: its config changed ({description}); retraining it, the old run kept in {old}.")
        else:
            refused[run_dir.name] = f"config changed since it was trained: {description}"
            print(
                f"{run_dir.name}: refused: {run_dir} holds a run made with another config ({description}); "
                "rerun with --restart_changed to retrain it (the old run is kept aside), or use another --workdir."
            )
    pending = [i for i in pending_points(sweep, workdir) if sweep.run_name(i) not in refused]
    groups = groups_of(sweep, pending, workdir, group_size)
    done = len(sweep.points) - len(pending) - len(refused)
    print(
        f"{len(sweep.points)} points: {done} already done, {len(refused)} refused, {len(pending)} to train "
        f"in {len(groups)} groups.",
        flush=True,
    )
    if groups:
        engine.connect(address, num_cpus=max(1, round(jobs * resources.cpus_per_group)) if jobs else None)
        engine.run_groups(sweep, workdir, groups, resources, lambda outcome: _report(sweep, workdir, outcome))
    return write_summary(sweep, workdir, refused)


def _report(sweep: Sweep, workdir: Path, outcome: engine.GroupOutcome) -> None:
    """Prints how a group's points ended; records a failed task's cause as the status of each of its points
    that did not end on its own."""
    for index in outcome.indices:
        run_dir = workdir / sweep.run_name(index)
        if outcome.error is not None and not _done(sweep, index, workdir):
            write_status(run_dir, {"status": "failed", "error": outcome.error, "num_steps": 0})
        status = read_status(run_dir) or {"status": "not run"}
        where = f" on {status['host']}" if status.get("host") else ""
        error = f": {status['error'].splitlines()[0][:200]}" if status.get("error") else ""
        print(f"{run_dir.name}: {status['status']}{where}{error}", flush=True)


def report_unfinished(sweep: Sweep, workdir: Path, rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Prints, for each point of the summary `rows` that did not finish (failed, diverged, not run), its error and
    its run directory's log (its group's, linked); returns their run directory names. (For scripts whose every run
    must finish.)"""
    unfinished = [(sweep.run_name(i), row) for i, row in enumerate(rows) if row["status"] != "finished"]
    for name, row in unfinished:
        print(f"\nThe {name} run failed: {row['error'] or 'it did not run'} (log: {workdir / name / engine.LOG_FILE})")
    return [name for name, _ in unfinished]


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
    for index, overrides in enumerate(sweep.points):
        run_dir = workdir / sweep.run_name(index)
        status = read_status(run_dir) or {"status": "not run"}
        records = evaluations(run_dir)
        if refused and run_dir.name in refused:  # another config's numbers are not this point's
            status, records = {"status": "failed", "error": refused[run_dir.name]}, []
        row = {"name": run_dir.name} if sweep.names else {}
        row.update(overrides, status=status["status"])
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
    write_hparams(
        workdir, {sweep.run_name(i): p for i, p in enumerate(sweep.points)}, rows
    )  # WORKDIR/hparams for TensorBoard
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
