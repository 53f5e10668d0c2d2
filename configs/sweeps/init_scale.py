r"""Sec. 3.3's claim that BN reduces the dependence on the weights' initial scale: the Figure 1 MLP, sigmoid and
ReLU, with and without BN, weights initialized from N(0, init_std^2) at 0.01x to 10x the default 0.1, 3 seeds.

    python -m bnrepro.sweep --sweep=configs/sweeps/init_scale.py --workdir=runs/sweeps/init_scale
    python -m bnrepro.sweep --sweep=configs/sweeps/init_scale.py:quick --workdir=runs/sweeps/init_scale_quick

60 points of `configs/mnist_mlp.py` (3,000 steps of SGD on mini-batches of 60 at the learning rate 0.1, on all
60,000 MNIST training images; evaluated every 250 steps, each layer's ||W|| recorded every 250 steps into
`weight_norms.jsonl`): final and best test accuracy, steps to 90%, and how the weights' norms grow. `quick` is 2
points of 300 steps (a smoke test). The full sweep took 287 s on the shared 2-core VM (2026-12-08).
Results: docs/experiments.md#initial-scale.
"""

from bnrepro.report.claims import THRESHOLD  # the summary's "steps to" accuracy, as the results page's
from bnrepro.sweep import Sweep, product
from configs import mnist_mlp

INIT_STDS = (0.001, 0.01, 0.1, 0.3, 1.0)  # 0.01x to 10x the default 0.1


def get_sweep(arg: str = "") -> Sweep:
    """`arg`: empty or `quick`."""
    if arg not in ("", "quick"):
        raise ValueError(f"configs/sweeps/init_scale.py: bad argument {arg!r}; expected '' or 'quick'.")
    base = mnist_mlp.get_config("bn")
    base.num_steps, base.eval_every, base.checkpoint_every, base.weight_norms_every = 3000, 250, 3000, 250
    axes = {
        "model.activation": ("sigmoid", "relu"),
        "model.batch_norm": (True, False),
        "model.init_std": INIT_STDS,
        "seed": (0, 1, 2),
    }
    if arg == "quick":
        axes.update({"model.activation": ("sigmoid",), "model.init_std": (0.01,), "seed": (0,)})
        base.num_steps, base.eval_every, base.checkpoint_every, base.weight_norms_every = 300, 100, 300, 100
        base.population_batches = 10
    return Sweep(base=base, points=product(axes), threshold=THRESHOLD)
