"""The sweep CLI: `python -m bnrepro.sweep --sweep=configs/sweeps/NAME.py[:ARG] --workdir=DIR [--jobs=N]
[--group_size=N]`.

Trains the sweep's unfinished points (see `bnrepro.sweep`) and prints the summary table; exits with 1 if a
point failed (`--restart_changed` retrains the points whose config the sweep file changed). With `--points=I,J,..`
it is one worker process, training those points of the sweep as one group (how the sweep runs its points).
"""

import time

from absl import app, flags

from bnrepro import sweep
from bnrepro.cli import quiet_orbax, user_errors_in_one_line, workdir_path
from bnrepro.training import run_dir

_SWEEP = flags.DEFINE_string("sweep", None, "Sweep file, PATH.py or PATH.py:ARG (passed to its get_sweep).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory holding one run directory per point and the summary.")
_JOBS = flags.DEFINE_integer("jobs", 0, "Points trained at once, each pinned to a core (0: one per core).")
_GROUP_SIZE = flags.DEFINE_integer("group_size", sweep.DEFAULT_GROUP_SIZE, "Most points in one vmapped group.")
_RESTART_CHANGED = flags.DEFINE_bool(
    "restart_changed",
    False,
    "Retrain the points whose run directory holds a run made with another config (the sweep file was edited) in a "
    "fresh directory, the old one kept as POINT.old-TIME; without it they are refused and count as failed.",
)
_POINTS = flags.DEFINE_list("points", None, "Internal: train only these points, as one group, in this process.")


@user_errors_in_one_line
def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    quiet_orbax()
    workdir = workdir_path(_WORKDIR.value)
    if _POINTS.value is not None:  # a worker process (each point's run directory is locked by the loop)
        sweep.die_with_parent()
        sweep.run_points(sweep.load_sweep(_SWEEP.value), [int(i) for i in _POINTS.value], workdir)
        return 0
    start = time.perf_counter()
    with run_dir.locked(workdir):  # one driver per sweep directory: a second one is refused at once
        rows = sweep.run_sweep(_SWEEP.value, workdir, _JOBS.value, _GROUP_SIZE.value, _RESTART_CHANGED.value)
    print(f"\nSweep {_SWEEP.value}: {len(rows)} points, {time.perf_counter() - start:.0f} s.")
    print((workdir / sweep.SUMMARY_MD).read_text())
    names = [sweep.point_name(point) for point in sweep.load_sweep(_SWEEP.value).points]
    failed = [name for name, row in zip(names, rows) if row["status"] == "failed"]
    if failed:
        print(f"{len(failed)} of {len(rows)} points failed: {', '.join(failed)} (see {workdir / sweep.SUMMARY_MD}).")
        return 1
    return 0


if __name__ == "__main__":
    flags.mark_flags_as_required(["sweep", "workdir"])
    app.run(main)
