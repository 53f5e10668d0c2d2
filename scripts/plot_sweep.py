"""Draws a sweep's results: the accuracy curves of every point (one panel per value pair of the first two axes
the sweep varies, other than seed and learning rate; the learning rate, or the first numeric axis, as colour) and
the final accuracy against that numeric axis, diverged points marked; prints the summary table. It only reads:
the summary files are the sweep command's (`python -m bnrepro.sweep`), never rewritten here.

    python scripts/plot_sweep.py --sweep=configs/sweeps/mnist_activation_bn.py --workdir=runs/sweeps/mnist

Writes WORKDIR/sweep_curves.png and WORKDIR/sweep_final.png. A sweep file that does not match the workdir (a
point without its run directory, or whose run was made with another config) is an error, exit code 2.
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib
from absl import app, flags

matplotlib.use("Agg")  # PNG files only: choose the backend before `figures` imports pyplot
from bnrepro import figures
from bnrepro.sweep.plan import changed_points
from bnrepro.sweep.points import Sweep, load_sweep, point_name
from bnrepro.sweep.summary import SUMMARY_MD, evaluations, summarize
from bnrepro.training.run_dir import config_json, flatten

_SWEEP = flags.DEFINE_string("sweep", None, "The sweep file the workdir was trained with, PATH.py[:ARG].")
_WORKDIR = flags.DEFINE_string("workdir", None, "The sweep's workdir.")
OVERLAID = ("seed",)  # axes drawn as several lines of one colour, not as panels
ALL = "all"  # the value of a panel axis the sweep does not have


def mismatch(spec: Sweep, workdir: Path) -> str | None:
    """Why the sweep `spec` is not the one trained in `workdir`, if it is not."""
    names = [point_name(point) for point in spec.points]
    missing = [name for name in names if not (workdir / name).is_dir()]
    if missing:
        return f"{len(missing)} of its {len(names)} points have no run directory there (e.g. {missing[0]})"
    changed = changed_points(spec, workdir)
    if changed:
        index, description = next(iter(changed.items()))
        return f"{len(changed)} of its points were trained with another config (e.g. {names[index]}: {description})"
    return None


def axes(spec: Sweep) -> tuple[list[str], str | None]:
    """The keys the sweep varies, in their order, but for the numeric one drawn as colour and x (the learning
    rate if it varies); and that one, if any."""
    keys = list(dict.fromkeys(key for point in spec.points for key in point))
    values = point_values(spec, keys)
    varying = [key for key in keys if len({repr(value) for value in values[key]}) > 1]
    numeric = [
        key
        for key in varying
        if key not in OVERLAID and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values[key])
    ]
    colour = "learning_rate" if "learning_rate" in numeric else (numeric[0] if numeric else None)
    return [key for key in varying if key != colour], colour


def point_values(spec: Sweep, keys: list[str]) -> dict[str, list]:
    """Each key's value at every point: the point's override, else the base config's."""
    base = flatten(config_json(spec.base))
    return {key: [point[key] if key in point else base.get(key) for point in spec.points] for key in keys}


def main(argv: list[str]) -> int:
    del argv
    workdir, spec = Path(_WORKDIR.value), load_sweep(_SWEEP.value)
    problem = None if workdir.is_dir() else "it does not exist"
    problem = problem or mismatch(spec, workdir)
    if problem:
        print(f"--sweep={_SWEEP.value} does not match --workdir={workdir}: {problem}. Nothing drawn.", file=sys.stderr)
        return 2
    keys, colour = axes(spec)
    grid = tuple(([key for key in keys if key not in OVERLAID] + ["sweep", "points"])[:2])
    rows = summarize(spec, workdir)  # read from the run directories; no summary file is written
    values = point_values(spec, [key for key in [*keys, colour] if key is not None])
    for index, row in enumerate(rows):
        for key, at_points in values.items():
            row.setdefault(key, at_points[index])
        row.setdefault("sweep", ALL)
        row.setdefault("points", ALL)
        row["point"] = index
    curves = [evaluations(workdir / point_name(point)) for point in spec.points]
    figures.plot_sweep_curves(rows, curves, grid=grid, colour=colour or "point").savefig(
        workdir / "sweep_curves.png", dpi=110
    )
    written = [workdir / "sweep_curves.png"]
    if colour is not None:
        figures.plot_sweep_final(rows, x=colour, lines=grid).savefig(workdir / "sweep_final.png", dpi=110)
        written.append(workdir / "sweep_final.png")
    else:
        print("the sweep varies no numeric key: no final-accuracy plot.")
    summary = workdir / SUMMARY_MD
    print(summary.read_text() if summary.exists() else f"({summary} not written yet: the sweep has not ended)")
    print(f"wrote {' and '.join(map(str, written))}")
    return 0


if __name__ == "__main__":
    flags.mark_flags_as_required(["sweep", "workdir"])
    app.run(main)
