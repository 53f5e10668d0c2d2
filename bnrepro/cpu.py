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


def keep_freed_memory(one_arena: bool = False) -> bool:
    """Has glibc's malloc keep the memory this process frees for its next allocations, rather than give it back to
    the kernel: no block of its own mmap'ed, no trimming (mallopt: M_MMAP_MAX 0, M_TRIM_THRESHOLD 2 GiB), and with
    `one_arena` one arena for all threads (M_ARENA_MAX 1). Returns whether it took effect (glibc on Linux only;
    elsewhere nothing changes).

    XLA:CPU allocates each execution's temporaries anew, from one of its threads: 41 MB for a step of Table 2's
    CPU-scale BN-Inception, 380 MB for the paper's net at 224 px on 8 images. glibc serves a block over 32 MB from
    a fresh mmap and unmaps it on free, so the kernel faulted and zeroed every page back in at every step (10,500
    and 143,000 faults per step); with this, under 400 and (`one_arena`) under 14,000.

    Each thread allocates from an arena of its own (up to 8 per core), and an arena other than the main one grows
    by heaps of at most 64 MiB: a larger block is mmap'ed whatever M_MMAP_MAX says. `one_arena` puts every thread
    on the main arena, which holds blocks of any size, at the price of one lock for every thread's malloc: worth it
    only for temporaries over 64 MiB. Best (median) ms per BN step, processes taking turns on 2 cores:
    * CPU scale: 47.6-47.7 (47.9-49.2) without `one_arena`, 68.2-68.9 (69.6-70.3) with it, 61.3-62.1 with glibc's
      default; an hour earlier, the VM slower: 49-62, 84-111 and 70-80;
    * 224 px: 1084-1127 (1103-1134) without, 1011-1091 (1033-1218) with it, 1083-1182 (1096-1190) glibc's default.
    Call it before JAX starts its threads when `one_arena` (a thread that has allocated keeps its arena); the
    rest takes effect at once, in every arena.
    """
    if sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
        return False
    mallopt = ctypes.CDLL(None).mallopt
    settings = [(_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2**31 - 1)] + [(_M_ARENA_MAX, 1)] * one_arena
    results = [mallopt(parameter, value) for parameter, value in settings]  # all of them, whatever each returns
    return all(result == 1 for result in results)
