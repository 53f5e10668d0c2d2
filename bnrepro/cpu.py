"""Running well on a CPU-only host: `use_cpu_cores` restricts a single run's process to some of its cores before
JAX starts (`config.cpu_cores`). (A sweep's groups, Table 2's and Figure 1's runs each get cores of their own
from `bnrepro.sweep.engine`.)
"""

from __future__ import annotations

import os

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
