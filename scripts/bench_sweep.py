"""Sweep throughput: 16 MNIST MLP points (the BN sigmoid net of Figure 1, 4 learning rates x 4 seeds) trained
three ways, back to back in one invocation: one after another with the single-run CLI; as one
`python -m bnrepro.sweep` on the Ray engine (each vmapped group a Ray task, `bnrepro/sweep/engine.py`); and as one
`python -m bnrepro.sweep` of the previous engine, the home-made pool of worker processes pinned to the cores
(`cpu.run_pinned`, commit 01e0599, the last one before sweeps moved to Ray). Then the quick sweep
(`configs/sweeps/mnist_activation_bn.py:quick`, 4 points x 600 steps) on the Ray engine and on the old pool.
Every run starts from nothing (a fresh workdir, a JAX process per CLI run as a user would launch it) and trains
on the real MNIST.

    git worktree add /tmp/oldpool 01e0599  # once: the old pool's checkout (git worktree remove /tmp/oldpool after)
    python scripts/bench_sweep.py --old_pool_checkout=/tmp/oldpool [--steps=10000] [--group_size=8] [--jobs=0]

The old pool runs from its checkout (cwd and PYTHONPATH set to it, so it imports its own `bnrepro` and `configs`,
checked before timing; same Python and dependencies). Without `--old_pool_checkout` its rows are left out.
Prints one table (wall time, model-steps/s, speed-up over the CLI runs), the largest gap in a point's final test
accuracy between the ways, and the two bars: the Ray engine keeps >= 90% of the old pool's throughput, and its
quick sweep's wall time stays within 10 s of the old pool's.

Results: docs/performance.md#sweep-throughput.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from absl import app, flags

from bnrepro.sweep.points import load_sweep, point_name
from bnrepro.sweep.run import DEFAULT_GROUP_SIZE
from bnrepro.training.run_dir import METRICS_FILE

_STEPS = flags.DEFINE_integer("steps", 10_000, "SGD steps per point.")
_GROUP_SIZE = flags.DEFINE_integer("group_size", DEFAULT_GROUP_SIZE, "Most points per vmapped group.")
_JOBS = flags.DEFINE_integer("jobs", 0, "Groups trained at once (0: one per core).")
_OLD_POOL = flags.DEFINE_string(
    "old_pool_checkout", "", "A checkout of commit 01e0599 (the pinned-process pool) to time too; empty: skipped."
)

REPO = Path(__file__).resolve().parent.parent
QUICK = "configs/sweeps/mnist_activation_bn.py:quick"
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
MIN_THROUGHPUT_RATIO, MAX_QUICK_EXCESS_S = 0.90, 10.0


def final_accuracy(run_dir: Path) -> float:
    return json.loads((run_dir / METRICS_FILE).read_text().splitlines()[-1])["test_accuracy"]


def timed(command: list[str], cwd: Path, env: dict[str, str] | None = None) -> float:
    """Runs `command` to its end and returns its wall time; a failure ends the benchmark with its output's tail."""
    start = time.perf_counter()
    result = subprocess.run(command, check=False, cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"{' '.join(command)} (in {cwd}) exited with {result.returncode}:\n{result.stdout[-3000:]}"
                 f"{result.stderr[-3000:]}")  # fmt: skip
    return seconds


def old_pool_env(checkout: Path) -> dict[str, str]:
    """The environment that makes `python -m bnrepro.sweep` import the checkout's own packages; checked here."""
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    probe = "import bnrepro, configs; print(bnrepro.__file__); print(configs.__file__)"
    imported = subprocess.run(
        [sys.executable, "-c", probe], cwd=checkout, env=env, capture_output=True, text=True, check=True
    ).stdout.split()
    if not all(Path(path).resolve().is_relative_to(checkout) for path in imported):
        sys.exit(f"--old_pool_checkout={checkout}: Python imports {imported}, not the checkout's own copies.")
    if not (checkout / "bnrepro" / "cpu.py").is_file() or (checkout / "bnrepro" / "sweep" / "engine.py").exists():
        sys.exit(f"--old_pool_checkout={checkout}: not the pinned-process pool (git worktree add PATH 01e0599).")
    print(f"Old pool imports {imported[0]} and {imported[1]}.")
    return env


