"""Images/s of the ImageNet training input, in this process and in grain worker processes, beside torch's DataLoader.

Builds a small imagenet2012 in a temporary folder (removed at the end): `--num_images` JPEGs of ImageNet's size
(about 400x350 pixels, about 95 KB each; smooth random colour fields with noise), stored as tfds stores them, in
ArrayRecord files, and the same JPEGs as files for the torch row. Each row reads batches of `--batch_size` with
the accelerated runs' augmentation (Inception random-size crop to 224, flip, the "reduced" colour jitter,
normalization):

* ours: `bnrepro.data.imagenet.train_dataset` with `worker_count` 0 (reader threads in this process), 1 and 2
  (grain worker processes, each assembling whole batches), `--read_threads` and `--prefetch_buffer_size` as the
  configs set them;
* torch: a `DataLoader` over the JPEG files, decoded with PIL and augmented by the same per-example code, with
  0, 1 and 2 worker processes; when torch is importable (it is not a dependency: `pip install --target DIR torch`
  and run with `PYTHONPATH=DIR`), else the row says "torch not installed".

Start is the time to the first batch (the workers start then). Images/s is measured over `--batches` batches after
`--warmup`; images per CPU-second divides by the CPU time this process and its workers used meanwhile, which is
images/s per fully used core and varies less than images/s on a machine shared with other work.

    python scripts/bench_input.py [--num_images=512] [--batches=40] [--workers=0,1,2] [--rounds=2]

Results and what was tried: docs/performance.md#imagenet-input.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import io
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import grain
import numpy as np
import PIL.Image
import psutil
import tensorflow_datasets as tfds
from absl import app, flags
from array_record.python import array_record_module

from bnrepro.data import augmentation, image_decoding, imagenet

_NUM_IMAGES = flags.DEFINE_integer("num_images", 512, "JPEGs in the temporary dataset.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 32, "Examples per batch.")
_BATCHES = flags.DEFINE_integer("batches", 40, "Batches timed per row.")
_WARMUP = flags.DEFINE_integer(
    "warmup", 40, "Batches read after the first and before timing: more than the read-ahead buffers hold."
)
_WORKERS = flags.DEFINE_list("workers", ["0", "1", "2"], "Worker process counts to run.")
_READ_THREADS = flags.DEFINE_integer("read_threads", 1, "grain reader threads per process (configs: 1).")
_PREFETCH = flags.DEFINE_integer("prefetch_buffer_size", 500, "grain read-ahead in examples (configs: 500).")
_ROUNDS = flags.DEFINE_integer("rounds", 2, "Rounds over all rows, in turns; each row's best round is reported.")

IMAGE_SIZE = 224
VERSION = "5.1.0"  # tfds's imagenet2012


class Row(NamedTuple):
    """One pipeline at one worker count: seconds to the first batch, images/s, images per CPU-second."""

    start_seconds: float
    images_per_second: float
    images_per_cpu_second: float

    def best(self, other: Row | None) -> Row:
        """The better of two rounds of the same row, measure by measure."""
        if other is None:
            return self
        return Row(
            min(self.start_seconds, other.start_seconds),
            max(self.images_per_second, other.images_per_second),
            max(self.images_per_cpu_second, other.images_per_cpu_second),
        )


def _jpeg(rng: np.random.Generator) -> bytes:
    """An ImageNet-sized JPEG (300-400 x 350-450 pixels, ~95 KB): a smooth random colour field with noise."""
    height, width = int(rng.integers(300, 401)), int(rng.integers(350, 451))
    coarse = rng.integers(0, 256, (height // 12 + 1, width // 12 + 1, 3), dtype=np.uint8)
    smooth = PIL.Image.fromarray(coarse).resize((width, height), PIL.Image.Resampling.BICUBIC)
    pixels = np.clip(np.asarray(smooth, np.float32) + rng.normal(0, 20, (height, width, 3)), 0, 255)
    encoded = io.BytesIO()
    PIL.Image.fromarray(pixels.astype(np.uint8)).save(encoded, format="JPEG", quality=92)
    return encoded.getvalue()


def write_dataset(root: Path, num_images: int) -> tuple[list[Path], list[int]]:
    """Writes `num_images` JPEGs as tfds's imagenet2012 train split (ArrayRecord, under `root/tfds`) and as files
    (`root/jpeg`); returns the files and their labels."""
    version_dir = root / "tfds" / "imagenet2012" / VERSION
    version_dir.mkdir(parents=True)
    (root / "jpeg").mkdir()
    features = tfds.builder("imagenet2012", data_dir=root / "tfds").info.features
    rng = np.random.default_rng(0)
    writer = array_record_module.ArrayRecordWriter(
        os.fspath(version_dir / "imagenet2012-train.array_record-00000-of-00001"), "group_size:1"
    )
    files, labels = [], [int(label) for label in rng.integers(0, image_decoding.NUM_CLASSES, num_images)]
    for i, label in enumerate(labels):
        jpeg = _jpeg(rng)
        files.append(root / "jpeg" / f"{i:05d}.JPEG")
        files[-1].write_bytes(jpeg)
        example = {"image": jpeg, "label": label, "file_name": files[-1].name}
        writer.write(features.serialize_example(features.encode_example(example)))
    writer.close()
    split = tfds.core.SplitInfo(name="train", shard_lengths=[num_images], num_bytes=0, filename_template=None)
    tfds.folder_dataset.write_metadata(data_dir=version_dir, features=features, split_infos=[split], check_data=False)
    return files, labels


def _cpu_seconds() -> float:
    """User and system CPU seconds of this process and its live child processes (the workers)."""
    this = psutil.Process()
    total = 0.0
    for process in (this, *this.children(recursive=True)):
        with contextlib.suppress(psutil.NoSuchProcess):
            times = process.cpu_times()
            total += times.user + times.system
    return total


def measure(open_batches: Callable[[], Iterator[Any]], batch_size: int, warmup: int, count: int) -> Row:
    """Times `open_batches()`'s first batch, then `count` batches after `warmup` more; closes the iterator."""
    start = time.perf_counter()
    batches = open_batches()
    next(batches)
    start_seconds = time.perf_counter() - start
    for _ in range(warmup):
        next(batches)
    cpu, start = _cpu_seconds(), time.perf_counter()
    for _ in range(count):
        next(batches)
    wall, cpu = time.perf_counter() - start, _cpu_seconds() - cpu
    if hasattr(batches, "close"):
        batches.close()  # grain: stops its workers now (torch's stop when the iterator is collected)
    del batches
    images = count * batch_size
    return Row(start_seconds, images / wall, images / cpu)


