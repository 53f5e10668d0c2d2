"""One process of a multi-host run on this machine, for test_imagenet_training.py: `bnrepro.main` as the CLI
runs it, joining the other processes with its multi-host flags (`jax.distributed.initialize`, gloo collectives
on CPU), on tfds mock data; the config is `imagenet_mock.get_config()`.

    python tests/multihost_worker.py WORKDIR --coordinator_address=localhost:PORT --num_processes=2 --process_id=I
"""

import sys
from pathlib import Path

import tensorflow_datasets as tfds
from absl import app
from imagenet_mock import NUM_EXAMPLES

from bnrepro import main

if __name__ == "__main__":
    workdir, *multihost_flags = sys.argv[1:]
    config_file = Path(__file__).with_name("imagenet_mock.py")
    argv = [sys.argv[0], f"--config={config_file}", f"--workdir={workdir}", *multihost_flags]
    with tfds.testing.mock_data(num_examples=NUM_EXAMPLES):
        app.run(main.main, argv=argv, flags_parser=main.parse_flags)
