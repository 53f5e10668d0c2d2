"""Sweep throughput: 16 MNIST MLP points (the BN sigmoid net of Figure 1, 4 learning rates x 4 seeds) trained
one after another with the single-run CLI, against the same 16 points as one `python -m bnrepro.sweep`
(vmapped groups in worker processes pinned to the cores), side by side in one run. Both start from nothing
(fresh workdirs, a JAX process per CLI run as a user would launch it) and train on the real MNIST.

    python scripts/bench_sweep.py [--steps=10000] [--group_size=8] [--jobs=0]

Prints the wall time of each and the speed-up, and the largest gap between the two runs of a point's final test
accuracy. Measured (defaults, 2-core x86 VM, otherwise idle; the sweep ran 2 groups of 8, one per core):

    | how | wall s | model-steps/s | speed-up |
    |---|---|---|---|
    | single-run CLI, one after another | 146.7 | 1091 | 1.00x |
    | python -m bnrepro.sweep | 47.3 | 3382 | 3.10x |

    Largest gap in final test accuracy between the two: 0.00 points.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from absl import app, flags

from bnrepro import sweep
from bnrepro.training.run_dir import METRICS_FILE

_STEPS = flags.DEFINE_integer("steps", 10_000, "SGD steps per point.")
_GROUP_SIZE = flags.DEFINE_integer("group_size", sweep.DEFAULT_GROUP_SIZE, "Most points per vmapped group.")
_JOBS = flags.DEFINE_integer("jobs", 0, "Worker processes at once (0: one per core).")

LEARNING_RATES = (0.05, 0.1, 0.2, 0.5)
SEEDS = (0, 1, 2, 3)
SWEEP_FILE = """
from bnrepro.sweep import Sweep, product
from configs import mnist_mlp


def get_sweep():
    base = mnist_mlp.get_config("bn")
    base.num_steps, base.checkpoint_every = {steps}, {steps}
    return Sweep(base, product({{"learning_rate": {rates}, "seed": {seeds}}}), threshold=0.97)
"""


def final_accuracy(run_dir: Path) -> float:
    return json.loads((run_dir / METRICS_FILE).read_text().splitlines()[-1])["test_accuracy"]


def main(argv: list[str]) -> None:
    del argv
    steps, root = _STEPS.value, Path(tempfile.mkdtemp(prefix="bench_sweep_"))
    points = [{"learning_rate": lr, "seed": seed} for lr in LEARNING_RATES for seed in SEEDS]

    start = time.perf_counter()
    for point in points:
        command = [
            sys.executable, "-m", "bnrepro.main", "--config=configs/mnist_mlp.py:bn",
            f"--workdir={root / 'cli' / sweep.point_name(point)}", f"--config.num_steps={steps}",
            f"--config.checkpoint_every={steps}", f"--config.learning_rate={point['learning_rate']}",
            f"--config.seed={point['seed']}",
        ]  # fmt: skip
        subprocess.run(command, check=True, capture_output=True)
    one_by_one = time.perf_counter() - start

    spec = root / "sweep16.py"
    spec.write_text(SWEEP_FILE.format(steps=steps, rates=LEARNING_RATES, seeds=SEEDS))
    start = time.perf_counter()
    command = [
        sys.executable, "-m", "bnrepro.sweep", f"--sweep={spec}", f"--workdir={root / 'sweep'}",
        f"--jobs={_JOBS.value}", f"--group_size={_GROUP_SIZE.value}",
    ]  # fmt: skip
    subprocess.run(command, check=True, capture_output=True)
    swept = time.perf_counter() - start

    gaps = [
        abs(final_accuracy(root / "cli" / sweep.point_name(p)) - final_accuracy(root / "sweep" / sweep.point_name(p)))
        for p in points
    ]
    print(f"\n16 points x {steps} steps (MNIST MLP with BN), wall time from nothing to 16 finished runs:\n")
    print("| how | wall s | model-steps/s | speed-up |")
    print("|---|---|---|---|")
    for name, seconds in (("single-run CLI, one after another", one_by_one), ("python -m bnrepro.sweep", swept)):
        print(f"| {name} | {seconds:.1f} | {16 * steps / seconds:.0f} | {one_by_one / seconds:.2f}x |")
    print(f"\nLargest gap in final test accuracy between the two: {100 * max(gaps):.2f} points (runs in: {root}).")


if __name__ == "__main__":
    app.run(main)
