"""Draws the paper's Figure 1 from a baseline and a BN run directory, and prints the numbers.

python scripts/plot_figure1.py --baseline=runs/mnist_baseline --bn=runs/mnist_bn --out=runs/figure1.png
"""

from __future__ import annotations

import matplotlib
from absl import app, flags

matplotlib.use("Agg")  # PNG files only: choose the backend before `figures` imports pyplot
from bnrepro import figures

_BASELINE = flags.DEFINE_string("baseline", "runs/mnist_baseline", "Run directory of the net without BN.")
_BN = flags.DEFINE_string("bn", "runs/mnist_bn", "Run directory of the net with BN.")
_OUT = flags.DEFINE_string("out", "runs/figure1.png", "Where to write the PNG.")


def main(argv: list[str]) -> None:
    del argv
    baseline = figures.read_evaluations(_BASELINE.value)
    batch_norm = figures.read_evaluations(_BN.value)
    figures.plot_figure1(baseline, batch_norm).savefig(_OUT.value, dpi=120)
    print(f"{'net':<12} {'final step':>10} {'test acc.':>9} {'median drift':>12}")
    for name, records in (("without BN", baseline), ("with BN", batch_norm)):
        last = records[-1]
        print(f"{name:<12} {last['step']:>10} {last['test_accuracy']:>9.4f} {figures.median_drift(records):>12.3f}")
    print(f"wrote {_OUT.value}")


if __name__ == "__main__":
    app.run(main)
