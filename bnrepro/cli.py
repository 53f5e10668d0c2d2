"""What the command lines share: the errors a user causes as one line and exit code 2, a full disk as two lines and
exit code 1, a config file found by its name in the repository wherever bnrepro is installed, `--config.KEY=VALUE`
overrides, `--workdir`, and orbax kept quiet on the console."""

from __future__ import annotations

import copy
import errno
import functools
import importlib.util
import logging as pylogging
import os
import re
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import ml_collections
from absl import flags, logging
from ml_collections import config_flags

import configs
from bnrepro import config_schema
from bnrepro.data import DataError
from bnrepro.training import preemption
from bnrepro.training.run_dir import WorkdirBusyError

# Errors a user causes and can fix from the message alone; anything else is a bug and keeps its traceback.
USER_ERRORS = (ValueError, FileNotFoundError, DataError, WorkdirBusyError)
EX_TEMPFAIL = 75  # sysexits.h: a temporary failure; the user is invited to retry


class TemporaryFailure(Exception):
    """A failure a rerun of the same command may get past (the cluster went away): one line, exit code 75."""


T = TypeVar("T")


def user_errors_in_one_line(function: Callable[..., T]) -> Callable[..., T]:
    """`function`, with the errors a user causes (a bad config key or value, a missing or corrupt file, a busy
    workdir: `USER_ERRORS`) printed as one line, `error: ...`, and exit code 2 instead of a traceback; a full disk
    (`disk_full_message`) likewise, with exit code 1; a `TemporaryFailure` with exit code 75. Ctrl-C at any moment
    (start-up and compilation included), or a signal made a KeyboardInterrupt (`preemption.signals_interrupt`), is
    one line and exit code 130 (128 + the signal). With `--verbosity=1` (or BNREPRO_TRACEBACK=1 in the environment)
    the traceback is shown as well."""

    @functools.wraps(function)
    def wrapped(*args: Any, **kwargs: Any) -> T:
        try:
            return function(*args, **kwargs)
        except KeyboardInterrupt:
            if show_tracebacks():
                raise
            signum = preemption.interrupting_signal()
            print(f"\ninterrupted by {signal.Signals(signum).name}; rerun the same command to resume.", file=sys.stderr)
            _exit_now(128 + signum)
        except TemporaryFailure as e:
            if show_tracebacks():
                raise
            print(f"error: {e}", file=sys.stderr)
            _exit_now(EX_TEMPFAIL)
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


def _exit_now(code: int) -> NoReturn:
    """Ends the process with `code` once its output is flushed, without the interpreter's teardown: that can crash
    while XLA compiles on another thread, or wait a minute for a Ray cluster that is gone."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


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
    traceback each, hundreds for a full disk; and a full disk met again at exit (TensorBoard's writer retries its
    flush in an `atexit` callback). Other unraisable errors go to the previous hook, and all of them do with
    `show_tracebacks()`. Likewise, through `threading.excepthook`, the OSError of TensorBoard's writer thread when
    its queue is closed under it at exit, after a full disk stopped its writer's `close` half-way."""
    logging.get_absl_handler().addFilter(_QuietOrbax())
    previous = sys.unraisablehook

    def hook(unraisable: Any) -> None:
        frames = traceback.extract_tb(unraisable.exc_traceback) if unraisable.exc_traceback else []
        closed_loop = (
            isinstance(unraisable.exc_value, RuntimeError) and str(unraisable.exc_value) == "Event loop is closed"
        )
        disk_full = disk_full_message(unraisable.exc_value) is not None
        orbax = any("/orbax/" in frame.filename for frame in frames)
        if show_tracebacks() or not (closed_loop or disk_full or orbax):
            previous(unraisable)

    sys.unraisablehook = hook
    previous_thread_hook = threading.excepthook

    def thread_hook(args: threading.ExceptHookArgs) -> None:
        frames = traceback.extract_tb(args.exc_traceback) if args.exc_traceback else []
        tensorboard = isinstance(args.exc_value, OSError) and any("/tensorboardX/" in f.filename for f in frames)
        if show_tracebacks() or not tensorboard:
            previous_thread_hook(args)

    threading.excepthook = thread_hook


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


