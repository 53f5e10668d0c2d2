"""Table 2 of the paper, CPU-scale: trains the six runs of `configs/fashion_table2.py` as one sweep
(`configs/sweeps/table2.py`, on Ray like every sweep) unless done, and prints, as the paper does, the steps each
needs to reach the Inception analogue's best accuracy and its own best.

    python scripts/table2.py --workdir=runs/table2 [--quick] [--seeds=3] [--jobs=2] [--address=auto]
        [-- --config.KEY=VALUE ...]

Runs train `--jobs` groups at a time on a local Ray instance, each pinned to its own CPU core (or on the cluster
at `--address`); each run's log is in its group's `train.log` (WORKDIR/VARIANT/train.log). Arguments after `--`
override every run's config. Re-running resumes unfinished runs and skips finished ones. It works from any
working directory. If a run fails, its name and error are shown, no table is written, and the script exits with 1.
With `--seeds=N` every run trains with seeds 0 to N-1 (seed S > 0 in WORKDIR/VARIANT_seedS) and the table gives
the mean ± std over the seeds.
"""

from __future__ import annotations

import time
from pathlib import Path

from absl import app, flags

import configs
from bnrepro import figures
from bnrepro.cli import parse_overrides, quiet_orbax, user_errors_in_one_line, workdir_path
from bnrepro.sweep import points, run, summary

_WORKDIR = flags.DEFINE_string("workdir", "runs/table2", "Directory holding one run directory per variant.")
_QUICK = flags.DEFINE_bool("quick", False, "The few-hundred-step variants (a smoke test, not the result).")
_SEEDS = flags.DEFINE_integer("seeds", 1, "Seeds of every run (0 to N-1): the table gives mean ± std over them.")
_JOBS = flags.DEFINE_integer("jobs", 0, "Runs trained at once on a local Ray instance (0: one per CPU core).")
_ADDRESS = flags.DEFINE_string("address", None, "A running Ray cluster to train on (auto or HOST:PORT).")
SWEEP_FILE = Path(configs.__file__).resolve().parent / "sweeps" / "table2.py"


def train_all(workdir: Path, arg: str, jobs: int, overrides: list[str], address: str | None) -> list[str]:
    """Trains every variant (the sweep file's `arg`) as one sweep, with the `--config.KEY=VALUE` `overrides`;
    prints each failed run's error and log, returns their names."""
    table2 = points.load_sweep(f"{SWEEP_FILE}:{arg}")
    spec = points.with_overrides(table2, parse_overrides(table2.base, overrides))
    return summary.report_unfinished(spec, workdir, run.run_sweep(spec, workdir, jobs, address=address))


@user_errors_in_one_line
def main(argv: list[str]) -> int:
    quiet_orbax()
    workdir = workdir_path(_WORKDIR.value)
    start = time.perf_counter()
    arg = ",".join(["quick"] * _QUICK.value + [f"seeds={_SEEDS.value}"])
    failed = train_all(workdir, arg, _JOBS.value, argv[1:], _ADDRESS.value)  # argv[1:]: what followed `--`
    if failed:
        count = len(figures.TABLE2_RUNS) * _SEEDS.value
        print(f"\n{len(failed)} of {count} Table 2 runs failed: {', '.join(failed)}; no table written.")
        return 1
    print(f"\nTable 2, CPU scale ({'quick' if _QUICK.value else 'full'}; trained in "
          f"{time.perf_counter() - start:.0f} s):\n{figures.table2(workdir)}")  # fmt: skip
    (workdir / "table2.md").write_text(figures.table2(workdir) + "\n")
    return 0


if __name__ == "__main__":
    app.run(main)
