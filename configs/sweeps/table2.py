r"""Table 2 at CPU scale as a sweep: the six runs of `configs/fashion_table2.py`, each point named after its run.

    python scripts/table2.py --workdir=runs/table2             # this sweep, then the table
    python -m bnrepro.sweep --sweep=configs/sweeps/table2.py --workdir=runs/table2     # the sweep alone
    python -m bnrepro.sweep --sweep=configs/sweeps/table2.py:quick --workdir=runs/table2_quick
    python scripts/table2.py --workdir=runs/table2 --seeds=3   # seeds 0-2 of every run: mean ± std

Each point is its variant's config written as overrides of the `inception` run
(`bnrepro.sweep.variant_overrides`), so the runs train as the single-run commands of `configs/fashion_table2.py`
do, into `WORKDIR/<variant>`. BN-x5 and BN-x30 differ only in their learning rate, but it decays, and a group shares
one schedule (`bnrepro.sweep.group.check_group`): each run trains in a group of its own.
`quick`: the smoke versions (~20 s a run on one core). `seeds=N`: seeds 0 to N-1 of every run, seed 0 in
`WORKDIR/<variant>` and seed S in `WORKDIR/<variant>_seedS` (`bnrepro.sweep.seeded`; `figures.table2` reads them
with `bnrepro.figures.seed_dirs`); a variant's seeds differ only in the seed and train in the same vmapped group.
Results: docs/experiments.md#table-2-at-cpu-scale.
"""

from bnrepro.sweep import Sweep, seeded, variant_overrides
from configs import fashion_table2


def get_sweep(arg: str = "") -> Sweep:
    """`arg`: comma-separated options, `quick` and `seeds=N` (default 1), e.g. `quick,seeds=3`."""
    options = [option for option in arg.split(",") if option]
    seeds = [option.removeprefix("seeds=") for option in options if option.startswith("seeds=")]
    if (
        set(options) - {"quick", *(f"seeds={n}" for n in seeds)}
        or len(seeds) > 1
        or not all(n.isdigit() and int(n) > 0 for n in seeds)
    ):
        raise ValueError(f"configs/sweeps/table2.py: bad argument {arg!r}; expected 'quick', 'seeds=N' or both.")
    suffix = ",quick" if "quick" in options else ""
    base = fashion_table2.get_config(f"inception{suffix}")
    variants = {v: variant_overrides(base, fashion_table2.get_config(v + suffix)) for v in fashion_table2.VARIANTS}
    points, names = seeded(variants, int(seeds[0]) if seeds else 1)
    # The summary's steps-to-threshold column: the accuracy the Inception analogue peaks at (85.1%, measured).
    return Sweep(base, points, threshold=0.85, names=tuple(names))