def find_config_file(path: str) -> Path | None:
    """The file a command line names as `path`: `path` itself if it is a file; else, for a path under `configs/`
    (a config or sweep file shipped with bnrepro, named as in the repository), that file of the installed `configs`
    package, whatever the working directory; None if there is neither."""
    given = Path(path).expanduser()
    if given.is_file():
        return given
    parts = Path(path).parts
    shipped = Path(configs.__file__).parent.joinpath(*parts[1:])
    return shipped if not given.is_absolute() and parts[:1] == ("configs",) and shipped.is_file() else None


def call_file_function(spec: str, flag: str, function: str) -> Any:
    """The value of `function(ARG)` (`function()` without an ARG) of the Python file `PATH.py[:ARG]` that `flag`
    names, PATH as `find_config_file` finds it: a config's `get_config`, a sweep file's `get_sweep`. A file that
    is not there is a FileNotFoundError naming it; one that does not load (a syntax error, an import that fails)
    or lacks the function, a ValueError naming the file, and the line or the import."""
    path, _, arg = spec.partition(":")
    found = find_config_file(path)
    if found is None:
        raise FileNotFoundError(f"{flag}={spec}: cannot load {path!r} from {os.getcwd()}.")
    module_spec = importlib.util.spec_from_file_location(found.stem, found)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except SyntaxError as e:
        raise ValueError(f"{flag}={spec}: {found}, line {e.lineno}: {e.msg}.") from None
    except ImportError as e:
        raise ValueError(f"{flag}={spec}: {found} does not load: {e}.") from None
    if not callable(getattr(module, function, None)):
        raise ValueError(f"{flag}={spec}: {found} defines no {function}().")  # noqa: TRY004 -- a user's file
    return getattr(module, function)(arg) if arg else getattr(module, function)()


# An override's key, as config_flags reads it: `--config.KEY=VALUE`, `--config.KEY VALUE`, `--noconfig.KEY`.
_OVERRIDE_KEY = re.compile(r"-{1,2}(?:no)?config\.([^=]+)")
_NOT_AN_OVERRIDE = "not a --config.KEY=VALUE override (nor a flag of this command: --help)."


def parse_overrides(config: ml_collections.ConfigDict, args: Sequence[str]) -> dict[str, Any]:
    """`--config.KEY=VALUE` arguments as the flattened overrides of `config` they make (for
    `ConfigDict.update_from_flattened_dict`), read by ml_collections' `config_flags`, as `bnrepro.main` and every
    script read them: each VALUE by the parser for KEY's type (`0.5`, `True`, `(10, 10)`, a string).

    Raises:
      ValueError: in one line, for a KEY `config` lacks (the closest known key, or its new name: `check_key`), a
        VALUE of the wrong type, or an argument that is not an override.
    """
    for arg in args:  # a flag that is not an override first: the keys are checked against a command's own flags
        if arg.startswith("--") and not _OVERRIDE_KEY.match(arg):
            raise ValueError(f"{arg}: {_NOT_AN_OVERRIDE}")
    for arg in args:
        if match := _OVERRIDE_KEY.match(arg):
            config_schema.check_key(config, match[1], f"--config.{match[1]}")
    argv = ["overrides", *args]
    parsed = flags.FlagValues()
    config_flags.DEFINE_config_dict("config", copy.deepcopy(config), flag_values=parsed, sys_argv=argv)
    try:
        rest = parsed(argv)
    except flags.IllegalFlagValueError as e:  # a value of the wrong type: absl's one line names the flag
        raise ValueError(str(e)) from None
    except flags.Error as e:  # a flag that is not an override
        raise ValueError(f"{e}: {_NOT_AN_OVERRIDE}") from None
    if rest[1:]:
        raise ValueError(f"{rest[1]}: expected --config.KEY=VALUE.")
    return parsed["config"].override_values


def workdir_path(value: str) -> Path:
    """The `--workdir` flag as a path, `~` expanded; an empty one is refused (it would train into the current
    directory)."""
    if not value.strip():
        raise ValueError("--workdir is empty: name the directory for the run's checkpoints and metrics.")
    return Path(value).expanduser()
