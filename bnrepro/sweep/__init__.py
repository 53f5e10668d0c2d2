"""Ablation sweeps: a grid of configs trained as independent runs, resumable, summarized in one table.

    python -m bnrepro.sweep --sweep=configs/sweeps/mnist_activation_bn.py[:quick] --workdir=runs/sweep1

A sweep file's `get_sweep(arg)` returns a `Sweep` (`bnrepro.sweep.points`): a base config and a list of override
dicts (`product` of axes, plus any hand-listed points), optionally a name per point. Each point trains with
`bnrepro.training.loop` in its own run directory `WORKDIR/<key=value,...>` (or `WORKDIR/<name>`: the same
`metrics.jsonl`, checkpoints and TensorBoard files as a single run) and leaves `sweep_status.json` there when it
ends: finished, diverged (NaN loss) or failed (an exception, recorded with its traceback; or its task's worker
died), with the node it trained on. Re-running the command skips finished and diverged points and resumes the
rest from their last checkpoint, so Ctrl-C or SIGKILL loses at most the work since a point's last checkpoint.

Points that differ only in seed and learning rate train together, up to `--group_size` of them in one vmapped
program (`group.train_group`), each still writing its own run directory as if it had trained alone. Each group
is a Ray task (`bnrepro.sweep.engine`): on a local Ray instance, `--jobs` groups at once (default: one per CPU
core, each pinned to a core of its own), or across a Ray cluster's nodes and devices.
At the end `WORKDIR/summary.csv` and `WORKDIR/summary.md` hold one row per point (`summary.summarize`), and
`WORKDIR/hparams` the same for TensorBoard's HParams tab.

A point whose run directory holds a run made with another config than the point's now (the sweep file was
edited: `plan.changed_points`; `RESUMABLE_CHANGES` such as num_steps aside) is refused, named with the keys that
differ, and counted as failed; with `restart_changed` it is retrained in a fresh directory, the old one kept
as `WORKDIR/<point>.old-<time>`. The command exits non-zero if any point failed.

The package, one job a module:
* `points`  -- the spec: `Sweep`, `product`, `seeded`, `load_sweep`, each point's config and run directory name.
* `status`  -- how a point ended (`sweep_status.json`) and its group's log.
* `plan`    -- which points train and in which groups: pending, changed (set aside), `groups_of`.
* `engine`  -- where the groups train: one Ray task each, locally or on a cluster.
* `worker`  -- what a task runs: a group trained (`group.train_group`) and each point's end recorded.
* `group`   -- many models in one vmapped program.
* `summary` -- the summary table; `hparams` the same for TensorBoard.
* `run`     -- `run_sweep`: plan, engine, summary.
This package re-exports their names; importing it loads only `points` and `status` (neither jax nor ray): the
other names import their module when first read.
"""

from __future__ import annotations

import importlib
from typing import Any

from bnrepro.sweep.points import (
    Sweep,
    load_sweep,
    point_config,
    point_name,
    product,
    seed_count,
    seeded,
    variant_overrides,
    with_overrides,
)
from bnrepro.sweep.status import STATUS_FILE, failure, read_status, write_status

# The names of the modules that import jax, ray or matplotlib, by the module that holds them, imported when one
# is first read (PEP 562): a sweep file's `from bnrepro.sweep import Sweep, product` loads none of them.
_IMPORTED_ON_USE = {
    "plan": ("DONE", "changed_points", "groups_of", "latest_checkpoint", "pending_points", "set_aside"),
    "run": ("DEFAULT_GROUP_SIZE", "run_sweep"),
    "summary": (
        "SUMMARY_CSV", "SUMMARY_MD", "evaluations", "markdown_table", "report_unfinished", "summarize",
        "summary_columns", "write_summary",
    ),
    "worker": ("run_points",),
}  # fmt: skip
_MODULE_OF = {name: module for module, names in _IMPORTED_ON_USE.items() for name in names}

__all__ = [
    "DEFAULT_GROUP_SIZE", "DONE", "STATUS_FILE", "SUMMARY_CSV", "SUMMARY_MD", "Sweep", "changed_points", "evaluations",
    "failure", "groups_of", "latest_checkpoint", "load_sweep", "markdown_table", "pending_points", "point_config",
    "point_name", "product", "read_status", "report_unfinished", "run_points", "run_sweep", "seed_count", "seeded",
    "set_aside", "summarize", "summary_columns", "variant_overrides", "with_overrides", "write_status", "write_summary",
]  # fmt: skip


def __getattr__(name: str) -> Any:
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_MODULE_OF[name]}"), name)


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
