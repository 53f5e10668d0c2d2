"""Draws a sweep's results: the accuracy curves of every point (activation x BN panels, learning rate as
colour) and the final accuracy against the learning rate, diverged points marked; prints the summary table.

    python scripts/plot_sweep.py --sweep=configs/sweeps/mnist_activation_bn.py --workdir=runs/sweeps/mnist

Writes WORKDIR/sweep_curves.png and WORKDIR/sweep_final.png.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib
from absl import app, flags

matplotlib.use("Agg")  # PNG files only: choose the backend before `figures` imports pyplot
from bnrepro import figures, sweep

_SWEEP = flags.DEFINE_string("sweep", None, "The sweep file the workdir was trained with, PATH.py[:ARG].")
_WORKDIR = flags.DEFINE_string("workdir", None, "The sweep's workdir.")


def main(argv: list[str]) -> None:
    del argv
    workdir, spec = Path(_WORKDIR.value), sweep.load_sweep(_SWEEP.value)
    rows = sweep.write_summary(spec, workdir)
    curves = [sweep.evaluations(workdir / sweep.point_name(point)) for point in spec.points]
    figures.plot_sweep_curves(rows, curves).savefig(workdir / "sweep_curves.png", dpi=110)
    figures.plot_sweep_final(rows).savefig(workdir / "sweep_final.png", dpi=110)
    print((workdir / sweep.SUMMARY_MD).read_text())
    print(f"wrote {workdir / 'sweep_curves.png'} and {workdir / 'sweep_final.png'}")


if __name__ == "__main__":
    flags.mark_flags_as_required(["sweep", "workdir"])
    app.run(main)
