"""The sweep driver's own cost per point, as a sweep grows: sweeps of N tiny points (the Figure 1 BN net, a few
dozen steps each on the offline MNIST, seeds x 2 learning rates) planned, trained on a local Ray instance and
summarized by `bnrepro.sweep.run_sweep`, each N in a fresh process. For each N: the driver process's CPU time
(`time.process_time`: this process only, not Ray's processes nor the workers) and wall time per point for planning
(every point's config built and checked, its run directory read, the groups), training (submitting and watching
the groups' tasks) and the summary (CSV, Markdown, TensorBoard HParams), and the driver's peak memory. Then, with
`--kill`, the largest sweep once more through the command line: its driver SIGKILLed once half its groups have
ended, and the same command rerun, which must train only the rest and end with every point finished.

    python scripts/bench_sweep_driver.py [--points=100,1000] [--steps=40] [--group_size=100] [--kill]

Results: docs/performance.md#sweep-driver.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SWEEP_FILE = """
from bnrepro.sweep import Sweep, product
from configs import mnist_mlp


def get_sweep(arg: str = "") -> Sweep:
    base = mnist_mlp.get_config("bn")
    base.num_steps = base.eval_every = base.checkpoint_every = base.steps_per_dispatch = {steps}
    base.population_batches, base.eval_examples = 2, 1000
    axes = {{"learning_rate": (0.1, 0.5), "seed": tuple(range({points} // 2))}}
    return Sweep(base, product(axes), threshold=0.9)
"""


def measure(points: int, steps: int, group_size: int, workdir: Path) -> dict[str, float]:
    """One sweep of `points` points, in this process: the driver's CPU and wall seconds per phase, its peak RSS."""
    from bnrepro.sweep import engine, plan, summary
    from bnrepro.sweep import points as sweep_points

    spec_file = workdir / "sweep.py"
    spec_file.write_text(SWEEP_FILE.format(points=points, steps=steps))
    runs = workdir / "runs"
    clocks = {"cpu": time.process_time, "wall": time.perf_counter}
    marks = [{name: clock() for name, clock in clocks.items()}]
    sweep = sweep_points.load_sweep(str(spec_file))
    plan.check_points(sweep)
    runs.mkdir(parents=True, exist_ok=True)
    assert not plan.changed_points(sweep, runs)
    groups = plan.groups_of(sweep, plan.pending_points(sweep, runs), runs, group_size)
    marks.append({name: clock() for name, clock in clocks.items()})
    engine.connect(None)
    outcomes = engine.run_groups(sweep, runs, groups, engine.Resources())
    marks.append({name: clock() for name, clock in clocks.items()})
    rows = summary.write_summary(sweep, runs)
    marks.append({name: clock() for name, clock in clocks.items()})
    assert all(o.error is None for o in outcomes) and all(r["status"] == "finished" for r in rows), rows[:3]
    result = {
        "points": points,
        "groups": len(groups),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    for phase, (start, end) in zip(("plan", "train", "summary"), itertools.pairwise(marks)):
        for name in clocks:
            result[f"{phase}_{name}_ms_per_point"] = 1000 * (end[name] - start[name]) / points
    return result


def kill_and_resume(points: int, steps: int, group_size: int, workdir: Path) -> dict[str, float]:
    """The sweep command on `points` points, SIGKILLed once half its groups have ended, then rerun to the end."""
    (workdir / "sweep.py").write_text(SWEEP_FILE.format(points=points, steps=steps))
    runs = workdir / "runs"
    command = [sys.executable, "-m", "bnrepro.sweep", f"--sweep={workdir / 'sweep.py'}", f"--workdir={runs}",
               f"--group_size={group_size}"]  # fmt: skip
    groups = -(-points // group_size)
    driver = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, text=True)
    ended = 0
    for line in driver.stdout:  # one line per point as its group ends
        ended += ": finished" in line
        if ended >= points // 2:
            break
    assert 0 < ended < points, f"the sweep ended before the kill ({ended} of {points} points)"
    driver.send_signal(signal.SIGKILL)
    driver.communicate()
    start = time.perf_counter()
    rerun = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False)
    assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-2000:]
    header = next(line for line in rerun.stdout.splitlines() if line.startswith(f"{points} points:"))
    assert " 0 to train" not in header, f"nothing was left to train after the kill: {header}"
    rows = (runs / "summary.csv").read_text().splitlines()[1:]
    assert len(rows) == points and all(",finished," in row for row in rows), "not every point finished"
    return {"groups": groups, "finished_before_kill": ended, "rerun": header, "rerun_s": time.perf_counter() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--points", default="100,1000", help="Sweep sizes, comma-separated (even numbers).")
    parser.add_argument("--steps", type=int, default=40, help="Training steps of every point.")
    parser.add_argument("--group_size", type=int, default=100, help="Most points in one vmapped group.")
    parser.add_argument("--kill", action="store_true", help="Also SIGKILL and rerun the largest sweep's command.")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # a child process: one size, JSON out
    args = parser.parse_args()
    if args.one:
        with tempfile.TemporaryDirectory(prefix="sweep_driver_") as workdir:
            print(json.dumps(measure(args.one, args.steps, args.group_size, Path(workdir))))
        return
    results = []
    for points in map(int, args.points.split(",")):
        child = subprocess.run(
            [sys.executable, __file__, f"--one={points}", f"--steps={args.steps}", f"--group_size={args.group_size}"],
            cwd=REPO, capture_output=True, text=True, check=True,
        )  # fmt: skip
        results.append(json.loads(child.stdout.strip().splitlines()[-1]))
    print(f"\nSweep driver, {args.steps} steps per point, groups of up to {args.group_size}, {os.cpu_count()} cores:")
    print("| points | groups | plan ms/point (CPU / wall) | train ms/point (CPU / wall) | summary ms/point (CPU / wall) "
          "| driver peak RSS |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    for r in results:
        cells = [f"{r[f'{phase}_cpu_ms_per_point']:.1f} / {r[f'{phase}_wall_ms_per_point']:.1f}"
                 for phase in ("plan", "train", "summary")]  # fmt: skip
        print(f"| {r['points']} | {r['groups']} | {' | '.join(cells)} | {r['peak_rss_mib']:.0f} MiB |")
    if args.kill:
        largest = max(map(int, args.points.split(",")))
        with tempfile.TemporaryDirectory(prefix="sweep_driver_kill_") as workdir:
            killed = kill_and_resume(largest, args.steps, args.group_size, Path(workdir))
        print(f"\n{largest} points through the command line, SIGKILLed after {killed['finished_before_kill']} had "
              f"finished; the rerun ({killed['rerun']!r}) finished every point in {killed['rerun_s']:.0f} s.")  # fmt: skip


if __name__ == "__main__":
    main()
