r"""Table 2's "BN-x5-Sigmoid" run (Sec. 4.2): BN-x5 with sigmoid nonlinearities instead of ReLU.

    python -m bnrepro.main --config=configs/imagenet_bn_x5_sigmoid.py --workdir=runs/imagenet/bn_x5_sigmoid

The paper's numbers: `bnrepro/report/experiments.py` (the results page); docs/experiments.md#table-2-on-imagenet.
Everything else, and the argument (the number of replicas, default 8), as in `configs/imagenet_inception.py`;
divide the paper's steps (mini-batches of 32) by the number of replicas to compare with this run's steps.
"""

import ml_collections

from configs import imagenet_inception


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The BN-x5-Sigmoid run on `arg` replicas (default 8) of 32 examples each."""
    config = imagenet_inception.get_config(arg, config_file="configs/imagenet_bn_x5_sigmoid.py")
    config = imagenet_inception.accelerated(imagenet_inception.with_batch_norm(config), 5)
    config.model.activation = "sigmoid"
    return config
