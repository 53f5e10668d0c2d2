"""Reproduces the paper's Figure 1 (Sec. 4.1): the MNIST MLP with and without BN, 50k steps each, then the figure.

    python scripts/reproduce_figure1.py [--config.KEY=VALUE ...]     (what scripts/reproduce_figure1.sh runs)

The two runs train at once, each in a process pinned to a core of its own (`bnrepro.cpu.run_pinned`; a net this
small runs fastest on one core), their logs in RUNS_DIR/mnist_VARIANT.log. Re-running resumes unfinished runs.
Extra arguments go to both runs, e.g. `--config.num_steps=5000`; RUNS_DIR (default runs) says where to write.
If a run fails, its log's last lines are shown and nothing is plotted.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from bnrepro import cpu

VARIANTS = ("baseline", "bn")


def main(extra_flags: list[str]) -> int:
    start = time.perf_counter()
    runs = Path(os.environ.get("RUNS_DIR", "runs"))
    runs.mkdir(parents=True, exist_ok=True)
    commands = [
        (variant, [sys.executable, "-m", "bnrepro.main", f"--config=configs/mnist_mlp.py:{variant}",
                   f"--workdir={runs / f'mnist_{variant}'}", *extra_flags], runs / f"mnist_{variant}.log")
        for variant in VARIANTS
    ]  # fmt: skip
    codes = cpu.run_pinned(commands)
    failed = [(variant, log) for variant, _, log in commands if codes[variant] != 0]
    for variant, log in failed:
        tail = log.read_text().splitlines()[-15:]
        print(f"\nThe {variant} run failed (exit code {codes[variant]}); the end of {log}:", *tail, sep="\n")
    if failed:
        return 1
    plot = [sys.executable, "scripts/plot_figure1.py", f"--baseline={runs / 'mnist_baseline'}",
            f"--bn={runs / 'mnist_bn'}", f"--out={runs / 'figure1.png'}"]  # fmt: skip
    if subprocess.run(plot, check=False).returncode != 0:
        return 1
    print(f"Figure 1 reproduced in {time.perf_counter() - start:.0f} s: {runs / 'figure1.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
