"""A training set that lives on the device, and the order an epoch visits it in.

For a dataset as small as MNIST the whole training set is copied to the device once; every epoch a permutation
of it is drawn there, from a key derived from the seed and the epoch number, and step i of the epoch gathers the
examples permutation[i*B:(i+1)*B] inside the compiled program: no host-to-device copy per step. (Gathering B rows
per step, 4 pixels at a time, costs about what slicing a permuted copy of the set would, without the copy.)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct


@struct.dataclass
class Dataset:
    """A split on the device, one row per example, so that a mini-batch is B rows gathered inside the
    compiled program. uint8 images are stored as 32-bit words of 4 pixels: XLA's CPU gather works element by
    element, and gathering single bytes costs ~8% of an MNIST step (4 bytes at a time, ~3%).

    Attributes:
      rows: (N, row length) the examples' pixels, uint32 words of 4 uint8 pixels where possible.
      labels: (N,) int32 class labels.
      example_shape: the shape of one image, e.g. (28, 28).
      dtype: the images' dtype, e.g. uint8.
    """

    rows: jax.Array
    labels: jax.Array
    example_shape: tuple[int, ...] = struct.field(pytree_node=False)
    dtype: np.dtype = struct.field(pytree_node=False)

    @classmethod
    def create(cls, images: np.ndarray, labels: np.ndarray) -> Dataset:
        """Puts `images` (N, ...) and `labels` (N,) on the device."""
        rows = np.ascontiguousarray(images.reshape(len(images), -1))
        if rows.dtype == np.uint8 and rows.shape[1] % 4 == 0:
            rows = rows.view(np.uint32)
        # device_put: jnp.asarray would compile a small program per array (~40 ms each at start-up)
        return cls(jax.device_put(rows), jax.device_put(labels), tuple(images.shape[1:]), images.dtype)

    def take(self, indices: jax.Array) -> tuple[jax.Array, jax.Array]:
        """The images (len(indices), *example_shape) and labels of the examples `indices`."""
        rows = jnp.take(self.rows, indices, axis=0)
        if rows.dtype != self.dtype:  # words of 4 pixels, in memory order (as numpy's view made them)
            rows = jax.lax.bitcast_convert_type(rows, self.dtype)
        return rows.reshape(indices.shape + self.example_shape), jnp.take(self.labels, indices, axis=0)


def epoch_permutation(rng: jax.Array, epoch: jax.Array, num_examples: int) -> jax.Array:
    """The order in which `epoch` visits the training set: a uniformly random permutation, the same
    whenever the same epoch is replayed. One sort by 64 random bits per example (ties are ~1e-10 likely):
    half the cost of `jax.random.permutation`'s two 32-bit rounds, and it runs once per epoch."""
    bits = jax.random.bits(jax.random.fold_in(jax.random.wrap_key_data(rng), epoch), (2, num_examples))
    return jax.lax.sort((bits[0], bits[1], jnp.arange(num_examples, dtype=jnp.int32)), num_keys=2)[-1]


EVAL_BATCH_SIZE = 1000  # examples per evaluation batch of a test set held on the devices


def padded_batches(images: np.ndarray, labels: np.ndarray, batch_size: int) -> list[dict[str, np.ndarray]]:
    """A test set in batches of `min(batch_size, N)` examples, on the host: every batch of one shape (so one
    compiled evaluation step serves all), the last padded with zeros and `mask` marking the real examples."""
    count = len(labels)
    size = min(batch_size, count)
    pad = -count % size
    padded = {
        "image": np.pad(images, [(0, pad)] + [(0, 0)] * (images.ndim - 1)),
        "label": np.pad(labels, (0, pad)),
        "mask": np.arange(count + pad) < count,
    }
    return [{key: value[start : start + size] for key, value in padded.items()} for start in range(0, count, size)]
