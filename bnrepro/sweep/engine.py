"""Where a sweep's groups train: one Ray task per group, on a local Ray instance or on a cluster.

`connect(address)` starts a local instance (no set-up, no dashboard, quiet: every Ray process on 127.0.0.1) or,
with `address` ("auto" or "HOST:PORT"), joins a running cluster. `run_groups` then submits each group of points
(`bnrepro.sweep.plan.groups_of`) as a task that trains it with `worker.run_points`, in a fresh worker process
(`max_calls=1`: JAX starts there with the task's devices and hands them back when the task ends), with the
resources of `Resources`:

* a CPU host: `cpus_per_group` cores; the task pins its process to that many cores of its node that no other
  group of ours holds (node-local `flock`s), as a small net trains fastest on cores of its own;
* a GPU host: `gpus_per_group` (fractions share a device): Ray gives each task its own `CUDA_VISIBLE_DEVICES`,
  so an 8-GPU box trains 8 groups at once, each on its own device;
* a TPU host: `tpus_per_group` chips, Ray's `TPU` resource (a TPU VM's Ray node declares its chips as `TPU`);
  JAX in the task sees the host's chips.
A group that asks for no accelerator runs JAX on the CPU, even on a host that has one.

Every node must see the sweep's workdir at the same path (a filesystem all nodes share): the driver writes a
token into it, and a task that cannot read that token fails with a message that says so.

Faults: Ray's ownership model stops a driver's tasks when the driver dies (SIGKILL included), and their worker
processes with them; a rerun resumes every point from its checkpoint. A worker process that dies is retried
(`max_retries`), resuming from the group's checkpoints, then its points are recorded as failed with the cause.
A worker that gets SIGTERM (its node preempted) checkpoints its group at the next step boundary and exits, so the
retry resumes from there. Ctrl-C or SIGTERM to the driver asks every running group to checkpoint at its next
boundary and stop (`STOP_FILE`), cancels what has not stopped within `CANCEL_GRACE_SECONDS`, and leaves the points
to resume. An `address` with no cluster behind it, or one that wants an authentication token the driver lacks, is
refused in one line before anything starts; a cluster that goes away mid-sweep ends the sweep with `ClusterLost`,
its points left to resume.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import logging as pylogging
import os
import signal
import socket
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import jax
import ray

from bnrepro.cli import TemporaryFailure
from bnrepro.cpu import keep_freed_memory
from bnrepro.sweep import points, worker
from bnrepro.sweep.status import LOG_FILE
from bnrepro.training import preemption
from bnrepro.training.run_dir import write_atomically

LOOPBACK = "127.0.0.1"
TOKEN_FILE = ".sweep_token"
STOP_FILE = ".sweep_stop"  # written by an interrupted driver: its groups checkpoint and stop (`preemption.stop_file`)
# The longest temp folder whose Ray socket paths (".../ray/session_<date>_<pid>/sockets/plasma_store") fit AF_UNIX's
# 107 bytes.
MAX_TEMP_DIR_LENGTH = 40
# A lock per core that a group holds while it runs there: one folder per node, whatever TMPDIR a worker has.
CORE_LOCKS = Path("/tmp" if os.path.isdir("/tmp") else tempfile.gettempdir()) / "bnrepro-cores"
# Settings of every Ray process of a local instance: stay on loopback (by default Ray advertises and dials the
# machine's interface address even for a local instance), send no usage statistics.
LOCAL_ENVIRONMENT = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}
# How long `connect` keeps trying an address that refuses connections (a head still starting), and how long the
# cluster's GCS may stay unreachable mid-sweep before the sweep ends with `ClusterLost` (Ray's own driver gives up
# after 60 s, with a C++ stack dump).
CONNECT_SECONDS = 10.0
CLUSTER_LOST_SECONDS = 10.0
# How long the groups of an interrupted sweep get to checkpoint at their next step boundary before a forced cancel.
CANCEL_GRACE_SECONDS = 60.0


@dataclasses.dataclass(frozen=True)
class Resources:
    """What each group's task asks of Ray, and how often a task whose worker died is retried."""

    cpus_per_group: float = 1
    gpus_per_group: float = 0
    tpus_per_group: float = 0
    max_retries: int = 2

    def __post_init__(self) -> None:
        if self.cpus_per_group <= 0 or self.gpus_per_group < 0 or self.tpus_per_group < 0 or self.max_retries < 0:
            raise ValueError(f"resources per group must be positive (CPUs) or zero and up (the rest): {self}.")

    @property
    def accelerated(self) -> bool:
        """Whether a group asks for GPUs or TPU chips (else its JAX runs on the CPU)."""
        return bool(self.gpus_per_group or self.tpus_per_group)

    def task_options(self) -> dict[str, Any]:
        """`ray.remote` options of one group's task."""
        options: dict[str, Any] = {"num_cpus": self.cpus_per_group, "max_retries": self.max_retries}
        if self.gpus_per_group:
            options["num_gpus"] = self.gpus_per_group
        if self.tpus_per_group:
            options["resources"] = {"TPU": self.tpus_per_group}
        return options


