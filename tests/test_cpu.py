"""`bnrepro.cpu.keep_freed_memory` in real processes: a block freed and allocated again is not faulted in again."""

import platform
import subprocess
import sys

import pytest

# Mallocs a 400 MB block, writes every byte and frees it, three times (as XLA:CPU does with a step's
# temporaries), and prints whether `keep_freed_memory` took effect and the minor page faults of the last two rounds.
PROGRAM = """
import ctypes, resource, sys
from bnrepro.cpu import keep_freed_memory
kept = keep_freed_memory() if sys.argv[1] == "keep" else False
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_size_t], [ctypes.c_void_p]
faults = []
for _ in range(3):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = libc.malloc(400_000_000)
    ctypes.memset(block, 1, 400_000_000)
    libc.free(block)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(kept, sum(faults[1:]))
"""
PAGES = 2 * 400_000_000 // 4096  # the last two rounds' pages


def _run(mode: str) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", PROGRAM, mode], capture_output=True, text=True, check=True).stdout
    kept, faults = out.split()
    return kept, int(faults)


@pytest.mark.skipif(sys.platform != "linux" or platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_freed_memory_is_reused_without_page_faults():
    kept, faults = _run("keep")
    assert kept == "True"
    assert faults < 0.05 * PAGES
    default, faults = _run("default")
    assert default == "False"
    assert faults > 0.9 * PAGES  # glibc's default: each round's block mmap'ed anew and faulted in
