"""Running well on a CPU-only host: the one place that decides which cores a process runs on.

* `use_cpu_cores` restricts the current process to some of its cores before JAX starts (`config.cpu_cores`);
* `run_pinned` runs commands side by side, each in a process pinned to a core of its own (sweeps' workers,
  Table 2's and Figure 1's runs): on a CPU host a small net trains fastest on one core, and independent
  processes on separate cores scale.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import jax
from absl import logging


def use_cpu_cores(count: int) -> None:
    """Restricts this process to `count` of its cores (0: all) before JAX starts its thread pool.

    For a net as small as the MNIST MLP, XLA's threads cost more than they give (BN net: ~3100 vs ~2600 steps/s
    on 2 cores). Undone when JAX runs on an accelerator.
    """
    allowed = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if count and allowed:
        os.sched_setaffinity(0, allowed[:count])
    if jax.default_backend() == "cpu":
        logging.info("Running on CPU cores %s.", sorted(os.sched_getaffinity(0)) if allowed else "(unknown)")
    elif count and allowed:
        for thread in os.listdir("/proc/self/task"):
            os.sched_setaffinity(int(thread), allowed)


def run_pinned(commands: Sequence[tuple[str, list[str], Path]], jobs: int = 0) -> dict[str, int]:
    """Runs `(name, argv, log file)` commands, `jobs` at a time (0: one per allowed CPU core), each pinned to a
    core of its own where the platform allows (more jobs than cores share them); returns each name's exit code."""
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else [None]
    slots = cores[: jobs or len(cores)] if jobs <= len(cores) else cores + [None] * (jobs - len(cores))
    pending, running, codes = list(commands), {}, {}
    while pending or running:
        busy = [slot for slot, *_ in running.values()]
        for slot in [s for s in range(len(slots)) if s not in busy]:
            if not pending:
                break
            name, argv, log_path = pending.pop(0)
            core = slots[slot]
            pin = None if core is None else (lambda core=core: os.sched_setaffinity(0, {core}))
            log = log_path.open("w")
            process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, preexec_fn=pin)  # noqa: PLW1509
            running[process] = (slot, name, log)
            print(f"started {name} (core {core}): {' '.join(argv)}", flush=True)
        for process in [p for p in running if p.poll() is not None]:
            _, name, log = running.pop(process)
            log.close()
            codes[name] = process.returncode
            print(f"{name} exited with code {process.returncode}", flush=True)
        time.sleep(0.2)
    return codes
