r"""Table 2's "BN-x30" run (Sec. 4.2): BN-x5 with the learning rate x30 instead of x5.

    python -m bnrepro.main --config=configs/imagenet_bn_x30.py --workdir=runs/imagenet/bn_x30

The paper's numbers: `bnrepro/report/experiments.py` (the results page); docs/experiments.md#table-2-on-imagenet.
Everything else, and the argument (the number of replicas, default 8), as in `configs/imagenet_inception.py`;
divide the paper's steps (mini-batches of 32) by the number of replicas to compare with this run's steps.
"""

import ml_collections

from configs import imagenet_inception


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The BN-x30 run on `arg` replicas (default 8) of 32 examples each."""
    config = imagenet_inception.get_config(arg, config_file="configs/imagenet_bn_x30.py")
    return imagenet_inception.accelerated(imagenet_inception.with_batch_norm(config), 30)
