"""SIGTERM, what Slurm, Kubernetes and preemptible GPU and TPU VMs send before they kill: a run that gets it
finishes the dispatch it is in, checkpoints (with the training losses its next evaluation averages), and stops
with `Stopped`; the command line then says so in one line and exits with 143 (128 + SIGTERM). The same command
resumes it exactly: parameters, data position and the evaluations' records equal an uninterrupted run's."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

EXIT_CODE = 128 + signal.SIGTERM
_requested = threading.Event()


class Stopped(Exception):
    """Raised by the training loop at the boundary after a SIGTERM, its checkpoint saved."""

    def __init__(self, step: int):
        super().__init__(f"stopped by SIGTERM at step {step}; checkpoint saved; rerun the same command to resume")
        self.step = step


@contextlib.contextmanager
def sigterm_stops_the_run() -> Iterator[None]:
    """While active, SIGTERM asks the training loop to checkpoint and stop at its next boundary (`requested`)
    rather than end the process at once. (Only the main thread can take a signal: elsewhere this does nothing.)"""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: _requested.set())
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        _requested.clear()


def requested() -> bool:
    """Whether a SIGTERM asked the run to stop."""
    return _requested.is_set()
