r"""LSTM vs BN-LSTM on MNIST read row by row, in order and permuted (`configs/seq_mnist.py`'s CPU task `,rows`,
Cooijmans et al. 2016), 2 seeds each (`:N` for N), into `WORKDIR/lstm_rows`, `WORKDIR/bn_lstm_rows`,
`WORKDIR/lstm_permuted_rows`, `WORKDIR/bn_lstm_permuted_rows` (seed 0) and their `_seedS` siblings.

    python -m bnrepro.sweep --sweep=configs/sweeps/seq_rows.py --workdir=runs/seq
    python -m bnrepro.sweep --sweep=configs/sweeps/seq_rows.py:3 --workdir=runs/seq   # 3 seeds

Seed 0's runs are the single-run commands' (`python -m bnrepro.main --config=configs/seq_mnist.py:bn_lstm,rows
--workdir=runs/seq/bn_lstm_rows`); a net's seeds train as one vmapped group. 3,000 steps each; the summary's
steps-to-threshold column is the first evaluation at 95% test accuracy.

Measured (CPU, one core shared with other work; 1711 s for the eight runs), test accuracy with population
statistics, mean ± std over 2 seeds:
    step                     250           500           1000          2000          3000
    rows       LSTM          81.1 ± 0.5%   85.8 ± 0.7%   93.1 ± 0.7%   95.6 ± 0.2%   97.09 ± 0.30%
               BN-LSTM       86.7 ± 0.8%   94.4 ± 0.6%   96.7 ± 0.0%   97.8 ± 0.3%   98.41 ± 0.04%
    permuted   LSTM          80.7 ± 0.8%   85.8 ± 0.5%   86.3 ± 1.6%   91.6 ± 0.5%   92.80 ± 0.68%
               BN-LSTM       89.6 ± 0.5%   92.6 ± 0.3%   94.3 ± 0.0%   95.7 ± 0.3%   96.28 ± 0.00%
The BN-LSTM is ahead at all 12 evaluations of every seed, by at least 1.1 points on rows and 2.8 on permuted rows.
(`configs/seq_mnist.py`'s per-seed curves are single runs trained alone, earlier.)
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
