r"""Batch Renormalization vs BN with tiny mini-batches (Ioffe 2017): the Figure 1 MLP on MNIST, 4 examples each.

    python -m bnrepro.main --config=configs/mnist_small_batch.py:bn --workdir=runs/small_batch/bn
    python -m bnrepro.main --config=configs/mnist_small_batch.py:renorm --workdir=runs/small_batch/renorm

`configs/mnist_mlp.py`'s BN net with mini-batches of 4 instead of 60 and 50,000 steps (3.3 epochs), evaluated
with the moving averages as Batch Renormalization intends (Ioffe 2017: the network used at inference is the
one trained, since r and d make training use the moving averages too). `renorm` switches every BN layer to
Batch Renormalization with Ioffe's rmax/dmax schedule (`bnrepro.batchnorm.RENORM_SCHEDULE`: plain BN for 5k
steps, then relaxed to rmax = 3 by 40k and dmax = 5 by 25k). Learning rate 0.1 and moving-average momentum 0.99,
as Figure 1's. Results: docs/experiments.md#batch-renormalization.
"""

import ml_collections

from configs import mnist_mlp

VARIANTS = ("bn", "renorm")


def get_config(variant: str = "renorm") -> ml_collections.ConfigDict:
    """The `bn` or `renorm` net, 4 examples per mini-batch."""
    if variant not in VARIANTS:
        raise ValueError(f"configs/mnist_small_batch.py: unknown variant {variant!r}; expected one of {VARIANTS}.")
    config = mnist_mlp.get_config("bn")
    config.model.bn.renorm = variant == "renorm"
    config.batch_size = 4  # Ioffe (2017) Sec. 4.3: "small minibatches"
    config.eval_statistics = "moving_average"  # the inference network Batch Renormalization trains for
    config.population_batches = 100
    return config
