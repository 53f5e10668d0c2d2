"""Draws Santurkar et al. (2018)'s gradient-propagation measurements of runs trained with
`config.diagnostics_every` (e.g. `configs/mnist_ics.py`, `configs/sweeps/mnist_ics.py`) and prints their summary.

    python scripts/plot_ics.py runs/sweeps/ics --out=runs/sweeps/ics/ics.png
    python scripts/plot_ics.py runs/ics/sigmoid_bn runs/ics/sigmoid_none --layer=DenseBN_1

Each argument is a run directory, or a directory of runs (a sweep's workdir). Runs of the same net (activation
and BN variant, from their config.json) are averaged: seeds. The figure shows, for one layer, ICS ||G - G'|| and
cos(G, G'), the gradient norm, the loss landscape along the gradient (loss variation, gradient predictiveness,
effective beta-smoothness), the layer Jacobian's singular values and test accuracy; the table averages each over
the second half of training.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib
from absl import app, flags

matplotlib.use("Agg")  # PNG files only: choose the backend before `figures` imports pyplot
from bnrepro import figures
from bnrepro.training import run_dir

_OUT = flags.DEFINE_string("out", "ics.png", "Where to write the figure.")
_LAYER = flags.DEFINE_string("layer", "", "The layer whose per-layer quantities to show (default: the last one).")


def run_directories(paths: list[str]) -> list[Path]:
    """The run directories among `paths` and their subdirectories (those with a diagnostics file)."""
    runs = []
    for path in map(Path, paths):
        found = [path] if (path / run_dir.DIAGNOSTICS_FILE).exists() else sorted(
            p.parent for p in path.glob(f"*/{run_dir.DIAGNOSTICS_FILE}")
        )  # fmt: skip
        if not found:
            raise app.UsageError(f"{path}: no {run_dir.DIAGNOSTICS_FILE} in it or in its subdirectories.")
        runs += found
    return runs


def main(argv: list[str]) -> None:
    if len(argv) < 2:
        raise app.UsageError("give one or more run directories (or directories of runs).")
    runs = figures.read_ics_runs(run_directories(argv[1:]))
    first = next(iter(runs.values()))[0].diagnostics[-1]
    layer = _LAYER.value or max(k.split("/", 1)[1] for k in first if k.startswith("ics_l2/"))
    if f"ics_l2/{layer}" not in first:
        raise app.UsageError(
            f"--layer={layer}: not measured; the runs have {sorted(k[7:] for k in first if k.startswith('ics_l2/'))}."
        )
    figures.plot_ics(runs, layer).savefig(_OUT.value, dpi=110)
    print(figures.markdown_table(figures.ics_summary(runs, layer), cell=figures.ics_cell))
    print(f"wrote {_OUT.value}")


if __name__ == "__main__":
    app.run(main)
