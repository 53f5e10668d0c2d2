"""Table 2 of the paper, CPU-scale: trains the six runs of `configs/fashion_table2.py` (unless done) and prints,
as the paper does, the steps each needs to reach the Inception analogue's best accuracy and its own best.

    python scripts/table2.py --workdir=runs/table2 [--quick] [--jobs=2]

Runs train `--jobs` at a time, each pinned to its own CPU core (`cpu.run_pinned`); their logs go to WORKDIR/VARIANT.log.
Re-running resumes unfinished runs and skips finished ones (`bnrepro.main` does both).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from absl import app, flags

from bnrepro import cpu, figures

_WORKDIR = flags.DEFINE_string("workdir", "runs/table2", "Directory holding one run directory per variant.")
_QUICK = flags.DEFINE_bool("quick", False, "The few-hundred-step variants (a smoke test, not the result).")
_JOBS = flags.DEFINE_integer("jobs", 0, "Runs trained at once (0: one per available CPU core).")


def train_all(workdir: Path, quick: bool, jobs: int) -> None:
    """Trains every variant, `jobs` at a time, each process pinned to one core (`cpu.run_pinned`)."""
    commands = []
    for variant in figures.TABLE2_RUNS:
        argument = f"{variant},quick" if quick else variant
        command = [sys.executable, "-m", "bnrepro.main", f"--config=configs/fashion_table2.py:{argument}",
                   f"--workdir={workdir / variant}"]  # fmt: skip
        commands.append((variant, command, workdir / f"{variant}.log"))
    cpu.run_pinned(commands, jobs)


def main(argv: list[str]) -> None:
    del argv
    workdir = Path(_WORKDIR.value)
    workdir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    train_all(workdir, _QUICK.value, _JOBS.value)
    print(f"\nTable 2, CPU scale ({'quick' if _QUICK.value else 'full'}; trained in "
          f"{time.perf_counter() - start:.0f} s):\n{figures.table2(workdir)}")  # fmt: skip
    (workdir / "table2.md").write_text(figures.table2(workdir) + "\n")


if __name__ == "__main__":
    app.run(main)
