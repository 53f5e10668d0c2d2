"""Which of a sweep's points train, and in which groups: every point's config checked before anything trains
(`check_points`), the points not yet done (`pending_points`), those whose run directory holds another config's run
(`changed_points`, set aside by `set_aside` to retrain them), and the groups that train together (`groups_of`)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import ml_collections

from bnrepro import config_schema
from bnrepro.sweep.group import compatible
from bnrepro.sweep.points import Sweep, point_config
from bnrepro.sweep.status import read_status
from bnrepro.training.run_dir import CHECKPOINT_DIR, recorded_config_changes

DONE = ("finished", "diverged")  # statuses a re-run skips; "failed" points are tried again


def check_points(sweep: Sweep) -> None:
    """Builds and validates every point's config (`config_schema.validate`), as a sweep starts, before Ray does: a
    bad point is a ValueError, one line naming the point and the key (and the other bad points, if any)."""
    errors = {}
    for index, overrides in enumerate(sweep.points):
        try:
            config_schema.validate(point_config(sweep.base, overrides))
        except (ValueError, TypeError) as e:  # TypeError: ml_collections refusing a value of another type
            errors[sweep.run_name(index)] = str(e).strip()
    if errors:
        (name, error), *others = errors.items()
        if others:
            names = [n for n, _ in others[:3]] + ["..."] * (len(others) > 3)
            error += f" ({len(others)} other points are refused too: {', '.join(names)})"
        raise ValueError(f"sweep point {name}: {error} Nothing trained.")


def latest_checkpoint(run_dir: Path) -> int | None:
    """The step of the run directory's latest checkpoint, or None if it has none."""
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
        progress = latest_checkpoint(workdir / sweep.run_name(index))
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
    return [index for index in range(len(sweep.points)) if not is_done(sweep, index, workdir)]


def is_done(sweep: Sweep, index: int, workdir: Path) -> bool:
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
