"""Running well on a CPU-only host: `use_cpu_cores` restricts a single run's process to some of its cores before
JAX starts (`config.cpu_cores`). (A sweep's groups, Table 2's and Figure 1's runs each get cores of their own
from `bnrepro.sweep.engine`.) `keep_freed_memory` has the C allocator keep what a step frees for the next.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys

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


# mallopt(3)'s parameters, from glibc's malloc.h.
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8


def keep_freed_memory() -> bool:
    """Has glibc's malloc keep the memory this process frees for its next allocations, rather than give it back to
    the kernel: one arena, no block of its own mmap'ed, no trimming (mallopt: M_ARENA_MAX 1, M_MMAP_MAX 0,
    M_TRIM_THRESHOLD 2 GiB). Returns whether it took effect (glibc on Linux only; elsewhere nothing changes).

    XLA:CPU allocates each execution's temporaries anew: 380 MB for a step of the paper's BN-Inception at 224 px
    on 8 images. glibc serves a block that large from a fresh mmap and unmaps it on free, so the kernel faulted
    and zeroed ~95,000 pages back in at every step; with this, under 2,000. Measured in three pairs of processes
    on 2 cores: 997-1014 against 1069-1126 ms per step (PyTorch's step in the same processes, unchanged:
    919-1005 ms). Call it before JAX starts its threads: a thread that has allocated keeps its arena.
    """
    if sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
        return False
    mallopt = ctypes.CDLL(None).mallopt
    settings = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2**31 - 1))
    results = [mallopt(parameter, value) for parameter, value in settings]  # all of them, whatever each returns
    return all(result == 1 for result in results)
