"""The sweep CLI: `python -m bnrepro.sweep --sweep=configs/sweeps/NAME.py[:ARG] --workdir=DIR [--jobs=N]`.

Trains the sweep's unfinished points (see `bnrepro.sweep`) and prints the summary table. With `--point=I` it is
one worker process, training point I of the sweep in this process (how the sweep runs its points).
"""

import time
from pathlib import Path

from absl import app, flags

from bnrepro import sweep

_SWEEP = flags.DEFINE_string("sweep", None, "Sweep file, PATH.py or PATH.py:ARG (passed to its get_sweep).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory holding one run directory per point and the summary.")
_JOBS = flags.DEFINE_integer("jobs", 0, "Points trained at once, each pinned to a core (0: one per core).")
_POINT = flags.DEFINE_integer("point", None, "Internal: train only this point, in this process.")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    workdir = Path(_WORKDIR.value)
    if _POINT.value is not None:  # a worker process
        spec = sweep.load_sweep(_SWEEP.value)
        sweep.run_point(spec, spec.points[_POINT.value], workdir)
        return
    start = time.perf_counter()
    rows = sweep.run_sweep(_SWEEP.value, workdir, _JOBS.value)
    print(f"\nSweep {_SWEEP.value}: {len(rows)} points, {time.perf_counter() - start:.0f} s.")
    print((workdir / sweep.SUMMARY_MD).read_text())


if __name__ == "__main__":
    flags.mark_flags_as_required(["sweep", "workdir"])
    app.run(main)
