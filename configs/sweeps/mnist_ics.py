r"""Santurkar et al. (2018) on the Figure 1 MLP: sigmoid and ReLU, without BN, with BN and with noisy BN, 3 seeds.

    python -m bnrepro.sweep --sweep=configs/sweeps/mnist_ics.py --workdir=runs/sweeps/ics
    python scripts/plot_ics.py runs/sweeps/ics --out=ics.png
    python -m bnrepro.sweep --sweep=configs/sweeps/mnist_ics.py:quick --workdir=runs/sweeps/ics_quick

18 points of `configs/mnist_ics.py` (10,000 steps each, measurements every 250 steps into each point's
`diagnostics.jsonl`); `quick` is the six nets with one seed, 600 steps, measured every 100 (under a minute:
what `notebooks/gradient_propagation.ipynb` runs when it is given no sweep).
Results: docs/experiments.md#gradient-propagation.
"""

from bnrepro.sweep import Sweep
from configs import mnist_ics


def get_sweep(arg: str = "") -> Sweep:
    """`arg`: empty or `quick`."""
    if arg not in ("", "quick"):
        raise ValueError(f"configs/sweeps/mnist_ics.py: bad argument {arg!r}; expected '' or 'quick'.")
    base = mnist_ics.get_config("sigmoid,bn")
    points = [
        {"model.activation": activation, **mnist_ics.NORM_OVERRIDES[norm], "seed": seed}
        for activation in mnist_ics.ACTIVATIONS
        for norm in mnist_ics.NORMS
        for seed in ((0,) if arg == "quick" else (0, 1, 2))
    ]
    if arg == "quick":
        base.num_steps, base.eval_every, base.checkpoint_every, base.diagnostics_every = 600, 200, 600, 100
    return Sweep(base=base, points=points, threshold=0.97)
