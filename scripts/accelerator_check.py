"""The accelerator check: one short script to run when a GPU or TPU is at hand (at most ~8 minutes on one GPU),
which ends with one table of what ran, how long it took and what it printed.

    bash scripts/accelerator_check.sh [--dry_run]

Steps, each a subprocess of this interpreter run from the repository root:
0. export: tests/test_export.py on the CPU (seconds): every program a run or sweep compiles, lowered for GPU and
   TPU and checked (convolutions, precisions, donation, collectives), before anything needs the device;
1. devices: JAX's default backend and its devices;
2. tests: the tests marked `accelerator` (`pytest -m accelerator`) on the default backend: BN numerics against
   NumPy, bfloat16 with float32 statistics, data-parallel BN over all local devices, a sweep group given an
   accelerator not pinned to CPU cores;
3. bench_mnist: `scripts/bench_mnist.py` (the Figure 1 MLP, ours against a per-step flax.linen loop);
4. bench_inception: `scripts/bench_inception.py`, BN-Inception at 224x224, width 1, batch 32 per device;
5. figure1: `scripts/reproduce_figure1.sh` into a temporary folder;
6. sweep: the quick activation x BN sweep, each group on a share of the accelerator.

Without an accelerator (JAX's default backend is the CPU), or with `--dry_run`, it is a dry run: step 1 runs,
steps 0 and 2 only collect their tests (the full suite runs them on the CPU anyway), step 3 runs a few steps (so the
script and its flags are exercised), and the rest are reported as skipped; CI runs this dry run
(tests/test_accelerator.py). Exit status 1 if a step that ran failed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import NamedTuple

from absl import app, flags

_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Run as without an accelerator even if there is one.")
_TIMEOUT = flags.DEFINE_integer("step_timeout", 300, "Seconds a step may take before it is stopped and failed.")

REPO = Path(__file__).resolve().parent.parent
QUICK_SWEEP = "configs/sweeps/mnist_activation_bn.py:quick"


class Step(NamedTuple):
    name: str
    command: list[str]
    needs_accelerator: bool  # skipped in a dry run
    env: tuple[tuple[str, str], ...] = ()  # added to the environment


class Outcome(NamedTuple):
    name: str
    status: str  # passed, failed (exit N), timed out, skipped
    seconds: float
    result: str  # the last line of its output, or why it was skipped


def default_backend() -> str:
    """JAX's default backend, asked in a subprocess so that this process never holds the accelerator."""
    probe = [sys.executable, "-c", "import jax; print(jax.default_backend())"]
    return subprocess.run(probe, capture_output=True, text=True, check=True).stdout.strip()


def steps(dry_run: bool, scratch: Path) -> list[Step]:
    python = sys.executable
    tests = [python, "-m", "pytest", "-q", "-m", "accelerator", "-p", "no:cacheprovider"]
    export = [python, "-m", "pytest", "-q", "-n", "0", "-p", "no:cacheprovider", "tests/test_export.py"]
    bench_mnist = [python, "scripts/bench_mnist.py", "--cpu_cores=0"]
    if dry_run:  # a few steps, fused in one program as long as they are (a shorter one would compile again, timed)
        bench_mnist += ["--steps=50", "--steps_per_dispatch=50", "--repeats=1"]
    bench_inception = [python, "scripts/bench_inception.py", "--cpu_cores=0", "--image_size=224"]
    bench_inception += ["--width_multiplier=1.0", "--batch_size=32", "--steps=10", "--repeats=3"]
    sweep = [python, "-m", "bnrepro.sweep", f"--sweep={QUICK_SWEEP}", f"--workdir={scratch / 'sweep'}"]
    return [  # the export test lowers for GPU and TPU from the CPU, as in CI, whatever devices are here
        Step("export", [*export, "--collect-only"] if dry_run else export, False, (("JAX_PLATFORMS", "cpu"),)),
        Step("devices", [python, "-c", "import jax; print(jax.default_backend(), jax.devices())"], False),
        Step("tests", [*tests, "--collect-only"] if dry_run else tests, False),
        Step("bench_mnist", bench_mnist, False),
        Step("bench_inception", bench_inception, True),
        Step("figure1", ["bash", "scripts/reproduce_figure1.sh"], True, (("RUNS_DIR", str(scratch / "figure1")),)),
        Step("sweep", [*sweep, "--gpus_per_group=0.25"], True),  # four groups share one accelerator
    ]


def run_step(step: Step, dry_run: bool, timeout: int) -> Outcome:
    """Runs `step` (its output passed through as it comes), unless it needs an accelerator in a dry run."""
    if step.needs_accelerator and dry_run:
        return Outcome(step.name, "skipped", 0.0, "needs an accelerator (dry run)")
    print(f"\n=== {step.name}: {' '.join(step.command)}", flush=True)
    start = time.perf_counter()
    lines: list[str] = []
    with subprocess.Popen(
        step.command, cwd=REPO, env={**os.environ, **dict(step.env)}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True,
    ) as process:  # fmt: skip
        watchdog = threading.Timer(timeout, process.kill)  # a step that hangs, silent or not, is stopped
        watchdog.start()
        for line in process.stdout:
            print(line, end="", flush=True)
            lines.append(line.rstrip())
        process.wait()
        timed_out = not watchdog.is_alive()
        watchdog.cancel()
    if timed_out:
        return Outcome(step.name, "timed out", time.perf_counter() - start, f"stopped after {timeout} s")
    last = next((line for line in reversed(lines) if line.strip()), "")
    status = "passed" if process.returncode == 0 else f"failed (exit {process.returncode})"
    return Outcome(step.name, status, time.perf_counter() - start, last[:160])


def results_table(backend: str, dry_run: bool, outcomes: list[Outcome]) -> str:
    lines = [
        f"Accelerator check on {backend}{' (dry run)' if dry_run else ''}:",
        "| step | status | s | result |",
        "| --- | --- | ---: | --- |",
    ]
    lines += [f"| {o.name} | {o.status} | {o.seconds:.0f} | {o.result.replace('|', '/')} |" for o in outcomes]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    del argv
    backend = default_backend()
    dry_run = _DRY_RUN.value or backend == "cpu"
    with tempfile.TemporaryDirectory(prefix="accelerator_check_") as scratch:
        outcomes = [run_step(step, dry_run, _TIMEOUT.value) for step in steps(dry_run, Path(scratch))]
    print("\n" + results_table(backend, dry_run, outcomes))
    return 0 if all(o.status in ("passed", "skipped") for o in outcomes) else 1


if __name__ == "__main__":
    app.run(main)
