r"""Figure 1 (Sec. 4.1) as a sweep: the MNIST MLP without and with BN, 3 seeds each (`:N` for N), into
`WORKDIR/mnist_baseline` and `WORKDIR/mnist_bn` (seed 0) and their seeds' siblings `WORKDIR/mnist_VARIANT_seed1`,
... (`bnrepro.figures.seed_dirs`; a run made before seeds were added is seed 0).

    bash scripts/reproduce_figure1.sh             # this sweep into runs/, then the figure (72 s on 2 cores)
    bash scripts/reproduce_figure1.sh --seeds=5   # 5 seeds (~90 s)
    python -m bnrepro.sweep --sweep=configs/sweeps/figure1.py --workdir=runs      # the sweep alone
    python -m bnrepro.sweep --sweep=configs/sweeps/figure1.py:1 --workdir=runs    # seed 0 only

The points are `configs/mnist_mlp.py`'s `baseline` and `bn` variants (they differ in `model.batch_norm` alone)
with seeds 0 to N-1; a variant's seeds differ only in the seed, so they train as one vmapped group
(`bnrepro.sweep.group`), the two groups each on a core of its own.

Why 3 by default: the main command should take about a minute on a 2-core CPU (3 seeds: 72 s measured on an
idle one), and seeds cost time in proportion. A net's seeds in one group train at about a single run's
model-steps/s (the MLP's steps are matmul-bound: the models axis saves no work), so N seeds take ~N times the
single-seed training time (side by side on a loaded box: 1 seed 53 s, 3 seeds 128 s, 5 seeds 217 s; idle, 1 seed
takes 26 s).

Expected result (CPU; `scripts/plot_figure1.py` prints it): test accuracy at 50k steps and median drift, mean ±
std over the 3 seeds: with BN 97.96% ± 0.13%, drift 0.287 ± 0.005; without 97.37% ± 0.31%, drift 0.686 ± 0.021;
BN ahead at all 45 evaluations after step 5000 for every seed. Over 5 seeds [min-max]:
    bn        97.94% ± 0.17% [97.72-98.12]   drift 0.288 ± 0.005 [0.281-0.293]
    baseline  97.38% ± 0.22% [97.02-97.59]   drift 0.683 ± 0.024 [0.652-0.704]
BN is ahead at all 45 evaluations after step 5000 for every seed (by 0.1 to 3.8 points).
"""

from bnrepro.sweep import Sweep, seed_count, seeded
from configs import mnist_mlp

SEEDS = 3
NETS = {False: "mnist_baseline", True: "mnist_bn"}  # model.batch_norm: the run directory of its seed 0


def get_sweep(seeds: str = "") -> Sweep:
    """Both nets of Figure 1 with seeds 0 to `seeds` - 1 (default `SEEDS`), the baseline's first."""
    variants = {name: {"model.batch_norm": batch_norm} for batch_norm, name in NETS.items()}
    points, names = seeded(variants, seed_count(seeds, SEEDS, "configs/sweeps/figure1.py"))
    return Sweep(mnist_mlp.get_config("bn"), points, threshold=0.97, names=names)
