"""Reproduces the paper's Figure 1 (Sec. 4.1): the MNIST MLP with and without BN, 50k steps each, then the figure.

    python scripts/reproduce_figure1.py [--config.KEY=VALUE ...]     (what scripts/reproduce_figure1.sh runs)

The two runs are a sweep (`configs/sweeps/figure1.py`) trained like every sweep, on a local Ray instance, each
on a core of its own (a net this small runs fastest on one core); their logs are RUNS_DIR/mnist_VARIANT/train.log.
Re-running resumes unfinished runs. Extra arguments override both runs' configs, e.g. `--config.num_steps=5000`;
RUNS_DIR (default runs) says where to write. If a run fails, its error is shown and nothing is plotted.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import configs
from bnrepro import sweep
from bnrepro.cli import config_overrides, quiet_orbax, user_errors_in_one_line
from bnrepro.sweep import points

SWEEP_FILE = Path(configs.__file__).resolve().parent / "sweeps" / "figure1.py"


@user_errors_in_one_line
def main(extra_flags: list[str]) -> int:
    start = time.perf_counter()
    runs = Path(os.environ.get("RUNS_DIR", "runs"))
    figure1 = points.with_overrides(sweep.load_sweep(str(SWEEP_FILE)), config_overrides(extra_flags))
    quiet_orbax()
    if sweep.report_unfinished(figure1, runs, sweep.run_sweep(figure1, runs)):
        return 1
    plot = [sys.executable, "scripts/plot_figure1.py", f"--baseline={runs / 'mnist_baseline'}",
            f"--bn={runs / 'mnist_bn'}", f"--out={runs / 'figure1.png'}"]  # fmt: skip
    if subprocess.run(plot, check=False).returncode != 0:
        return 1
    print(f"Figure 1 reproduced in {time.perf_counter() - start:.0f} s: {runs / 'figure1.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
