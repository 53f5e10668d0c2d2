r"""Sec. 3.4's claim that BN regularizes the model and reduces the need for dropout: the Figure 1 MLP (sigmoid) on
5,000 training images, with and without BN, with and without dropout (0.2, 0.5) after every hidden sigmoid, 3 seeds.

    python -m bnrepro.sweep --sweep=configs/sweeps/regularization.py --workdir=runs/sweeps/regularization
    python -m bnrepro.sweep --sweep=configs/sweeps/regularization.py:quick --workdir=runs/sweeps/regularization_quick

18 points of `configs/mnist_mlp.py` trained on the first 5,000 of MNIST's 60,000 training images
(`validation_size=55000` holds out the other 55,000, which nothing reads) for 20,000 steps of SGD on mini-batches
of 60 (240 epochs) at the learning rate 0.1; every 1,000 steps the inference network is evaluated on the whole
test set and on the 5,000 training images (`eval_train_examples`: train accuracy, and the gap to the test
accuracy). `quick` is 2 points of 300 steps (a smoke test). The full sweep took
692 s on the shared 2-core VM (2026-12-08). Results: docs/experiments.md#bn-as-a-regularizer.
"""

from bnrepro.report.claims import THRESHOLD  # the summary's "steps to" accuracy, as the results page's
from bnrepro.sweep import Sweep, product
from configs import mnist_mlp

TRAIN_EXAMPLES = 5000  # of MNIST's 60,000 training images: the first ones
DROPOUT_RATES = (0.0, 0.2, 0.5)


def get_sweep(arg: str = "") -> Sweep:
    """`arg`: empty or `quick`."""
    if arg not in ("", "quick"):
        raise ValueError(f"configs/sweeps/regularization.py: bad argument {arg!r}; expected '' or 'quick'.")
    base = mnist_mlp.get_config("bn")
    base.validation_size = 60_000 - TRAIN_EXAMPLES
    base.eval_train_examples = TRAIN_EXAMPLES
    base.num_steps, base.eval_every, base.checkpoint_every = 20_000, 1000, 20_000
    base.population_batches = 80  # Algorithm 2's mini-batches: at most an epoch's 83
    axes = {"model.batch_norm": (True, False), "model.dropout_rate": DROPOUT_RATES, "seed": (0, 1, 2)}
    if arg == "quick":
        axes.update({"model.dropout_rate": (0.5,), "seed": (0,)})
        base.num_steps, base.eval_every, base.checkpoint_every, base.population_batches = 300, 100, 300, 10
    return Sweep(base=base, points=product(axes), threshold=THRESHOLD)
