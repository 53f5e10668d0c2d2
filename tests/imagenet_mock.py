"""A host-fed training config small enough for tests, on `tfds.testing.mock_data(num_examples=NUM_EXAMPLES)`.
Importing this touches no JAX backend: multihost_worker.py launches it as a config file, `--config=` this file."""

import ml_collections
from config_files import imagenet as imagenet_configs

from bnrepro import models

NUM_EXAMPLES = 48  # per split of the mock dataset
SIZE = 16  # image side
# Checkpoints at step 1 by the clock (no checkpoint yet; its next decision is 10^6 s away) and at the end: orbax's
# policy decides on process 0 for both.
MULTIHOST_RUN = {
    "num_steps": 4, "eval_every": 2, "checkpoint_every": 4, "checkpoint_every_seconds": 10**6, "steps_per_dispatch": 1,
    "batch_size": 16,
}  # fmt: skip


def small_config(**overrides) -> ml_collections.ConfigDict:
    """BN-x5's settings with a 16x16 input, an MLP, batches of 8 and sequential readers in this process."""
    config = imagenet_configs["bn_x5"].get_config("1")
    config.model = ml_collections.ConfigDict(
        {"name": "mlp", "hidden": (32, 32), "num_classes": 1000, "activation": "relu", "batch_norm": True,
         "bn": models.bn_config()}
    )  # fmt: skip
    config.input.update(image_size=SIZE, eval_batch_size=16, read_threads=0, prefetch_buffer_size=0, worker_count=0)
    config.update(
        batch_size=8, learning_rate=0.1, num_steps=8, eval_every=4, checkpoint_every=4, steps_per_dispatch=2,
        population_batches=2, num_devices=1, cpu_cores=0,
    )  # fmt: skip
    config.update_from_flattened_dict(overrides)
    return config


def get_config() -> ml_collections.ConfigDict:
    """The multi-host test's run, on all devices of all processes."""
    return small_config(**MULTIHOST_RUN, num_devices=0)
