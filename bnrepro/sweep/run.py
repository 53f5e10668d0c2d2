"""A sweep from start to end (`run_sweep`): which points train and in which groups (`bnrepro.sweep.plan`), the
groups trained as Ray tasks (`bnrepro.sweep.engine`), then the summary (`bnrepro.sweep.summary`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bnrepro.sweep import engine
from bnrepro.sweep.plan import changed_points, check_points, groups_of, is_done, pending_points, set_aside
from bnrepro.sweep.points import Sweep, load_sweep
from bnrepro.sweep.status import read_status, write_status
from bnrepro.sweep.summary import write_summary

# Models per vmapped group: a group pays start-up and compilation once (`bnrepro.sweep.group`), its steps about
# what its models' steps cost one by one.
DEFAULT_GROUP_SIZE = 8


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
    returns the summary. Every point's config is checked first (`check_points`): a bad one stops the sweep before
    anything starts, in one line. A point recorded with another config than its own now (`changed_points`) is refused
    and summarized as failed, or, with `restart_changed`, its directory is set aside (`set_aside`) and it trains
    afresh."""
    sweep = load_sweep(spec) if isinstance(spec, str) else spec
    check_points(sweep)
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
        if outcome.error is not None and not is_done(sweep, index, workdir):
            write_status(run_dir, {"status": "failed", "error": outcome.error, "num_steps": 0})
        status = read_status(run_dir) or {"status": "not run"}
        where = f" on {status['host']}" if status.get("host") else ""
        error = f": {status['error'].splitlines()[0][:200]}" if status.get("error") else ""
        print(f"{run_dir.name}: {status['status']}{where}{error}", flush=True)
