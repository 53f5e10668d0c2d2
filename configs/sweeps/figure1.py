r"""Figure 1 (Sec. 4.1) as a sweep: the MNIST MLP without and with BN, 3 seeds each (`:N` for N), into
`WORKDIR/mnist_baseline` and `WORKDIR/mnist_bn` (seed 0) and their seeds' siblings `WORKDIR/mnist_VARIANT_seed1`,
... (`bnrepro.figures.seed_dirs`; a run made before seeds were added is seed 0).

    bash scripts/reproduce_figure1.sh             # this sweep into runs/, then the figure
    bash scripts/reproduce_figure1.sh --seeds=5   # 5 seeds
    python -m bnrepro.sweep --sweep=configs/sweeps/figure1.py --workdir=runs      # the sweep alone
    python -m bnrepro.sweep --sweep=configs/sweeps/figure1.py:1 --workdir=runs    # seed 0 only

The points are `configs/mnist_mlp.py`'s `baseline` and `bn` variants (they differ in `model.batch_norm` alone)
with seeds 0 to N-1; a variant's seeds differ only in the seed, so they train as one vmapped group
(`bnrepro.sweep.group`), the two groups each on a core of its own.

Why 3 seeds by default: the main command should take about a minute on a 2-core CPU, and a net's seeds in one
group train at about a single run's model-steps/s, so seeds cost time in proportion
(docs/performance.md#sweep-throughput). Results: docs/experiments.md#figure-1.
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
