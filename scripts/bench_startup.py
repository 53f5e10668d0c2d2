"""The whole process, start-up included: Figure 1's BN net trained for `--num_steps` steps with its evaluations,
launched as a user launches it, side by side in one run:

* ours: `python -m bnrepro.main --config=configs/mnist_mlp.py:bn --workdir=TMP --config.num_steps=N` (the
  config's evaluations: every `eval_every` steps, Algorithm 2's population statistics and Figure 1's
  percentiles; its checkpoints; metrics.jsonl and TensorBoard events);
* a plain flax.linen per-step script of the same net, `scripts/flax_mnist_mlp.py` (test set evaluated at the
  same cadence with BN's moving averages; no checkpoints, no files).

Each is a fresh process, run `--repeats` times alternately (ABAB), both on one core as the config asks. For each:
wall time of the whole process; time to its first training step (from launch to the training program being
compiled and started: ours logs "Compiled the N-step training program", the script prints `first_step`);
training steps/s (evaluations and compilation left out: ours from metrics.jsonl's `steps_per_second`).

    python scripts/bench_startup.py [--num_steps=20000] [--repeats=3]
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

REPO = Path(__file__).resolve().parents[1]
CONFIG = "configs/mnist_mlp.py:bn"
# absl's log prefix (local time) on the line ours logs right before its first training program runs.
_FIRST_STEP = re.compile(r"^I(\d{4}) (\d\d:\d\d:\d\d\.\d{6}) .*Compiled the \d+-step training program", re.MULTILINE)


class Run(NamedTuple):
    """One process: whole-process seconds, seconds from launch to its first training step, training steps/s,
    the last evaluation's test accuracy."""

    wall_s: float
    first_step_s: float
    steps_per_s: float
    accuracy: float


def _launch(command: Sequence[str], cwd: Path, env: Mapping[str, str] | None) -> tuple[float, float, str, str]:
    """Runs `command` in `cwd`, `env` added to the environment: (launch time.time(), wall seconds, stdout,
    stderr)."""
    launched, start = time.time(), time.perf_counter()
    result = subprocess.run(
        command, cwd=cwd, env={**os.environ, **(env or {})}, capture_output=True, text=True, check=False
    )
    wall = time.perf_counter() - start
    if result.returncode:
        raise RuntimeError(f"{' '.join(command)} exited with {result.returncode}:\n{result.stderr[-3000:]}")
    return launched, wall, result.stdout, result.stderr


def run_ours(num_steps: int, repo: Path = REPO, env: Mapping[str, str] | None = None) -> Run:
    """`python -m bnrepro.main` on Figure 1's BN config in a fresh workdir, run from `repo` (whose `bnrepro`
    package it imports: another checkout measures that version)."""
    with tempfile.TemporaryDirectory() as workdir:
        command = [sys.executable, "-m", "bnrepro.main", f"--config={CONFIG}", f"--workdir={workdir}"]
        launched, wall, _, log = _launch([*command, f"--config.num_steps={num_steps}"], repo, env)
        records = [json.loads(line) for line in (Path(workdir) / "metrics.jsonl").read_text().splitlines()]
    marker = _FIRST_STEP.search(log)
    if marker is None:
        raise RuntimeError(f"no 'Compiled the ... training program' line in the log:\n{log[-3000:]}")
    year = datetime.datetime.fromtimestamp(launched).year
    first = datetime.datetime.strptime(f"{year}{marker.group(1)} {marker.group(2)}", "%Y%m%d %H:%M:%S.%f")
    steps = [b["step"] - a for a, b in zip([0] + [r["step"] for r in records], records)]
    train_s = sum(n / r["steps_per_second"] for n, r in zip(steps, records))
    return Run(wall, first.timestamp() - launched, records[-1]["step"] / train_s, records[-1]["test_accuracy"])