class JpegFiles:
    """A torch map-style dataset: JPEG file -> (augmented float32 image, label), decoded with PIL."""

    def __init__(self, files: Sequence[Path], labels: Sequence[int], preprocess: augmentation.TrainPreprocess):
        self.files, self.labels, self.preprocess = files, labels, preprocess

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        with PIL.Image.open(self.files[index]) as image:
            pixels = np.asarray(image.convert("RGB"))
        example = self.preprocess({"image": pixels, "label": self.labels[index]}, np.random.default_rng())
        return example["image"], self.labels[index]


def torch_batches(
    files: Sequence[Path],
    labels: Sequence[int],
    preprocess: augmentation.TrainPreprocess,
    workers: int,
    num_batches: int,
) -> Iterator[Any]:
    """`num_batches` shuffled batches from a torch `DataLoader` with `workers` worker processes (persistent)."""
    import torch.utils.data  # Only here: torch is optional.

    torch.set_num_threads(1)  # as in its workers: more intra-op threads only spin around collate's copy
    dataset = JpegFiles(files, labels, preprocess)
    sampler = torch.utils.data.RandomSampler(dataset, num_samples=num_batches * _BATCH_SIZE.value)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=_BATCH_SIZE.value, sampler=sampler, num_workers=workers, drop_last=True,
        persistent_workers=workers > 0,
    )  # fmt: skip
    return iter(loader)


def print_table(rows: dict[tuple[str, int], Row | None]) -> None:
    """The rows as a Markdown table, ours and torch's side by side for each worker count."""
    print("| pipeline | workers | start (s) | images/s | images per CPU-second |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for (name, workers), row in rows.items():
        if row is None:
            print(f"| {name} | {workers} | torch not installed | | |")
        else:
            print(
                f"| {name} | {workers} | {row.start_seconds:.1f} | {row.images_per_second:.0f} | "
                f"{row.images_per_cpu_second:.0f} |"
            )


def main(argv: list[str]) -> None:
    del argv
    batch_size, warmup, count = _BATCH_SIZE.value, _WARMUP.value, _BATCHES.value
    have_torch = importlib.util.find_spec("torch") is not None
    if have_torch:
        importlib.import_module("torch.utils.data")  # before any timing
    preprocess = augmentation.TrainPreprocess(image_size=IMAGE_SIZE, color_jitter=augmentation.DISTORTIONS["reduced"])
    read_options = grain.ReadOptions(num_threads=_READ_THREADS.value, prefetch_buffer_size=_PREFETCH.value)
    root = Path(tempfile.mkdtemp(prefix="bench_input_"))
    try:
        t = time.perf_counter()
        files, labels = write_dataset(root, _NUM_IMAGES.value)
        sizes = [path.stat().st_size for path in files]
        print(
            f"{len(files)} JPEGs, mean {np.mean(sizes) / 1e3:.0f} KB, written in {time.perf_counter() - t:.1f} s; "
            f"batch {batch_size}, crop {IMAGE_SIZE}, flip, 'reduced' jitter; {count} batches timed after "
            f"{1 + warmup}; {os.cpu_count()} cores"
        )
        source = imagenet.open_split("train", root / "tfds")
        rows: dict[tuple[str, int], Row | None] = {}
        for _ in range(_ROUNDS.value):  # all rows in turns, round after round: load from others hits them alike
            for workers in (int(w) for w in _WORKERS.value):
                ours = imagenet.train_dataset(
                    source, batch_size=batch_size, seed=0, image_size=IMAGE_SIZE, distortion="reduced",
                    process_index=0, process_count=1, read_options=read_options, worker_count=workers,
                )  # fmt: skip
                row = measure(functools.partial(iter, ours), batch_size, warmup, count)
                rows["ours: grain", workers] = row.best(rows.get(("ours: grain", workers)))
                if not have_torch:
                    rows["torch DataLoader + PIL", workers] = None
                    continue
                theirs = functools.partial(torch_batches, files, labels, preprocess, workers, 1 + warmup + count)
                row = measure(theirs, batch_size, warmup, count)
                rows["torch DataLoader + PIL", workers] = row.best(rows.get(("torch DataLoader + PIL", workers)))
    finally:
        shutil.rmtree(root)
    print_table(rows)


if __name__ == "__main__":
    app.run(main)
