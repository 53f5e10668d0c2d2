r"""Table 2 at CPU scale as a sweep: the six runs of `configs/fashion_table2.py`, each point named after its run.

    python scripts/table2.py --workdir=runs/table2             # this sweep, then the table
    python -m bnrepro.sweep --sweep=configs/sweeps/table2.py --workdir=runs/table2     # the sweep alone
    python -m bnrepro.sweep --sweep=configs/sweeps/table2.py:quick --workdir=runs/table2_quick

Each point is its variant's config written as overrides of the `inception` run (`variant_overrides`), so the
runs train as the single-run commands of `configs/fashion_table2.py` do, into `WORKDIR/<variant>`; BN-x5 and
BN-x30 differ only in their learning rate and train as one vmapped group. `quick`: the smoke versions (~20 s a
run on one core).
"""

from typing import Any

import ml_collections

from bnrepro.sweep import Sweep
from bnrepro.training.run_dir import flatten
from configs import fashion_table2


def variant_overrides(base: ml_collections.ConfigDict, variant: ml_collections.ConfigDict) -> dict[str, Any]:
    """The dotted keys whose values differ between `base` and `variant` (both have the same keys)."""
    before, after = flatten(base.to_dict()), flatten(variant.to_dict())
    return {key: value for key, value in after.items() if before[key] != value}


def get_sweep(arg: str = "") -> Sweep:
    """`arg`: empty or `quick`."""
    if arg not in ("", "quick"):
        raise ValueError(f"configs/sweeps/table2.py: bad argument {arg!r}; expected '' or 'quick'.")
    suffix = ",quick" if arg else ""
    base = fashion_table2.get_config(f"inception{suffix}")
    points = [variant_overrides(base, fashion_table2.get_config(v + suffix)) for v in fashion_table2.VARIANTS]
    # The summary's steps-to-threshold column: the accuracy the Inception analogue peaks at (85.1%, measured).
    return Sweep(base, points, threshold=0.85, names=tuple(fashion_table2.VARIANTS))