def main(argv: list[str]) -> None:
    del argv
    steps, root = _STEPS.value, Path(tempfile.mkdtemp(prefix="bench_sweep_"))
    checkout = Path(_OLD_POOL.value).expanduser().resolve() if _OLD_POOL.value else None
    env = old_pool_env(checkout) if checkout else None
    points = [{"learning_rate": lr, "seed": seed} for lr in LEARNING_RATES for seed in SEEDS]
    spec = root / "sweep16.py"
    spec.write_text(SWEEP_FILE.format(steps=steps, rates=LEARNING_RATES, seeds=SEEDS))
    pool_flags = [f"--jobs={_JOBS.value}", f"--group_size={_GROUP_SIZE.value}"]
    python_sweep = [sys.executable, "-m", "bnrepro.sweep"]

    walls, workdirs = {}, {}
    start = time.perf_counter()
    for point in points:
        command = [
            sys.executable, "-m", "bnrepro.main", "--config=configs/mnist_mlp.py:bn",
            f"--workdir={root / 'cli' / point_name(point)}", f"--config.num_steps={steps}",
            f"--config.checkpoint_every={steps}", f"--config.learning_rate={point['learning_rate']}",
            f"--config.seed={point['seed']}",
        ]  # fmt: skip
        timed(command, REPO)
    walls["cli"], workdirs["cli"] = time.perf_counter() - start, root / "cli"
    print(f"single-run CLI: {walls['cli']:.1f} s")
    runs = [("ray", REPO, None)] + ([("pool", checkout, env)] if checkout else [])
    for name, cwd, run_env in runs:
        workdirs[name] = root / name
        walls[name] = timed(
            [*python_sweep, f"--sweep={spec}", f"--workdir={workdirs[name]}", *pool_flags], cwd, run_env
        )
        print(f"16 points, {name}: {walls[name]:.1f} s")
    for name, cwd, run_env in runs:
        workdirs[f"quick_{name}"] = root / f"quick_{name}"
        quick = [*python_sweep, f"--sweep={cwd / QUICK}", f"--workdir={workdirs[f'quick_{name}']}", *pool_flags]
        walls[f"quick_{name}"] = timed(quick, cwd, run_env)
        print(f"quick sweep, {name}: {walls[f'quick_{name}']:.1f} s")

    quick_spec = load_sweep(str(REPO / QUICK))
    quick_steps = len(quick_spec.points) * quick_spec.base.num_steps
    rows = [
        ("cli", "16 points: single-run CLI, one after another", 16 * steps),
        ("ray", "16 points: python -m bnrepro.sweep, Ray engine (HEAD)", 16 * steps),
        ("pool", "16 points: python -m bnrepro.sweep, old pinned pool (01e0599)", 16 * steps),
        ("quick_ray", f"quick sweep ({len(quick_spec.points)} x {quick_spec.base.num_steps}): Ray engine", quick_steps),
        ("quick_pool", f"quick sweep ({len(quick_spec.points)} x {quick_spec.base.num_steps}): old pool", quick_steps),
    ]
    print(f"\n{steps} steps per point (MNIST MLP with BN), wall time from nothing to every run finished:\n")
    print("| how | wall s | model-steps/s | speed-up vs sequential |")
    print("|---|---|---|---|")
    for key, label, model_steps in rows:
        if key in walls:
            speed_up = f"{walls['cli'] / walls[key]:.2f}x" if key in ("cli", "ray", "pool") else "-"
            print(f"| {label} | {walls[key]:.1f} | {model_steps / walls[key]:.0f} | {speed_up} |")

    ways = [w for w in ("cli", "ray", "pool") if w in walls]
    accuracies = [[final_accuracy(workdirs[w] / point_name(p)) for w in ways] for p in points]
    gap = max(max(a) - min(a) for a in accuracies)
    print(f"\nLargest gap in a point's final test accuracy between {', '.join(ways)}: {100 * gap:.2f} points", end="")
    if checkout:
        quick_gap = max(
            abs(final_accuracy(workdirs["quick_ray"] / n) - final_accuracy(workdirs["quick_pool"] / n))
            for n in (quick_spec.run_name(i) for i in range(len(quick_spec.points)))
        )
        print(f"; quick sweep, Ray vs old pool: {100 * quick_gap:.2f} points", end="")
        ratio, excess = walls["pool"] / walls["ray"], walls["quick_ray"] - walls["quick_pool"]
        print(f" (runs in: {root}).\n")
        print(f"Ray engine throughput / old pool's: {100 * ratio:.0f}% (bar: >= {100 * MIN_THROUGHPUT_RATIO:.0f}%): "
              f"{'holds' if ratio >= MIN_THROUGHPUT_RATIO else 'FAILS'}.")  # fmt: skip
        print(f"Quick sweep, Ray engine - old pool: {excess:+.1f} s (bar: <= {MAX_QUICK_EXCESS_S:.0f} s): "
              f"{'holds' if excess <= MAX_QUICK_EXCESS_S else 'FAILS'}.")  # fmt: skip
    else:
        print(f" (runs in: {root}; no --old_pool_checkout: the old pool's rows and the bars are left out).")


if __name__ == "__main__":
    app.run(main)
