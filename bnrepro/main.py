"""Trains and evaluates one experiment: `python -m bnrepro.main --config=configs/X.py:variant --workdir=DIR`.

A shipped config is named as in the repository, from any directory (`cli.find_config_file`). Config keys can be
overridden in ml_collections' `config_flags` syntax, e.g. `--config.learning_rate=0.1` (`cli.parse_overrides`).
Re-running on the same workdir resumes.
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

import sys
from collections.abc import Sequence

import jax
import ml_collections
from absl import app, flags, logging

from bnrepro import hooks
from bnrepro.cli import call_file_function, parse_overrides, quiet_orbax, user_errors_in_one_line, workdir_path
from bnrepro.cpu import keep_freed_memory, use_cpu_cores
from bnrepro.training import loop, preemption

if _COMMAND:
    gc.freeze()
    gc.enable()

_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and TensorBoard events.")
_CONFIG = flags.DEFINE_string(
    "config", None, "Training config, PATH.py[:ARG]: its get_config(ARG); override a key with --config.KEY=VALUE."
)
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


def parse_flags(argv: list[str]) -> list[str]:
    """absl's parsing of this command's flags; the rest, the `--config.KEY=VALUE` overrides, is left for `main`."""
    return flags.FLAGS(argv, known_only=True)


def load_config(spec: str, overrides: Sequence[str]) -> ml_collections.ConfigDict:
    """The config `--config=PATH.py[:ARG]` names, PATH's `get_config(ARG)` (`cli.call_file_function`: a shipped
    config may be named as in the repository, e.g. `configs/mnist_mlp.py`, from any directory), locked, with
    `overrides` (`cli.parse_overrides`) applied. A file that is not there is a FileNotFoundError naming it."""
    config = call_file_function(spec, "--config", "get_config")
    config.lock()
    config.update_from_flattened_dict(parse_overrides(config, overrides))
    return config


@user_errors_in_one_line
def main(argv: list[str]) -> None:
    quiet_orbax()
    config = load_config(_CONFIG.value, argv[1:])  # validated by train_and_evaluate, before anything is written
    workdir = workdir_path(_WORKDIR.value)
    keep_freed_memory()  # XLA:CPU's per-step temporaries kept by malloc, not faulted in anew at every step
    initialize_distributed()  # before anything starts JAX's backend (use_cpu_cores asks which one it is)
    use_cpu_cores(config.cpu_cores)
    logging.info("JAX %s, backend %s, devices %s", jax.__version__, jax.default_backend(), jax.devices())
    logging.info("Config:\n%s", config)
    try:
        with preemption.sigterm_stops_the_run():
            loop.train_and_evaluate(config, workdir, hooks.from_config(config))
    except loop.DivergedError as e:
        logging.error("%s", e)
        sys.exit(f"Training stopped: {e}")
    except preemption.Stopped as e:
        print(e, file=sys.stderr, flush=True)
        sys.exit(e.exit_code)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
