"""What the command lines share: the errors a user causes as one line and exit code 2, and `--workdir`."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from absl import flags

from bnrepro.data import DataError
from bnrepro.training.run_dir import WorkdirBusyError

# Errors a user causes and can fix from the message alone; anything else is a bug and keeps its traceback.
USER_ERRORS = (ValueError, FileNotFoundError, DataError, WorkdirBusyError)
T = TypeVar("T")


def user_errors_in_one_line(function: Callable[..., T]) -> Callable[..., T]:
    """`function`, with the errors a user causes (a bad config key or value, a missing or corrupt file, a busy
    workdir: `USER_ERRORS`) printed as one line, `error: ...`, and exit code 2 instead of a traceback. With
    `--verbosity=1` (or BNREPRO_TRACEBACK=1 in the environment) the traceback is shown as well."""

    @functools.wraps(function)
    def wrapped(*args: Any, **kwargs: Any) -> T:
        try:
            return function(*args, **kwargs)
        except USER_ERRORS as e:
            verbose = flags.FLAGS.is_parsed() and flags.FLAGS.verbosity >= 1
            if verbose or os.environ.get("BNREPRO_TRACEBACK"):
                raise
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)

    return wrapped


def workdir_path(value: str) -> Path:
    """The `--workdir` flag as a path, `~` expanded; an empty one is refused (it would train into the current
    directory)."""
    if not value.strip():
        raise ValueError("--workdir is empty: name the directory for the run's checkpoints and metrics.")
    return Path(value).expanduser()
