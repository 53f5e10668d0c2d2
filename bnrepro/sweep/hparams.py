"""A sweep's points for TensorBoard's HParams tab: `tensorboard --logdir=WORKDIR/hparams`.

    WORKDIR/hparams/events.out.tfevents.*           the experiment: every point's hparam names and the metrics
    WORKDIR/hparams/<point name>/events.out.tfevents.*   one session per point: its hparams and its metrics

Every point is a session, whatever its status: its overrides and its `status` (finished, diverged, failed,
not run) are its hparams, so failed and unrun points stay visible and can be filtered out in the tab. Its
metrics are the summary's `final_accuracy`, `best_accuracy` (test accuracy) and `steps_to_threshold`, each as a
scalar of that tag at step 0 in the point's run; a metric the point lacks (not evaluated, never at the
threshold) is not written. An override that is not a str, bool, int or float (a tuple, None) is its `str`, and
so is every value of a key whose values are of different kinds across the points, so that the experiment
gives each hparam one type.

The experiment is written once, at the root, with the union of all points' hparams and all three metrics:
TensorBoard takes the first experiment it finds, so one per session (as `SummaryWriter.add_hparams` writes)
would hide hparams and metrics that some sessions lack. The summaries themselves are
`tensorboardX.summary.hparams`'s.

This module imports neither jax nor the rest of the sweep package (which imports it): only tensorboardX.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Mapping, Sequence
from contextlib import closing
from pathlib import Path
from typing import Any

from tensorboardX import FileWriter
from tensorboardX.summary import hparams, scalar

HPARAMS_DIR = "hparams"
METRICS = ("final_accuracy", "best_accuracy", "steps_to_threshold")  # summary columns shown as metrics

HParamValue = str | bool | int | float


def _kind(value: Any) -> type:
    """The HParams type `value` is written as: bool, float (any int or float) or str (anything else)."""
    if isinstance(value, bool):
        return bool
    return float if isinstance(value, int | float) else str


def hparam_values(points: Sequence[Mapping[str, Any]]) -> list[dict[str, HParamValue]]:
    """Each point's overrides as hparam values: kept if str, bool, int or float and every point's value for
    that key is of the same kind (`_kind`), else their `str`."""
    kinds: dict[str, set[type]] = {}
    for overrides in points:
        for key, value in overrides.items():
            kinds.setdefault(key, set()).add(_kind(value))
    return [
        {
            key: value if len(kinds[key]) == 1 and _kind(value) is not str else str(value)
            for key, value in overrides.items()
        }
        for overrides in points
    ]


def _write_hparams_dir(
    directory: Path, names: Sequence[str], sessions: Sequence[dict[str, HParamValue]], rows: Sequence[Mapping[str, Any]]
) -> None:
    """The experiment at `directory` and one session run `directory/<name>` per point."""
    union: dict[str, HParamValue] = {}  # each hparam once, with a value of its type
    for session in sessions:
        for key, value in session.items():
            union.setdefault(key, value)
    experiment, _, _ = hparams(union, dict.fromkeys(METRICS, 0.0))
    with closing(FileWriter(directory)) as writer:
        writer.add_summary(experiment)
    for name, session, row in zip(names, sessions, rows):
        metrics = {tag: row[tag] for tag in METRICS if row.get(tag) is not None}
        _, start, end = hparams(session, metrics)
        with closing(FileWriter(directory / name)) as writer:
            writer.add_summary(start)
            for tag, value in metrics.items():
                writer.add_summary(scalar(tag, value), global_step=0)
            writer.add_summary(end)


def write_hparams(workdir: Path, points: Mapping[str, Mapping[str, Any]], rows: Sequence[Mapping[str, Any]]) -> Path:
    """Writes `workdir/hparams` afresh and returns it: the sweep's `points` (run directory name: overrides) with
    their summary `rows` (`bnrepro.sweep.summarize`, in the same order). It is written in a temporary folder
    that then replaces the old one, so that a reader sees the old sessions or the new, never part of them."""
    if len(points) != len(rows):
        raise ValueError(f"{len(points)} points but {len(rows)} summary rows.")
    sessions = [{**values, "status": row["status"]} for values, row in zip(hparam_values(list(points.values())), rows)]
    target = workdir / HPARAMS_DIR
    fresh = Path(tempfile.mkdtemp(dir=workdir, prefix=f".{HPARAMS_DIR}.new-"))
    try:
        _write_hparams_dir(fresh, list(points), sessions, rows)
        if target.exists():
            old = Path(tempfile.mkdtemp(dir=workdir, prefix=f".{HPARAMS_DIR}.old-"))
            target.rename(old / HPARAMS_DIR)
            fresh.rename(target)
            shutil.rmtree(old)
        else:
            fresh.rename(target)
    except BaseException:
        shutil.rmtree(fresh, ignore_errors=True)
        raise
    return target