class ClusterLost(TemporaryFailure):
    """The Ray cluster went away mid-sweep (its GCS unreachable, or the driver's node gone): nothing more can
    run; the points keep their checkpoints and a rerun resumes them."""


@dataclasses.dataclass(frozen=True)
class GroupOutcome:
    """How a group's task ended: `error` is None if it ran to the end (its points' own statuses say how each
    point ended), else why the task failed (its points have no status of their own)."""

    indices: list[int]
    error: str | None


def connect(address: str | None = None, num_cpus: int | None = None, num_gpus: float | None = None) -> None:
    """Joins the Ray cluster at `address` ("auto": the one started on this machine with `ray start`), or, with no
    address, starts a local instance with `num_cpus` CPUs (None: every core this process may use) and
    `num_gpus` GPUs (None: as Ray detects), on 127.0.0.1 only. Does nothing if Ray is already initialized."""
    if ray.is_initialized():
        return
    quiet = {"log_to_driver": False, "logging_level": pylogging.ERROR}
    if address:
        _check_reachable(address)
        ray.init(address=address, **quiet)
        return
    os.environ.update(LOCAL_ENVIRONMENT)  # for the instance's processes, which read it when they start
    # This process read RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER when it imported ray; Ray (2.60, pinned) looks up the
    # node address through this constant, so it is set here too, or 127.0.0.1 would be swapped for the
    # machine's interface address.
    ray._private.ray_constants.ENABLE_RAY_CLUSTER = False
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    ray.init(  # "local": a new instance, even where `ray start` runs one on this machine
        address="local",
        _temp_dir=_ray_temp_dir(),
        num_cpus=num_cpus or cores,
        num_gpus=num_gpus,
        include_dashboard=False,
        _node_ip_address=LOOPBACK,
        **quiet,
    )


def _check_reachable(address: str) -> None:
    """Refuses, in one line, an `address` with no Ray cluster behind it (Ray would retry for minutes) or whose
    cluster wants an authentication token this process does not send (Ray: a ConnectionError after ~20 s)."""
    if address.startswith("ray://"):  # Ray Client: its own protocol, checked by Ray
        return
    try:
        gcs = ray._private.services.canonicalize_bootstrap_address_or_die(address)
    except ConnectionError as e:  # "auto" with no cluster started on this machine
        raise ValueError(f"--address={address}: {str(e).strip().splitlines()[0]}") from None
    if not _gcs_answers(gcs, CONNECT_SECONDS):
        raise ValueError(
            f"--address={address}: no Ray cluster answers at {gcs} (tried for {CONNECT_SECONDS:.0f} s). Start one "
            "there (`ray start --head`), or leave out --address to train on a local Ray instance."
        )
    try:  # the GCS's own client: refuses a missing or wrong token at once (and logs it: not on the console)
        with _stderr_silenced():
            ray._raylet.GcsClient(address=gcs, cluster_id=None)
    except ray.exceptions.AuthenticationError:
        raise ValueError(
            f"--address={address}: the cluster at {gcs} wants its authentication token: set RAY_AUTH_MODE=token "
            "and give the head's token (RAY_AUTH_TOKEN, or the file ~/.ray/auth_token or RAY_AUTH_TOKEN_PATH)."
        ) from None


