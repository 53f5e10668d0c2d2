"""`bnrepro.cpu.keep_freed_memory` in real processes: a block freed and allocated again is not faulted in again."""

import platform
import subprocess
import sys

import pytest

# In a thread of its own (as XLA:CPU allocates a step's temporaries), mallocs a block of argv[2] bytes, writes every
# byte and frees it, three times; prints whether the mode's `keep_freed_memory` took effect and the minor page faults
# of the last two rounds.
PROGRAM = """
import ctypes, resource, sys, threading
from bnrepro.cpu import keep_freed_memory
mode, size = sys.argv[1], int(sys.argv[2])
kept = keep_freed_memory(one_arena=mode == "one_arena") if mode != "default" else False
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_size_t], [ctypes.c_void_p]
faults = []

def rounds():
    for _ in range(3):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        block = libc.malloc(size)
        ctypes.memset(block, 1, size)
        libc.free(block)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)

thread = threading.Thread(target=rounds)
thread.start()
thread.join()
print(kept, sum(faults[1:]))
"""
TABLE2_STEP, PAPER_NET_STEP = 41_000_000, 400_000_000  # about XLA:CPU's temporaries per step of each net


def _faulted_fraction(mode: str, size: int) -> tuple[str, float]:
    """Whether the mode took effect, and the last two rounds' faults as a fraction of their pages."""
    command = [sys.executable, "-c", PROGRAM, mode, str(size)]
    kept, faults = subprocess.run(command, capture_output=True, text=True, check=True).stdout.split()
    return kept, int(faults) / (2 * size // 4096)


@pytest.mark.skipif(sys.platform != "linux" or platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_freed_memory_is_reused_without_page_faults():
    assert _faulted_fraction("keep", TABLE2_STEP) == ("True", pytest.approx(0, abs=0.05))
    assert _faulted_fraction("one_arena", PAPER_NET_STEP) == ("True", pytest.approx(0, abs=0.05))
    # glibc's default: each round's block mmap'ed anew and faulted in.
    assert _faulted_fraction("default", TABLE2_STEP)[1] > 0.9
    # Over 64 MiB a thread's own arena mmaps the block whatever M_MMAP_MAX says: hence `one_arena` for such steps.
    assert _faulted_fraction("keep", PAPER_NET_STEP)[1] > 0.9
