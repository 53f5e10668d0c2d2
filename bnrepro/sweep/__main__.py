"""The sweep CLI: `python -m bnrepro.sweep --sweep=configs/sweeps/NAME.py[:ARG] --workdir=DIR [--jobs=N]
[--group_size=N] [--address=auto|HOST:PORT] [--cpus_per_group=C] [--gpus_per_group=G] [--tpus_per_group=T]`.

Trains the sweep's unfinished points (see `bnrepro.sweep`), each group a Ray task (`bnrepro.sweep.engine`): on a
local Ray instance started for the sweep, or, with `--address`, on a running Ray cluster. Prints each point's end
and the summary table; exits with 1 if a point failed (`--restart_changed` retrains the points whose config the
sweep file changed), with 130 on Ctrl-C and 143 on SIGTERM (each group first checkpoints at its next step
boundary; the points resume on the next run), with 75 if the Ray cluster goes away mid-sweep (a rerun resumes).
An --address with no cluster, or whose cluster wants a token this process lacks, is one line and exit code 2.
"""

import signal
import time

from absl import app, flags

from bnrepro.cli import quiet_orbax, user_errors_in_one_line, workdir_path
from bnrepro.sweep import engine
from bnrepro.sweep.points import load_sweep
from bnrepro.sweep.run import DEFAULT_GROUP_SIZE, run_sweep
from bnrepro.sweep.summary import SUMMARY_MD
from bnrepro.training import preemption, run_dir

_SWEEP = flags.DEFINE_string("sweep", None, "Sweep file, PATH.py or PATH.py:ARG (passed to its get_sweep).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory holding one run directory per point and the summary.")
_JOBS = flags.DEFINE_integer("jobs", 0, "Local instance: groups trained at once (0: one per CPU core).")
_GROUP_SIZE = flags.DEFINE_integer("group_size", DEFAULT_GROUP_SIZE, "Most points in one vmapped group.")
_RESTART_CHANGED = flags.DEFINE_bool(
    "restart_changed",
    False,
    "Retrain the points whose run directory holds a run made with another config (the sweep file was edited) in a "
    "fresh directory, the old one kept as POINT.old-TIME; without it they are refused and count as failed.",
)
_ADDRESS = flags.DEFINE_string(
    "address", None, "A running Ray cluster to join: auto (started on this node with `ray start`) or HOST:PORT. "
    "Default: a local Ray instance for this sweep."
)  # fmt: skip
_CPUS = flags.DEFINE_float("cpus_per_group", 1, "CPU cores per group (on a CPU host each group is pinned to its own).")
_GPUS = flags.DEFINE_float("gpus_per_group", 0, "GPUs per group (fractions share a GPU); 0: groups run on the CPU.")
_TPUS = flags.DEFINE_float("tpus_per_group", 0, "TPU chips per group (Ray's TPU resource).")
_RETRIES = flags.DEFINE_integer("max_retries", 2, "Retries of a group whose worker process died.")


@user_errors_in_one_line
def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    quiet_orbax()
    workdir = workdir_path(_WORKDIR.value)
    resources = engine.Resources(_CPUS.value, _GPUS.value, _TPUS.value, _RETRIES.value)
    start = time.perf_counter()
    spec = load_sweep(_SWEEP.value)
    with run_dir.locked(workdir):  # one driver per sweep directory: a second one is refused at once
        try:
            rows = run_sweep(
                spec, workdir, _JOBS.value, _GROUP_SIZE.value, _RESTART_CHANGED.value, resources, _ADDRESS.value
            )
        except KeyboardInterrupt:
            signum = preemption.interrupting_signal()
            print(
                f"\nInterrupted by {signal.Signals(signum).name}: the groups are stopped; rerun the same command "
                f"to resume them in {workdir}."
            )
            return 128 + signum
    print(f"\nSweep {_SWEEP.value}: {len(rows)} points, {time.perf_counter() - start:.0f} s.")
    print((workdir / SUMMARY_MD).read_text())
    failed = [spec.run_name(i) for i, row in enumerate(rows) if row["status"] == "failed"]
    if failed:
        print(f"{len(failed)} of {len(rows)} points failed: {', '.join(failed)} (see {workdir / SUMMARY_MD}).")
        return 1
    return 0


if __name__ == "__main__":
    flags.mark_flags_as_required(["sweep", "workdir"])
    app.run(main)
