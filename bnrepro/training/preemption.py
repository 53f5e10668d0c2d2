"""Stopping on a signal without losing work.

SIGTERM is what Slurm, Kubernetes and preemptible GPU and TPU VMs send before they kill. A run under
`sigterm_stops_the_run` that gets it finishes the dispatch it is in, checkpoints (with the training losses its next
evaluation averages), and stops with `Stopped`; the command line then says so in one line and exits with 143
(128 + SIGTERM). The same command resumes it exactly: parameters, data position and the evaluations' records equal
an uninterrupted run's. A sweep's worker stops the same way on SIGTERM, and when its driver, interrupted, asks it
to (`stop_file`: a file in the sweep's workdir, which every node sees; as from Ctrl-C, SIGINT).

A process that only waits (a sweep's driver) uses `signals_interrupt`: SIGTERM then raises KeyboardInterrupt, so
it takes the path of Ctrl-C, and `interrupting_signal` says which signal it was."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

_received: list[int] = []  # the signals that asked the run to stop
_stop_files: list[Path] = []  # files whose appearance asks the run to stop, as SIGINT would
_interrupted_by: list[int] = []  # the signals that `signals_interrupt` made KeyboardInterrupts


class Stopped(Exception):
    """Raised by the training loop at the boundary after a stopping signal, its checkpoint saved."""

    def __init__(self, step: int, signum: int):
        name = signal.Signals(signum).name
        super().__init__(f"stopped by {name} at step {step}; checkpoint saved; rerun the same command to resume")
        self.step, self.signum, self.exit_code = step, signum, 128 + signum


def interrupting_signal() -> int:
    """The signal behind the latest KeyboardInterrupt: the last one `signals_interrupt` turned into one, else
    Ctrl-C's SIGINT. (Recorded rather than carried by the exception: Ray's waits raise a KeyboardInterrupt of their
    own for the one a signal handler raised.)"""
    return _interrupted_by[-1] if _interrupted_by else signal.SIGINT


@contextlib.contextmanager
def sigterm_stops_the_run() -> Iterator[None]:
    """While active, SIGTERM asks the training loop to checkpoint and stop at its next boundary (`requested`)
    rather than end the process at once. (Only the main thread can take a signal: elsewhere this does nothing.)"""
    with _handling((signal.SIGTERM,), lambda signum, frame: _received.append(signum)):
        try:
            yield
        finally:
            _received.clear()


@contextlib.contextmanager
def signals_interrupt(*signums: int) -> Iterator[None]:
    """While active, each of `signums` raises KeyboardInterrupt in the main thread, as Ctrl-C does."""

    def interrupt(signum: int, frame: object) -> None:
        _interrupted_by.append(signum)
        raise KeyboardInterrupt(signal.Signals(signum).name)

    with _handling(signums, interrupt):
        yield


@contextlib.contextmanager
def _handling(signums: tuple[int, ...], handler) -> Iterator[None]:
    """`handler` for `signums` while active, the previous handlers restored after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.signal(signum, handler) for signum in signums}
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


@contextlib.contextmanager
def stop_file(path: Path) -> Iterator[None]:
    """While active, `path` appearing asks the training loop to checkpoint and stop at its next boundary, as
    SIGTERM under `sigterm_stops_the_run` does; the stop is reported as Ctrl-C's, SIGINT."""
    _stop_files.append(path)
    try:
        yield
    finally:
        _stop_files.remove(path)


def requested() -> int | None:
    """The signal that asked the run to stop (SIGINT for a `stop_file` that appeared), if one did."""
    if not _received and any(path.exists() for path in _stop_files):
        _received.append(signal.SIGINT)
    return _received[0] if _received else None
