r"""Figure 1 (Sec. 4.1) as a sweep: the MNIST MLP without and with BN, into `WORKDIR/mnist_baseline` and
`WORKDIR/mnist_bn`.

    bash scripts/reproduce_figure1.sh        # this sweep into runs/, then the figure
    python -m bnrepro.sweep --sweep=configs/sweeps/figure1.py --workdir=runs      # the sweep alone

The two points are `configs/mnist_mlp.py`'s `baseline` and `bn` variants (they differ in `model.batch_norm`
alone), each a group of its own on a core of its own.
"""

from bnrepro.sweep import Sweep
from configs import mnist_mlp


def get_sweep() -> Sweep:
    base = mnist_mlp.get_config("bn")
    points = [{"model.batch_norm": False}, {}]
    return Sweep(base, points, threshold=0.97, names=("mnist_baseline", "mnist_bn"))
