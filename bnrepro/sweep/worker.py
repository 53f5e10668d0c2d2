"""What a sweep's worker runs: a group of points trained to the end as one program, each point's end recorded
in its run directory (`run_points`, called inside a Ray task by `bnrepro.sweep.engine`)."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bnrepro.sweep.group import train_group
from bnrepro.sweep.points import Sweep, point_config
from bnrepro.sweep.status import failure, write_status
from bnrepro.training import loop, preemption


def run_points(sweep: Sweep, indices: Sequence[int], workdir: Path, where: Mapping[str, Any] | None = None) -> None:
    """Trains the points `indices` to the end as one `group.train_group` (one vmapped program; resuming
    where they can) and records how each ended in its `sweep_status.json`, with `where` it trained (node,
    devices): finished, diverged, or failed. The points' configs were checked as the sweep started
    (`bnrepro.sweep.plan.check_points`); an exception while training fails the whole group, except
    `preemption.Stopped` (a stopping signal: the group checkpointed), which leaves the points to resume."""
    start, where = time.perf_counter(), where or {}
    configs = [point_config(sweep.base, sweep.points[index]) for index in indices]  # checked as the sweep started
    run_dirs = [workdir / sweep.run_name(index) for index in indices]
    try:
        results = train_group(configs, run_dirs)
    except preemption.Stopped:
        raise
    except Exception as e:  # noqa: BLE001
        results = [e] * len(configs)
    wall_seconds = time.perf_counter() - start
    for config, run_dir, result in zip(configs, run_dirs, results):
        if isinstance(result, loop.DivergedError):
            status = {"status": "diverged", "error": str(result)}
        elif isinstance(result, BaseException):
            status = failure(result)
        else:
            status = {"status": "finished"}
        write_status(run_dir, {**status, "num_steps": config.num_steps, "wall_seconds": wall_seconds, **where})
