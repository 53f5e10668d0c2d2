r"""LSTM vs BN-LSTM on MNIST read row by row, in order and permuted (`configs/seq_mnist.py`'s CPU task `,rows`,
Cooijmans et al. 2016), 2 seeds each (`:N` for N), into `WORKDIR/lstm_rows`, `WORKDIR/bn_lstm_rows`,
`WORKDIR/lstm_permuted_rows`, `WORKDIR/bn_lstm_permuted_rows` (seed 0) and their `_seedS` siblings.

    python -m bnrepro.sweep --sweep=configs/sweeps/seq_rows.py --workdir=runs/seq
    python -m bnrepro.sweep --sweep=configs/sweeps/seq_rows.py:3 --workdir=runs/seq   # 3 seeds

Seed 0's runs are the single-run commands' (`python -m bnrepro.main --config=configs/seq_mnist.py:bn_lstm,rows
--workdir=runs/seq/bn_lstm_rows`); a net's seeds train as one vmapped group. 3,000 steps each; the summary's
steps-to-threshold column is the first evaluation at 95% test accuracy.

Results: docs/experiments.md#bn-lstm.
"""

from bnrepro.sweep import Sweep, seed_count, seeded, variant_overrides
from configs import seq_mnist

SEEDS = 2
TASKS = (("rows",), ("permuted", "rows"))  # configs/seq_mnist.py's options of each task


def get_sweep(seeds: str = "") -> Sweep:
    """Both nets on both row tasks with seeds 0 to `seeds` - 1 (default `SEEDS`), each named as its config
    (`lstm_rows`, `bn_lstm_permuted_rows`, ...)."""
    base = seq_mnist.get_config("lstm,rows")
    variants = {
        "_".join((net, *task)): variant_overrides(base, seq_mnist.get_config(",".join((net, *task))))
        for task in TASKS
        for net in seq_mnist.NETS
    }
    points, names = seeded(variants, seed_count(seeds, SEEDS, "configs/sweeps/seq_rows.py"))
    return Sweep(base, points, threshold=0.95, names=names)
