r"""Batch Renormalization vs BN with mini-batches of 4 (`configs/mnist_small_batch.py`, Ioffe 2017), 3 seeds each
(`:N` for N), into `WORKDIR/bn` and `WORKDIR/renorm` (seed 0) and their seeds' siblings `WORKDIR/bn_seed1`, ...

    python -m bnrepro.sweep --sweep=configs/sweeps/small_batch.py --workdir=runs/small_batch
    python -m bnrepro.sweep --sweep=configs/sweeps/small_batch.py:5 --workdir=runs/small_batch   # 5 seeds

Seed 0's runs are the single-run commands' (`python -m bnrepro.main --config=configs/mnist_small_batch.py:bn
--workdir=runs/small_batch/bn`); a net's seeds train as one vmapped group. The summary's steps-to-threshold
column is the first evaluation at 94% test accuracy (moving-average inference, as the nets are evaluated).

Results: docs/experiments.md#batch-renormalization.
"""

from bnrepro.sweep import Sweep, seed_count, seeded, variant_overrides
from configs import mnist_small_batch

SEEDS = 3


def get_sweep(seeds: str = "") -> Sweep:
    """Both nets of `configs/mnist_small_batch.py` with seeds 0 to `seeds` - 1 (default `SEEDS`), BN's first."""
    base = mnist_small_batch.get_config("bn")
    variants = {v: variant_overrides(base, mnist_small_batch.get_config(v)) for v in mnist_small_batch.VARIANTS}
    points, names = seeded(variants, seed_count(seeds, SEEDS, "configs/sweeps/small_batch.py"))
    return Sweep(base, points, threshold=0.94, names=names)
