"""Draws the paper's Figure 1 (Sec. 4.1) from the baseline's and the BN net's run directories, each with its
seeds, and prints its numbers: final test accuracy and median drift as mean ± std over the seeds, and at how
many evaluations after step 5000 BN is ahead for every seed (`bnrepro.figures.figure1_table`).

python scripts/plot_figure1.py --baseline=runs/mnist_baseline --bn=runs/mnist_bn --out=runs/figure1.png

A net's seeds are its run directory (seed 0, or a run made before there were seeds) and the siblings named
after it with a seed suffix, `runs/mnist_bn_seed1` ... (`bnrepro.figures.seed_dirs`), as
`configs/sweeps/figure1.py` writes them.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib
from absl import app, flags

matplotlib.use("Agg")  # PNG files only: choose the backend before `figures` imports pyplot
from bnrepro import figures

_BASELINE = flags.DEFINE_string("baseline", "runs/mnist_baseline", "Run directory of the net without BN (seed 0).")
_BN = flags.DEFINE_string("bn", "runs/mnist_bn", "Run directory of the net with BN (seed 0).")
_OUT = flags.DEFINE_string("out", "runs/figure1.png", "Where to write the PNG.")


def read_net(flag: flags.FlagHolder[str]) -> dict[int, list[dict]]:
    """The evaluation records of the net in `--FLAG`'s run directory and its seeds' siblings, by seed."""
    workdir = Path(flag.value)
    found = figures.seed_dirs(workdir.parent, workdir.name)
    if not found:
        raise app.UsageError(f"--{flag.name}={workdir}: no run directory there, nor its seeds' {workdir.name}_seedN.")
    return figures.read_seeds(found)


def main(argv: list[str]) -> None:
    del argv
    baseline, batch_norm = read_net(_BASELINE), read_net(_BN)
    figures.plot_figure1(baseline, batch_norm).savefig(_OUT.value, dpi=120)
    print(figures.figure1_table(baseline, batch_norm))
    print(f"wrote {_OUT.value}")


if __name__ == "__main__":
    app.run(main)
