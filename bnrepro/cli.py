"""What the command lines share: the errors a user causes as one line and exit code 2, a full disk as two lines and
exit code 1, `--workdir`, and orbax kept quiet on the console."""

from __future__ import annotations

import ast
import errno
import functools
import logging as pylogging
import os
import re
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from absl import flags, logging

from bnrepro.data import DataError
from bnrepro.training.run_dir import WorkdirBusyError

# Errors a user causes and can fix from the message alone; anything else is a bug and keeps its traceback.
USER_ERRORS = (ValueError, FileNotFoundError, DataError, WorkdirBusyError)
T = TypeVar("T")


def user_errors_in_one_line(function: Callable[..., T]) -> Callable[..., T]:
    """`function`, with the errors a user causes (a bad config key or value, a missing or corrupt file, a busy
    workdir: `USER_ERRORS`) printed as one line, `error: ...`, and exit code 2 instead of a traceback; a full disk
    (`disk_full_message`) likewise, with exit code 1. With `--verbosity=1` (or BNREPRO_TRACEBACK=1 in the
    environment) the traceback is shown as well."""

    @functools.wraps(function)
    def wrapped(*args: Any, **kwargs: Any) -> T:
        try:
            return function(*args, **kwargs)
        except Exception as e:
            if show_tracebacks():
                raise
            if (message := disk_full_message(e)) is not None:
                print(f"error: {message}", file=sys.stderr)
                sys.exit(1)
            if not isinstance(e, USER_ERRORS):
                raise
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)

    return wrapped


class _QuietOrbax(pylogging.Filter):
    """Drops orbax's INFO records (a dozen per checkpoint) so the console shows the training progress, and the
    tracebacks its background threads log for a full disk, which the main thread reports (`disk_full_message`)."""

    def filter(self, record: pylogging.LogRecord) -> bool:
        if "orbax" not in record.pathname:
            return True
        if record.levelno < pylogging.WARNING:
            return False
        error = record.exc_info[1] if record.exc_info else None
        disk_full = "No space left on device" in record.getMessage() or (error and disk_full_message(error))
        return show_tracebacks() or not disk_full


def quiet_orbax() -> None:
    """Keeps orbax's chatter off a command line's console: its INFO records and its background threads' tracebacks
    of a full disk (`_QuietOrbax`, on absl's handler), and, through `sys.unraisablehook`, what orbax leaves behind
    when a save or restore fails (the main thread reports the failure itself): its abandoned coroutines, finalized
    at exit, and TensorStore's callbacks into the event loop orbax already closed ("Event loop is closed"), a
    traceback each, hundreds for a full disk. Other unraisable errors go to the previous hook, and all of them do
    with `show_tracebacks()`."""
    logging.get_absl_handler().addFilter(_QuietOrbax())
    previous = sys.unraisablehook

    def hook(unraisable: Any) -> None:
        frames = traceback.extract_tb(unraisable.exc_traceback) if unraisable.exc_traceback else []
        closed_loop = (
            isinstance(unraisable.exc_value, RuntimeError) and str(unraisable.exc_value) == "Event loop is closed"
        )
        if show_tracebacks() or not (closed_loop or any("/orbax/" in frame.filename for frame in frames)):
            previous(unraisable)

    sys.unraisablehook = hook


def show_tracebacks() -> bool:
    """Whether the user asked for tracebacks: `--verbosity=1` or more, or BNREPRO_TRACEBACK set."""
    return (flags.FLAGS.is_parsed() and flags.FLAGS.verbosity >= 1) or bool(os.environ.get("BNREPRO_TRACEBACK"))


def disk_full_message(error: BaseException) -> str | None:
    """Two lines for an error caused by a full disk (ENOSPC anywhere in its chain: Python's own writes, or orbax
    and TensorStore's "No space left on device"), naming the file being written; None for any other error."""
    seen: BaseException | None = error
    while seen is not None:
        text = str(seen)
        if (isinstance(seen, OSError) and seen.errno == errno.ENOSPC) or "No space left on device" in text:
            path = getattr(seen, "filename", None) or next(iter(re.findall(r'file "([^"]+)"', text)), None)
            checkpoint = re.match(r"(.*)/(\d+)\.orbax-checkpoint-tmp", str(path))
            where = f" while writing {path}" if path else ""
            if checkpoint:
                where = f" while writing checkpoint {checkpoint[2]} in {checkpoint[1]}"
            return (
                f"no space left on device{where}.\n"
                "Free some space and rerun the same command: the run resumes from its last complete checkpoint."
            )
        seen = seen.__cause__ or seen.__context__
    return None


def config_overrides(args: Sequence[str]) -> dict[str, Any]:
    """`--config.KEY=VALUE` arguments as `{KEY: VALUE}` overrides (as `bnrepro.main` takes them): a Python literal
    is read as one (`0.5`, `True`, `(10, 10)`), `true`/`false` as booleans, anything else as a string. Any
    other argument is a ValueError naming it."""
    overrides = {}
    for arg in args:
        key, equals, text = arg.removeprefix("--config.").partition("=")
        if not arg.startswith("--config.") or not equals or not key:
            raise ValueError(f"{arg}: expected --config.KEY=VALUE.")
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = {"true": True, "false": False}.get(text.lower(), text)
        overrides[key] = value
    return overrides


def workdir_path(value: str) -> Path:
    """The `--workdir` flag as a path, `~` expanded; an empty one is refused (it would train into the current
    directory)."""
    if not value.strip():
        raise ValueError("--workdir is empty: name the directory for the run's checkpoints and metrics.")
    return Path(value).expanduser()
