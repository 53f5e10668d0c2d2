r"""Sigmoid vs ReLU, with and without BN, at 1x, 5x and 30x the learning rate, 3 seeds: the Figure 1 MLP.

    python -m bnrepro.sweep --sweep=configs/sweeps/mnist_activation_bn.py --workdir=runs/sweeps/mnist
    python -m bnrepro.sweep --sweep=configs/sweeps/mnist_activation_bn.py:fashion --workdir=runs/sweeps/fashion
    python -m bnrepro.sweep --sweep=configs/sweeps/mnist_activation_bn.py:quick --workdir=runs/sweeps/quick

36 points of `configs/mnist_mlp.py` (50,000 steps of SGD on mini-batches of 60; base learning rate 0.1) on
MNIST, or on Fashion-MNIST with `fashion`; `quick` is 4 points of 600 steps (a smoke test, about a minute).
The question (Sec. 3.3): does BN let the sigmoid net train at 30x the learning rate where the baseline cannot?
Results: docs/experiments.md#ablation-sweep.
"""

from bnrepro.sweep import Sweep, product
from configs import mnist_mlp

LEARNING_RATE_MULTIPLIERS = (1, 5, 30)
THRESHOLDS = {"mnist": 0.97, "fashion_mnist": 0.85}  # the summary's "steps to" accuracy


def get_sweep(arg: str = "") -> Sweep:
    """`arg`: empty, or any of `fashion` and `quick`, comma-separated."""
    options = set(arg.split(",")) - {""}
    if options - {"fashion", "quick"}:
        raise ValueError(f"configs/sweeps/mnist_activation_bn.py: bad argument {arg!r}; expected [fashion][,quick].")
    base = mnist_mlp.get_config("bn")
    base.dataset = "fashion_mnist" if "fashion" in options else "mnist"
    lr = base.learning_rate
    axes = {
        "model.activation": ("sigmoid", "relu"),
        "model.batch_norm": (True, False),
        "learning_rate": tuple(lr * m for m in LEARNING_RATE_MULTIPLIERS),
        "seed": (0, 1, 2),
    }
    if "quick" in options:
        axes.update({"model.activation": ("sigmoid",), "learning_rate": (lr, 30 * lr), "seed": (0,)})
        base.num_steps, base.eval_every, base.checkpoint_every, base.population_batches = 600, 200, 600, 10
    return Sweep(base=base, points=product(axes), threshold=THRESHOLDS[base.dataset])