@contextlib.contextmanager
def _stderr_silenced() -> Iterator[None]:
    """This process's file descriptor 2, where Ray's C++ code logs, sent to /dev/null while active."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _gcs_answers(gcs: str, seconds: float) -> bool:
    """Whether the GCS at HOST:PORT accepts a TCP connection within `seconds` (tried once a second)."""
    host, _, port = gcs.rpartition(":")
    deadline = time.monotonic() + seconds
    while True:
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=max(0.1, min(2.0, seconds))):
                return True
        except OSError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(1.0)


def _ray_temp_dir() -> str | None:
    """Where a local instance keeps its session files: Ray's default (the temp folder, or RAY_TMPDIR) unless its
    socket paths would be too long for AF_UNIX (a deep TMPDIR, as under pytest), then /tmp/ray."""
    default = os.environ.get("RAY_TMPDIR") or tempfile.gettempdir()
    return None if len(default) <= MAX_TEMP_DIR_LENGTH else "/tmp/ray"


def run_groups(
    sweep: points.Sweep,
    workdir: Path,
    groups: Sequence[list[int]],
    resources: Resources,
    on_end: Callable[[GroupOutcome], None] = lambda outcome: None,
) -> list[GroupOutcome]:
    """Trains each group of points in a Ray task (see the module docstring) and returns how each task ended, in
    the order of `groups`, calling `on_end` as each one ends. `connect` first."""
    workdir = workdir.absolute()
    token = uuid.uuid4().hex
    (workdir / STOP_FILE).unlink(missing_ok=True)  # an earlier interrupted driver's
    write_atomically(workdir / TOKEN_FILE, token + "\n")
    task = ray.remote(max_calls=1)(_train_group)
    refs = {
        task.options(**resources.task_options(), name=f"bnrepro-sweep:{sweep.run_name(group[0])}").remote(
            sweep, group, str(workdir), token, resources.cpus_per_group, resources.accelerated
        ): i
        for i, group in enumerate(groups)
    }
    outcomes: dict[int, GroupOutcome] = {}
    pending = list(refs)
    gcs, unreachable_since = ray.get_runtime_context().gcs_address, None
    try:
        with preemption.signals_interrupt(signal.SIGTERM):  # the driver's SIGTERM takes Ctrl-C's path
            while pending:
                done, pending = ray.wait(pending, num_returns=1, timeout=CLUSTER_LOST_SECONDS / 5)
                if not done:  # nothing ended: is the cluster still there?
                    if _gcs_answers(gcs, 0):
                        unreachable_since = None
                    elif time.monotonic() - (unreachable_since := unreachable_since or time.monotonic()) > (
                        CLUSTER_LOST_SECONDS
                    ):
                        raise ClusterLost(f"the Ray cluster's GCS at {gcs} stopped answering")
                for ref in done:
                    i = refs[ref]
                    try:
                        ray.get(ref)
                        outcomes[i] = GroupOutcome(groups[i], None)
                    except ray.exceptions.LocalRayletDiedError:
                        raise ClusterLost(f"the Ray node of this driver (GCS {gcs}) went away") from None
                    except ray.exceptions.RayError as e:
                        outcomes[i] = GroupOutcome(groups[i], _cause(e, resources.max_retries))
                    on_end(outcomes[i])
    except ClusterLost as e:
        raise ClusterLost(
            f"{e} mid-sweep: {len(groups) - len(outcomes)} of {len(groups)} groups unfinished; rerun the same "
            "command on a running cluster to resume them from their checkpoints."
        ) from None
    except BaseException:  # Ctrl-C, SIGTERM, or an error in the driver: nothing trains on unwatched
        _stop(pending, workdir)
        raise
    return [outcomes[i] for i in range(len(groups))]


def _stop(tasks: list[ray.ObjectRef], workdir: Path) -> None:
    """Stops `tasks`: each asked to checkpoint and stop at its next step boundary (`STOP_FILE` in `workdir`, not
    a cancel: Ray 2.60 can abort the driver when a cancel crosses a task's end), given `CANCEL_GRACE_SECONDS` to
    end, then cancelled by force. A second Ctrl-C cancels them at once."""
    if not tasks:
        return
    try:
        print(
            f"\nStopping {len(tasks)} groups: each checkpoints at its next step boundary (Ctrl-C again: at once).",
            flush=True,
        )
        write_atomically(workdir / STOP_FILE, "stop\n")
        ray.wait(tasks, num_returns=len(tasks), timeout=CANCEL_GRACE_SECONDS)
    finally:
        for task in ray.wait(tasks, num_returns=len(tasks), timeout=0)[1]:  # those still running
            ray.cancel(task, force=True)


def _cause(error: ray.exceptions.RayError, retries: int) -> str:
    """One line on why a group's task failed."""
    if isinstance(error, ray.exceptions.RayTaskError):  # the task raised: its own message
        cause = error.cause if error.cause is not None else error
        return f"{type(cause).__name__}: {str(cause).strip().splitlines()[-1] if str(cause).strip() else ''}"
    first = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"{type(error).__name__} (after {retries} retries): {first}"


def _train_group(
    sweep: points.Sweep, indices: list[int], workdir: str, token: str, cpus: float, accelerated: bool
) -> dict[str, Any]:
    """The body of a group's Ray task: checks the workdir is the sweep's, logs into the group's `train.log`, pins
    the process to cores of its own (CPU groups), trains the points (`worker.run_points`) and records in each
    point's status where it trained (node, process, devices, backend, cores)."""
    keep_freed_memory()  # XLA:CPU's per-step temporaries (41 MB for Table 2's net) not faulted in at every step
    path = Path(workdir)
    check_shared_workdir(path, token)
    if not accelerated and not jax.config.jax_platforms:  # before JAX starts its backend, in this fresh worker
        jax.config.update("jax_platforms", "cpu")  # no accelerator asked for: leave the host's to other groups
    context = ray.get_runtime_context()
    where = {
        "node_id": context.get_node_id(),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "backend": jax.default_backend(),  # where JAX trains the group: gpu, tpu or cpu
    }
    log = path / sweep.run_name(indices[0]) / LOG_FILE
    for index in indices[1:]:  # every point's run directory shows its log
        _link(path / sweep.run_name(index) / LOG_FILE, log)
    with _logging_to(log), _own_cores(0 if accelerated else int(cpus)):
        where["cores"] = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
        try:
            with preemption.sigterm_stops_the_run(), preemption.stop_file(path / STOP_FILE):
                worker.run_points(sweep, indices, path, where)
        except preemption.Stopped as e:  # checkpointed
            print(e, file=sys.stderr, flush=True)
            if e.signum == signal.SIGTERM:  # the worker process ends, so Ray retries the group (from here)
                os._exit(e.exit_code)
    return where


def check_shared_workdir(workdir: Path, token: str) -> None:
    """Refuses to train unless `workdir` holds this sweep's token: the task's node sees the driver's workdir."""
    try:
        found = (workdir / TOKEN_FILE).read_text().strip()
    except OSError as e:
        found = f"unreadable ({e.strerror or e})"
    if found != token:
        raise RuntimeError(
            f"{workdir} on {socket.gethostname()} is not this sweep's workdir (its {TOKEN_FILE} is {found!r}): "
            "the sweep's --workdir must be on a filesystem all nodes share, at the same path."
        )


def _link(link: Path, log: Path) -> None:
    """`link` made a relative symbolic link to the group's `log` (in another point's run directory), unless a
    file is there already (a log of the point's own from an earlier group)."""
    link.parent.mkdir(parents=True, exist_ok=True)
    if not link.exists() and not link.is_symlink():
        link.symlink_to(os.path.relpath(log, link.parent))


@contextlib.contextmanager
def _logging_to(log: Path) -> Iterator[None]:
    """Sends this process's stdout, stderr and absl's INFO log into `log` (appended: a retry follows the attempt
    it retries)."""
    from absl import logging

    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as f:
        f.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')}: process {os.getpid()} on {socket.gethostname()}\n")
        f.flush()
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(f.fileno(), 1)
        os.dup2(f.fileno(), 2)
        logging.use_absl_handler()
        logging.set_verbosity(logging.INFO)
        yield


@contextlib.contextmanager
def _own_cores(count: int) -> Iterator[None]:
    """Pins this process to `count` cores of its node that no other group of ours holds (a `flock` per core in
    `CORE_LOCKS`, released when the process ends, however it ends); does nothing for 0, or if too few
    are free (more groups than cores)."""
    allowed = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    held: dict[int, int] = {}  # core: descriptor of its lock
    if count and len(allowed) > count:
        folder = CORE_LOCKS
        folder.mkdir(mode=0o777, exist_ok=True)
        for core in allowed:
            try:  # read-only: another user's lock file still opens (flock needs no write access)
                descriptor = os.open(folder / f"{core}.lock", os.O_RDONLY | os.O_CREAT, 0o666)
            except OSError:
                continue
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(descriptor)
                continue
            held[core] = descriptor
            if len(held) == count:
                os.sched_setaffinity(0, held)
                break
        else:  # too few free: share the cores rather than wait
            for descriptor in held.values():
                os.close(descriptor)
            held = {}
    try:
        yield
    finally:
        for descriptor in held.values():
            os.close(descriptor)
