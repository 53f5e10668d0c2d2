"""Table 2 of the paper, CPU-scale: trains the six runs of `configs/fashion_table2.py` (unless done) and prints,
as the paper does, the steps each needs to reach the Inception analogue's best accuracy and its own best.

    python scripts/table2.py --workdir=runs/table2 [--quick] [--jobs=2] [-- --config.KEY=VALUE ...]

Runs train `--jobs` at a time, each pinned to its own CPU core (`cpu.run_pinned`); their logs go to WORKDIR/VARIANT.log.
Arguments after `--` go to every run's `bnrepro.main`. Re-running resumes unfinished runs and skips finished ones
(`bnrepro.main` does both). It works from any working directory (the config file is found in the installed
`configs` package). If a run fails, its name and its log's last lines are shown, no table is written, and the
script exits with 1.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from absl import app, flags

import configs
from bnrepro import cpu, figures

_WORKDIR = flags.DEFINE_string("workdir", "runs/table2", "Directory holding one run directory per variant.")
_QUICK = flags.DEFINE_bool("quick", False, "The few-hundred-step variants (a smoke test, not the result).")
_JOBS = flags.DEFINE_integer("jobs", 0, "Runs trained at once (0: one per available CPU core).")
CONFIG_FILE = Path(configs.__file__).resolve().parent / "fashion_table2.py"
LOG_TAIL_LINES = 15


def train_all(workdir: Path, quick: bool, jobs: int, extra_flags: list[str] = ()) -> list[str]:
    """Trains every variant, `jobs` at a time, each process pinned to one core (`cpu.run_pinned`); prints the
    last lines of the log of each run that failed and returns their names."""
    commands = []
    for variant in figures.TABLE2_RUNS:
        argument = f"{variant},quick" if quick else variant
        command = [sys.executable, "-m", "bnrepro.main", f"--config={CONFIG_FILE}:{argument}",
                   f"--workdir={workdir / variant}", *extra_flags]  # fmt: skip
        commands.append((variant, command, workdir / f"{variant}.log"))
    codes = cpu.run_pinned(commands, jobs)
    failed = [(variant, log) for variant, _, log in commands if codes[variant] != 0]
    for variant, log in failed:
        tail = log.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:] if log.exists() else ["(no log)"]
        print(f"\nThe {variant} run failed (exit code {codes[variant]}); the end of {log}:", *tail, sep="\n")
    return [variant for variant, _ in failed]


def main(argv: list[str]) -> int:
    extra_flags = argv[1:]  # what followed `--`
    workdir = Path(_WORKDIR.value)
    workdir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    failed = train_all(workdir, _QUICK.value, _JOBS.value, extra_flags)
    if failed:
        print(
            f"\n{len(failed)} of {len(figures.TABLE2_RUNS)} Table 2 runs failed: {', '.join(failed)}; no table written."
        )
        return 1
    print(f"\nTable 2, CPU scale ({'quick' if _QUICK.value else 'full'}; trained in "
          f"{time.perf_counter() - start:.0f} s):\n{figures.table2(workdir)}")  # fmt: skip
    (workdir / "table2.md").write_text(figures.table2(workdir) + "\n")
    return 0


if __name__ == "__main__":
    app.run(main)
