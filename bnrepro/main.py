"""Trains and evaluates one experiment: `python -m bnrepro.main --config=configs/X.py:variant --workdir=DIR`.

Config keys can be overridden, e.g. `--config.learning_rate=0.1`. Re-running on the same workdir resumes.
On several hosts, run the same command on each with `--multihost` (Cloud TPU, Slurm and Open MPI are detected
by `jax.distributed.initialize`; elsewhere add `--coordinator_address=HOST:PORT --num_processes=N
--process_id=I`); the workdir must be on a filesystem all hosts share.
"""

from __future__ import annotations

import gc

# Importing JAX, Flax, Optax, Orbax... makes ~240,000 objects that live as long as the process. With the collector
# on, its passes over them cost ~0.3 s of start-up (a Figure-1 run's collections: 0.35 s in all, 0.02 s this way).
# So, run as the command (not imported), it is off while they are imported, and they are then frozen out of its way.
_COMMAND = __name__ == "__main__"
if _COMMAND:
    gc.disable()

import os
import re
import sys

import jax
import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

from bnrepro import config_schema, hooks
from bnrepro.cli import quiet_orbax, user_errors_in_one_line, workdir_path
from bnrepro.cpu import keep_freed_memory, use_cpu_cores
from bnrepro.training import loop

if _COMMAND:
    gc.freeze()
    gc.enable()

_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and TensorBoard events.")
_CONFIG = config_flags.DEFINE_config_file("config", None, "Training configuration file.", lock_config=True)
_MULTIHOST = flags.DEFINE_bool("multihost", False, "Join the other processes: jax.distributed.initialize().")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "Multi-host: process 0's HOST:PORT.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Multi-host: how many processes there are.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "Multi-host: this process's index, 0 to num_processes-1.")
flags.mark_flags_as_required(["config", "workdir"])


def initialize_distributed() -> None:
    """`jax.distributed.initialize` with the multi-host flags, when `--multihost` or any of them is given.
    Must run before JAX computes anything."""
    explicit = (_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    if _MULTIHOST.value or any(value is not None for value in explicit):
        jax.distributed.initialize(*explicit)
        logging.info("Process %d of %d.", jax.process_index(), jax.process_count())


@user_errors_in_one_line
def parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with an unknown `--config.<key>` reported as a ValueError naming it (and its new name,
    if it was renamed: `--config.model.bn_momentum` is `--config.model.bn.momentum`)."""
    for arg in argv:
        if arg.startswith("--config."):
            config_schema.check_not_renamed(arg.removeprefix("--config.").split("=")[0])
    try:
        return flags.FLAGS(argv)
    except (AttributeError, KeyError) as e:  # how config_flags reports an override of a missing key
        message = str(e).replace("\\", "")
        key = re.search(r"'(\w+)'", message)
        key = key.group(1) if key else message
        override = next((a.split("=")[0] for a in argv if re.match(rf"--config\.[\w.]*\b{key}\b", a)), key)
        hint = re.search(r'Did you mean "(\w+)"', message)
        raise ValueError(
            f"{override}: unknown config key {key!r}" + (f"; did you mean {hint.group(1)!r}?" if hint else ".")
        ) from None
    except OSError as e:  # a config file that cannot be loaded, met while applying an override
        given = [a.partition("=")[2] or b for a, b in zip(argv, argv[1:] + [""]) if a.partition("=")[0] == "--config"]
        raise _unloadable_config(e, given[-1] if given else "") from e


def load_config() -> ml_collections.ConfigDict:
    """The `--config` file's config; a file that cannot be loaded is a FileNotFoundError naming it."""
    try:
        config = _CONFIG.value
        config.keys()  # a file that failed to load is an object that raises on first use
        return config
    except OSError as e:  # how config_flags reports a config file it cannot load (on first use of the flag)
        raise _unloadable_config(e, flags.FLAGS["config"].config_filename) from e


def _unloadable_config(error: OSError, spec: str) -> OSError:
    """config_flags' error for a config file it cannot load, as a FileNotFoundError naming the file; any other
    OSError as it is."""
    if "Failed loading config file" not in str(error):
        return error
    return FileNotFoundError(f"--config={spec}: cannot load {spec.partition(':')[0]!r} from {os.getcwd()}.")


@user_errors_in_one_line
def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    quiet_orbax()
    config = load_config()
    config_schema.validate(config)
    workdir = workdir_path(_WORKDIR.value)
    keep_freed_memory()  # XLA:CPU's per-step temporaries kept by malloc, not faulted in anew at every step
    initialize_distributed()  # before anything starts JAX's backend (use_cpu_cores asks which one it is)
    use_cpu_cores(config.cpu_cores)
    logging.info("JAX %s, backend %s, devices %s", jax.__version__, jax.default_backend(), jax.devices())
    logging.info("Config:\n%s", config)
    try:
        loop.train_and_evaluate(config, workdir, hooks.from_config(config))
    except loop.DivergedError as e:
        logging.error("%s", e)
        sys.exit(f"Training stopped: {e}")


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
