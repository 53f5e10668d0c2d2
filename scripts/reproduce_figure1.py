"""Reproduces the paper's Figure 1 (Sec. 4.1): the MNIST MLP with and without BN, 3 seeds each (`--seeds=N`), 50k
steps, then the figure (the mean over the seeds and its min-max band) and its table (mean ± std over the seeds).

    python scripts/reproduce_figure1.py [--seeds=N] [--config.KEY=VALUE ...]  (what scripts/reproduce_figure1.sh runs)

The runs are a sweep (`configs/sweeps/figure1.py`) trained like every sweep, on a local Ray instance: each net's
seeds train as one vmapped group, the two groups each on a core of its own; their logs are
RUNS_DIR/mnist_VARIANT/train.log. Seed 0 is RUNS_DIR/mnist_VARIANT, seed N RUNS_DIR/mnist_VARIANT_seedN (a run
made before there were seeds is seed 0, and is kept). Re-running resumes unfinished runs. Extra arguments
override every run's config, e.g. `--config.num_steps=5000`; RUNS_DIR (default runs) says where to write. If a
run fails, its error is shown and nothing is plotted.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import configs
from bnrepro.cli import parse_overrides, quiet_orbax, user_errors_in_one_line
from bnrepro.sweep import points, run, summary

SWEEP_FILE = Path(configs.__file__).resolve().parent / "sweeps" / "figure1.py"


def seeds_argument(extra_flags: list[str]) -> tuple[str, list[str]]:
    """The sweep file's argument from `--seeds=N` among `extra_flags` ("" for its default), and the other flags."""
    seeds = [flag.removeprefix("--seeds=") for flag in extra_flags if flag.startswith("--seeds=")]
    if seeds and not (len(seeds) == 1 and seeds[0].isdigit() and int(seeds[0]) > 0):
        raise ValueError(f"--seeds={','.join(seeds)}: expected one positive number of seeds.")
    return (seeds[0] if seeds else ""), [flag for flag in extra_flags if not flag.startswith("--seeds=")]


@user_errors_in_one_line
def main(extra_flags: list[str]) -> int:
    start = time.perf_counter()
    runs = Path(os.environ.get("RUNS_DIR", "runs"))
    seeds, overrides = seeds_argument(extra_flags)
    figure1 = points.load_sweep(f"{SWEEP_FILE}:{seeds}")
    figure1 = points.with_overrides(figure1, parse_overrides(figure1.base, overrides))
    quiet_orbax()
    if summary.report_unfinished(figure1, runs, run.run_sweep(figure1, runs)):
        return 1
    plot = [sys.executable, "scripts/plot_figure1.py", f"--baseline={runs / 'mnist_baseline'}",
            f"--bn={runs / 'mnist_bn'}", f"--out={runs / 'figure1.png'}"]  # fmt: skip
    if subprocess.run(plot, check=False).returncode != 0:
        return 1
    print(f"Figure 1 reproduced in {time.perf_counter() - start:.0f} s: {runs / 'figure1.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
