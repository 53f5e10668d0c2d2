"""A sweep's results, one row per point: how it ended and its test accuracy (`summarize`), written as
`WORKDIR/summary.csv`, `WORKDIR/summary.md` and `WORKDIR/hparams` for TensorBoard (`write_summary`).
Only reads the run directories: imports neither jax nor ray."""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bnrepro import figures
from bnrepro.sweep.hparams import write_hparams
from bnrepro.sweep.points import Sweep
from bnrepro.sweep.status import LOG_FILE, read_status
from bnrepro.training.run_dir import write_atomically

SUMMARY_CSV, SUMMARY_MD = "summary.csv", "summary.md"


def report_unfinished(sweep: Sweep, workdir: Path, rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Prints, for each point of the summary `rows` that did not finish (failed, diverged, not run), its error and
    its run directory's log (its group's, linked); returns their run directory names. (For scripts whose every run
    must finish.)"""
    unfinished = [(sweep.run_name(i), row) for i, row in enumerate(rows) if row["status"] != "finished"]
    for name, row in unfinished:
        print(f"\nThe {name} run failed: {row['error'] or 'it did not run'} (log: {workdir / name / LOG_FILE})")
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
        row.update(
            final_accuracy=accuracies[-1] if accuracies else None,
            best_accuracy=accuracies[best] if accuracies else None,
            best_step=records[best]["step"] if accuracies else None,
            steps_to_threshold=figures.steps_to(records, sweep.threshold),
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