def run_flax(num_steps: int, eval_every: int, env: Mapping[str, str] | None = None) -> Run:
    """`scripts/flax_mnist_mlp.py` at the same number of steps and evaluation cadence."""
    command = [sys.executable, str(REPO / "scripts" / "flax_mnist_mlp.py"), f"--num_steps={num_steps}"]
    launched, wall, out, _ = _launch([*command, f"--eval_every={eval_every}"], REPO, env)
    events = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    first = next(e for e in events if e["event"] == "first_step")
    done = next(e for e in events if e["event"] == "done")
    accuracy = [e for e in events if e["event"] == "eval"][-1]["test_accuracy"]
    return Run(wall, first["time"] - launched, done["steps"] / done["train_seconds"], accuracy)


def warm_cache_env(directory: str) -> dict[str, str]:
    """JAX's persistent compilation cache in `directory`, every program cached (JAX's defaults skip programs
    that compile in under a second, all of these)."""
    return {
        "JAX_COMPILATION_CACHE_DIR": directory,
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
    }


def config_eval_every() -> int:
    """`eval_every` of Figure 1's BN config."""
    path, _, variant = CONFIG.partition(":")
    spec = importlib.util.spec_from_file_location("figure1_config", REPO / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(variant).eval_every


def table(results: Mapping[str, list[Run]], reference: Mapping[str, str]) -> str:
    """A Markdown table, best / median of each measure per side; `reference[side]` names the side whose whole
    process it is compared with."""

    def cell(runs: list[Run], field: str, best: Callable[..., float], digits: int) -> str:
        values = [getattr(r, field) for r in runs]
        return f"{best(values):.{digits}f} / {statistics.median(values):.{digits}f}"

    rows = [
        "| best / median | whole process (s) | faster than | to first step (s) | steps/s | test accuracy |",
        "|---|---:|---|---:|---:|---:|",
    ]
    for name, runs in results.items():
        versus = ""
        if name in reference:
            other = [r.wall_s for r in results[reference[name]]]
            ours = [r.wall_s for r in runs]
            versus = f"{min(other) / min(ours):.2f}x / {statistics.median(other) / statistics.median(ours):.2f}x"
            versus += f" {reference[name]}"
        rows.append(
            f"| {name} | {cell(runs, 'wall_s', min, 2)} | {versus} | {cell(runs, 'first_step_s', min, 2)} | "
            f"{cell(runs, 'steps_per_s', max, 0)} | {statistics.median(r.accuracy for r in runs):.4f} |"
        )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num_steps", type=int, default=20_000, help="training steps per process")
    parser.add_argument("--repeats", type=int, default=3, help="processes per side, run alternately")
    parser.add_argument("--compare_repo", type=Path, help="also run ours from this checkout (e.g. an older commit)")
    parser.add_argument(
        "--warm_cache", action="store_true", help="also both sides with a warm JAX persistent compilation cache"
    )
    args = parser.parse_args()
    eval_every = config_eval_every()
    flax = "plain flax.linen per-step script"
    sides = {
        "ours, `python -m bnrepro.main`": lambda: run_ours(args.num_steps),
        flax: lambda: run_flax(args.num_steps, eval_every),
    }
    reference = {"ours, `python -m bnrepro.main`": flax}
    if args.compare_repo:
        name = f"ours at {args.compare_repo}"
        sides[name], reference[name] = (lambda: run_ours(args.num_steps, args.compare_repo.resolve())), flax
    cache = tempfile.TemporaryDirectory()
    if args.warm_cache:
        env = warm_cache_env(cache.name)
        sides["ours, warm compilation cache"] = lambda: run_ours(args.num_steps, env=env)
        sides["flax script, warm compilation cache"] = lambda: run_flax(args.num_steps, eval_every, env)
        reference["ours, warm compilation cache"] = "flax script, warm compilation cache"
        run_ours(eval_every, env=env), run_flax(eval_every, eval_every, env)  # fills the cache
    print(
        f"Figure 1 BN net, {args.num_steps} steps, evaluation every {eval_every}; {args.repeats} processes per side "
        f"alternately; load average {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    results: dict[str, list[Run]] = {name: [] for name in sides}
    for i in range(args.repeats):
        for name, run in sides.items():
            results[name].append(run())
            print(f"  {name} #{i + 1}: {results[name][-1]}", flush=True)
    cache.cleanup()
    print(f"load average {os.getloadavg()[0]:.1f}")
    print(table(results, reference))


if __name__ == "__main__":
    main()
