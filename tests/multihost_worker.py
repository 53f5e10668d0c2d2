"""One process of a multi-host run on this machine, for test_imagenet_training.py: joins the others through
`bnrepro.main`'s flags (`jax.distributed.initialize`, gloo collectives on CPU) and trains the test's small
host-fed config on tfds mock data.

    python tests/multihost_worker.py WORKDIR --coordinator_address=localhost:PORT --num_processes=2 --process_id=I
"""

import sys

import tensorflow_datasets as tfds
from absl import flags
from imagenet_mock import MULTIHOST_RUN, NUM_EXAMPLES, small_config

from bnrepro import main, train

if __name__ == "__main__":
    workdir, *multihost_flags = sys.argv[1:]
    flags.FLAGS([sys.argv[0], "--config=configs/imagenet_bn_x5.py:1", f"--workdir={workdir}", *multihost_flags])
    main.initialize_distributed()
    with tfds.testing.mock_data(num_examples=NUM_EXAMPLES):
        train.train_and_evaluate(small_config(**MULTIHOST_RUN, num_devices=0), workdir)  # all devices of all hosts
