"""The sweep CLI: `python -m bnrepro.sweep --sweep=configs/sweeps/NAME.py[:ARG] --workdir=DIR [--jobs=N]
[--group_size=N]`.

Trains the sweep's unfinished points (see `bnrepro.sweep`) and prints the summary table. With `--points=I,J,..`
it is one worker process, training those points of the sweep as one group (how the sweep runs its points).
"""

import time
from pathlib import Path

from absl import app, flags

from bnrepro import sweep

_SWEEP = flags.DEFINE_string("sweep", None, "Sweep file, PATH.py or PATH.py:ARG (passed to its get_sweep).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory holding one run directory per point and the summary.")
_JOBS = flags.DEFINE_integer("jobs", 0, "Points trained at once, each pinned to a core (0: one per core).")
_GROUP_SIZE = flags.DEFINE_integer("group_size", sweep.DEFAULT_GROUP_SIZE, "Most points in one vmapped group.")
_POINTS = flags.DEFINE_list("points", None, "Internal: train only these points, as one group, in this process.")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    workdir = Path(_WORKDIR.value)
    if _POINTS.value is not None:  # a worker process
        sweep.die_with_parent()
        sweep.run_points(sweep.load_sweep(_SWEEP.value), [int(i) for i in _POINTS.value], workdir)
        return
    start = time.perf_counter()
    rows = sweep.run_sweep(_SWEEP.value, workdir, _JOBS.value, _GROUP_SIZE.value)
    print(f"\nSweep {_SWEEP.value}: {len(rows)} points, {time.perf_counter() - start:.0f} s.")
    print((workdir / sweep.SUMMARY_MD).read_text())


if __name__ == "__main__":
    flags.mark_flags_as_required(["sweep", "workdir"])
    app.run(main)
