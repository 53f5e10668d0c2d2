"""Tests for bnrepro.data.imagenet: crop geometry, color jitter, shuffling, pipelines, tfds sources. No TensorFlow.

Pipelines run on `tfds.testing.mock_data` (random uint8 images of random small sizes, no JPEG) and on a tiny
imagenet2012 written here as real ArrayRecord files of JPEGs, so that tfds's own NumPy decoding path is exercised.
"""

import contextlib
import io
import multiprocessing
import os
from pathlib import Path

import grain
import jax.numpy as jnp
import numpy as np
import PIL.Image
import pytest
import tensorflow_datasets as tfds
from array_record.python import array_record_module

from bnrepro.data import DataError, augmentation, image_decoding, imagenet

# No reader threads: keeps the tests light on the shared CPU; determinism must not depend on threads anyway.
SEQUENTIAL = grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)
ONE_PROCESS = {"process_index": 0, "process_count": 1}
SIZE = 16  # Output image side in the pipeline tests.


# --- Helpers -----------------------------------------------------------------------------------------------


def fake_source(num: int, seed: int = 0) -> list[dict]:
    """Records like open_split's: random uint8 images of various sizes, labels 0..999."""
    rng = np.random.default_rng(seed)
    return [
        {
            "image": rng.integers(0, 256, (int(rng.integers(8, 40)), int(rng.integers(8, 40)), 3), dtype=np.uint8),
            "label": int(rng.integers(0, 1000)),
        }
        for _ in range(num)
    ]


def take(iterator, n: int) -> list[dict]:
    return [next(iterator) for _ in range(n)]


def write_prepared_imagenet(data_dir: Path, sizes: dict[str, int]) -> dict[str, list[int]]:
    """Writes a tiny imagenet2012 5.1.0 in ArrayRecord format without TensorFlow; returns each split's labels.

    The examples are JPEGs serialized by tfds's own imagenet2012 features, as `tfds build` would store them.
    """
    version_dir = data_dir / "imagenet2012" / "5.1.0"
    version_dir.mkdir(parents=True)
    features = tfds.builder("imagenet2012", data_dir=data_dir).info.features
    rng = np.random.default_rng(0)
    labels, split_infos = {}, []
    for split, num in sizes.items():
        path = version_dir / f"imagenet2012-{split}.array_record-00000-of-00001"
        writer = array_record_module.ArrayRecordWriter(os.fspath(path), "group_size:1")
        labels[split] = [int(label) for label in rng.integers(0, 1000, num)]
        for i, label in enumerate(labels[split]):
            jpeg = io.BytesIO()
            PIL.Image.fromarray(rng.integers(0, 256, (20 + i, 30, 3), dtype=np.uint8)).save(jpeg, format="JPEG")
            example = {"image": jpeg.getvalue(), "label": label, "file_name": f"{split}_{i}.JPEG"}
            writer.write(features.serialize_example(features.encode_example(example)))
        writer.close()
        split_infos.append(tfds.core.SplitInfo(name=split, shard_lengths=[num], num_bytes=0, filename_template=None))
    tfds.folder_dataset.write_metadata(
        data_dir=version_dir, features=features, split_infos=split_infos, check_data=False
    )
    return labels


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> tuple[Path, dict[str, list[int]]]:
    data_dir = tmp_path_factory.mktemp("tfds")
    return data_dir, write_prepared_imagenet(data_dir, {"train": 6, "validation": 5})


# --- Crop geometry -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("height, width", [(375, 500), (500, 333), (64, 64), (30, 200), (17, 23)])
def test_random_crop_is_inside_the_image_and_within_the_area_and_aspect_bounds(height, width):
    rng = np.random.default_rng(0)
    boxes = np.array([augmentation.sample_crop_box(rng, height, width) for _ in range(2000)])
    top, left, h, w = boxes.T
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= height).all() and (left + w <= width).all()
    area = h * w / (height * width)
    sampled = (area >= 0.08) & (area <= 1.0) & (w >= 0.75 * h) & (w <= 4 / 3 * h)
    if height / width in (375 / 500, 500 / 333, 1.0):  # Ordinary shapes: (almost) never the fallback.
        assert sampled.mean() > 0.99
        assert area.min() < 0.12 and area.max() > 0.85  # The whole range of areas is used (500x333: at most 0.89)...
        assert (w / h).min() < 0.8 and (w / h).max() > 1.25  # ...and of aspect ratios.
        assert len(set(top)) > 10 and len(set(left)) > 10  # Positions vary.
    # Anything outside the bounds is the fallback: the largest centered crop of an allowed aspect ratio.
    fallback = augmentation.sample_crop_box(rng, height, width, max_attempts=0)
    assert all(tuple(box) == tuple(fallback) for box in boxes[~sampled])


def test_crop_fallback_is_centered_with_the_aspect_ratio_clamped():
    rng = np.random.default_rng(0)
    assert augmentation.sample_crop_box(rng, 30, 40, max_attempts=0) == (0, 0, 30, 40)  # 4:3 is allowed: whole image.
    assert augmentation.sample_crop_box(rng, 10, 100, max_attempts=0) == (0, 43, 10, 13)  # Wide: 13 = floor(10 * 4/3).
    assert augmentation.sample_crop_box(rng, 100, 10, max_attempts=0) == (43, 0, 13, 10)  # Tall: 13 = floor(10 / 0.75).
    assert augmentation.sample_crop_box(rng, 1, 50) == (0, 24, 1, 1)  # Nothing fits the area bounds: fallback.


def test_center_crop_geometry():
    # 0.875 of the shorter side, centered (the odd pixel goes to the bottom/right, as in the Flax example).
    assert image_decoding.center_crop_box(256, 256) == (16, 16, 224, 224)
    assert image_decoding.center_crop_box(300, 400) == (19, 69, 262, 262)
    assert image_decoding.center_crop_box(500, 333) == (105, 21, 291, 291)
    # Resizing the crop to 224 equals resizing the shorter side to 256 and cropping 224: here both are exact.
    green, red = np.array([0, 255, 0], np.uint8), np.array([255, 0, 0], np.uint8)
    image = np.broadcast_to(red, (256, 256, 3)).copy()
    image[16:240, 16:240] = green
    out = image_decoding.EvalPreprocess(image_size=224, mean=(0, 0, 0), std=(1, 1, 1))({"image": image, "label": 5})
    np.testing.assert_array_equal(out["image"], np.broadcast_to(green / 255.0, (224, 224, 3)))
    assert out["label"] == 5 and out["label"].dtype == np.int32


def test_flip_mirrors_left_and_right():
    image = np.random.default_rng(0).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
    identity = {"image_size": SIZE, "mean": (0, 0, 0), "std": (1, 1, 1), "max_attempts": 0}  # Crop: whole image.
    outcomes = []
    for seed in range(16):
        out = augmentation.TrainPreprocess(**identity)({"image": image, "label": 1}, np.random.default_rng(seed))
        pixels = np.rint(out["image"] * 255).astype(np.uint8)
        assert np.array_equal(pixels, image) or np.array_equal(pixels, image[:, ::-1])
        outcomes.append(np.array_equal(pixels, image))
    assert 0 < sum(outcomes) < 16  # Both happen.
    unflipped = augmentation.TrainPreprocess(**identity, flip=False)(
        {"image": image, "label": 1}, np.random.default_rng(1)
    )
    np.testing.assert_array_equal(np.rint(unflipped["image"] * 255).astype(np.uint8), image)


# --- Photometric distortion and normalization ---------------------------------------------------------------


def test_normalization_is_per_channel():
    mean, std = np.array(image_decoding.MEAN_RGB), np.array(image_decoding.STDDEV_RGB)
    image = np.stack([np.broadcast_to(mean, (4, 4, 3)), np.broadcast_to(mean + std, (4, 4, 3))])
    out = image_decoding.normalize(image.astype(np.float32))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[0], 0.0, atol=1e-6)
    np.testing.assert_allclose(out[1], 1.0, atol=1e-6)


def test_color_adjustments():
    rng = np.random.default_rng(0)
    image = rng.uniform(0.2, 0.8, (6, 5, 3)).astype(np.float32)
    gray = np.broadcast_to(rng.uniform(size=(6, 5, 1)), (6, 5, 3)).astype(np.float32)
    luma = np.array([0.299, 0.587, 0.114], np.float32)
    np.testing.assert_allclose(augmentation.adjust_brightness(image, 0.1), image + 0.1, atol=1e-6)
    saturated = augmentation.adjust_saturation(image, 0.0)
    np.testing.assert_allclose(saturated, np.repeat((image @ luma)[..., None], 3, -1), atol=1e-6)
    contrasted = augmentation.adjust_contrast(image, 0.5)
    np.testing.assert_allclose(contrasted.mean((0, 1)), image.mean((0, 1)), atol=1e-6)
    np.testing.assert_allclose(contrasted.std((0, 1)), 0.5 * image.std((0, 1)), atol=1e-6)
    np.testing.assert_allclose(augmentation.adjust_hue(image, 0.0), image, atol=1e-6)
    np.testing.assert_allclose(augmentation.adjust_hue(image, 1.0), image, atol=1e-5)  # A whole turn.
    np.testing.assert_allclose(augmentation.adjust_hue(gray, 0.3), gray, atol=1e-5)  # Grays keep their color...
    hued = augmentation.adjust_hue(image, 0.3)
    np.testing.assert_allclose(hued @ luma, image @ luma, atol=1e-5)  # ...all their luma.
    assert not np.allclose(hued, image, atol=1e-2)


def test_color_jitter_presets():
    image = np.random.default_rng(0).uniform(size=(8, 8, 3)).astype(np.float32)
    np.testing.assert_array_equal(augmentation.ColorJitter()(image, np.random.default_rng(0)), image)
    assert augmentation.DISTORTIONS["none"] is None
    reduced, full = augmentation.DISTORTIONS["reduced"], augmentation.DISTORTIONS["full"]
    assert reduced.contrast == reduced.hue == 0 and reduced.brightness == full.brightness > 0
    for jitter in (reduced, full):
        out = jitter(image, np.random.default_rng(1))
        assert out.dtype == np.float32 and out.shape == image.shape and out.min() >= 0 and out.max() <= 1
        assert not np.allclose(out, image)
        np.testing.assert_array_equal(out, jitter(image, np.random.default_rng(1)))  # Deterministic given the rng.


# --- Example order -------------------------------------------------------------------------------------------


def shard_runs(order: np.ndarray, lengths: list[int]) -> list[np.ndarray]:
    """Splits an epoch order into its runs of examples from one shard."""
    shard_of = np.repeat(np.arange(len(lengths)), lengths)[order]
    return np.split(order, np.flatnonzero(np.diff(shard_of)) + 1)


def test_epoch_orders():
    lengths = [5, 5, 5, 3]
    shards = [list(range(5)), list(range(5, 10)), list(range(10, 15)), list(range(15, 18))]
    orders = {
        mode: [imagenet.epoch_order(lengths, mode, seed=3, epoch=e) for e in range(4)]
        for mode in imagenet.SHUFFLE_MODES
    }
    for mode, epochs in orders.items():
        for order in epochs:
            assert sorted(order.tolist()) == list(range(18)), mode  # Each epoch is a permutation.
        assert not np.array_equal(epochs[0], epochs[1]), mode  # Reshuffled each epoch.
        np.testing.assert_array_equal(epochs[0], imagenet.epoch_order(lengths, mode, seed=3, epoch=0))
    for mode in ("shard_order", "within_shard"):  # Shards are read whole, one after the other...
        for order in orders[mode]:
            runs = shard_runs(order, lengths)
            assert len(runs) == 4 and all(sorted(run.tolist()) in shards for run in runs)
    # ...inside a shard in stored order ("shard_order") or shuffled ("within_shard").
    assert all(np.all(np.diff(run) == 1) for order in orders["shard_order"] for run in shard_runs(order, lengths))
    assert not all(np.all(np.diff(run) == 1) for order in orders["within_shard"] for run in shard_runs(order, lengths))
    assert all(len(shard_runs(order, lengths)) > 4 for order in orders["global"])  # Shards mixed.
    with pytest.raises(ValueError, match="Unknown shuffle mode 'nope'"):
        imagenet.epoch_order(lengths, "nope", 0, 0)


def test_shuffled_order_and_shard_lengths():
    order = imagenet.ShuffledOrder([4, 4, 2], "within_shard", seed=0, length=25)
    assert len(order) == 25
    stream = [order[p] for p in range(25)]
    np.testing.assert_array_equal(stream[10:20], imagenet.epoch_order([4, 4, 2], "within_shard", 0, 1))
    with pytest.raises(IndexError):
        order[25]
    assert imagenet.shard_lengths(list(range(10)), 4) == [4, 4, 2]
    assert imagenet.shard_lengths(list(range(10))) == [10]  # No file information: DEFAULT_SHARD_SIZE blocks.


# --- Pipelines on fake and mock sources --------------------------------------------------------------------


def test_train_batches_shapes_dtypes_and_labels():
    source = fake_source(20)
    kwargs = dict(batch_size=4, image_size=SIZE, read_options=SEQUENTIAL, **ONE_PROCESS)
    batches = take(iter(imagenet.train_dataset(source, seed=0, **kwargs)), 6)  # Crosses an epoch boundary.
    for batch in batches:
        assert set(batch) == {"image", "label"}
        assert batch["image"].shape == (4, SIZE, SIZE, 3) and batch["image"].dtype == np.float32
        assert batch["label"].shape == (4,) and batch["label"].dtype == np.int32
    labels = np.concatenate([b["label"] for b in batches[:5]])
    assert sorted(labels.tolist()) == sorted(r["label"] for r in source)  # The first 5 batches are one epoch.
    bf16 = next(iter(imagenet.train_dataset(source, seed=0, dtype=jnp.bfloat16, distortion="full", **kwargs)))
    assert bf16["image"].dtype == jnp.bfloat16 and bf16["image"].shape == (4, SIZE, SIZE, 3)


def test_train_is_deterministic_given_the_seed_and_seeds_differ():
    source = fake_source(12)
    kwargs = dict(batch_size=4, image_size=SIZE, shuffle="global", **ONE_PROCESS)
    first = take(iter(imagenet.train_dataset(source, seed=1, read_options=SEQUENTIAL, **kwargs)), 4)
    # Reader threads change the timing, not the result.
    threads = grain.ReadOptions(num_threads=2, prefetch_buffer_size=4)
    again = take(iter(imagenet.train_dataset(source, seed=1, read_options=threads, **kwargs)), 4)
    other = take(iter(imagenet.train_dataset(source, seed=2, read_options=SEQUENTIAL, **kwargs)), 4)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["label"], b["label"])
    assert not np.array_equal(first[0]["label"], other[0]["label"])
    assert not np.array_equal(first[0]["image"], other[0]["image"])
    # The next epoch (batches 3 and 4) sees the same examples, reshuffled and augmented afresh.
    assert not np.array_equal(first[0]["image"], first[3]["image"])


def test_process_batches_make_up_the_single_process_global_batch():
    source = fake_source(16)
    kwargs = {"seed": 4, "image_size": SIZE, "read_options": SEQUENTIAL, "num_epochs": 1}
    whole = list(imagenet.train_dataset(source, batch_size=6, process_index=0, process_count=1, **kwargs))
    parts = [
        list(imagenet.train_dataset(source, batch_size=3, process_index=i, process_count=2, **kwargs)) for i in (0, 1)
    ]
    assert len(whole) == len(parts[0]) == len(parts[1]) == 2  # 16 examples: two global batches of 6.
    for step, batch in enumerate(whole):
        for key in ("image", "label"):  # Process i holds global positions i, i + 2, ...
            np.testing.assert_array_equal(batch[key][0::2], parts[0][step][key])
            np.testing.assert_array_equal(batch[key][1::2], parts[1][step][key])


def test_checkpointed_iterator_resumes_at_the_same_batch():
    source = fake_source(10)
    dataset = imagenet.train_dataset(
        source,
        batch_size=3,
        seed=0,
        image_size=SIZE,
        read_options=grain.ReadOptions(num_threads=2, prefetch_buffer_size=4),
        **ONE_PROCESS,
    )
    iterator = iter(dataset)
    take(iterator, 3)
    state = iterator.get_state()
    expected = take(iterator, 3)  # Into the next epoch.
    resumed = iter(dataset)
    resumed.set_state(state)
    for a, b in zip(expected, take(resumed, 3)):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["label"], b["label"])


def test_start_batch_skips_exactly_that_many_batches():
    source = fake_source(10)
    kwargs = {"batch_size": 3, "seed": 5, "image_size": SIZE, "read_options": SEQUENTIAL}
    kwargs.update(process_index=1, process_count=2)
    expected = take(iter(imagenet.train_dataset(source, **kwargs)), 6)[4:]  # Batches 4 and 5 cross into epoch 2.
    resumed = take(iter(imagenet.train_dataset(source, start_batch=4, **kwargs)), 2)
    for a, b in zip(expected, resumed):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["label"], b["label"])
    with pytest.raises(ValueError, match="start_batch must be >= 0"):
        imagenet.train_dataset(source, start_batch=-1, **kwargs)


def test_eval_covers_every_example_once_with_padding():
    source = fake_source(11)
    kwargs = {"batch_size": 4, "image_size": SIZE, "read_options": SEQUENTIAL}
    batches = list(imagenet.eval_dataset(source, **ONE_PROCESS, **kwargs))
    assert len(batches) == 3
    for batch in batches:
        assert batch["image"].shape == (4, SIZE, SIZE, 3) and batch["image"].dtype == np.float32
        assert batch["label"].dtype == np.int32 and batch["mask"].dtype == bool
    mask = np.concatenate([b["mask"] for b in batches])
    labels = np.concatenate([b["label"] for b in batches])
    np.testing.assert_array_equal(mask, np.arange(12) < 11)
    np.testing.assert_array_equal(labels[:11], [r["label"] for r in source])
    assert not batches[-1]["image"][-1].any()
    # Two processes: the same number of batches each, together every example once.
    parts = [list(imagenet.eval_dataset(source, process_index=i, process_count=2, **kwargs)) for i in (0, 1)]
    assert len(parts[0]) == len(parts[1]) == 2
    seen = np.concatenate([b["label"][b["mask"]] for part in parts for b in part])
    assert sorted(seen.tolist()) == sorted(r["label"] for r in source)
    np.testing.assert_array_equal(parts[0][0]["image"][1], batches[0]["image"][2])  # Process 0: examples 0, 2, ...


def test_bad_records_and_arguments_are_refused():
    preprocess = image_decoding.EvalPreprocess(image_size=SIZE)
    with pytest.raises(DataError, match="label -1 is outside 0..999"):  # The unlabeled test split.
        preprocess({"image": np.zeros((8, 8, 3), np.uint8), "label": -1})
    with pytest.raises(DataError, match=r"expected a uint8 \(H, W, 3\) image"):
        preprocess({"image": np.zeros((8, 8), np.uint8), "label": 1})
    with pytest.raises(ValueError, match="seed must be"):
        imagenet.train_dataset(fake_source(4), batch_size=2, seed=-1, **ONE_PROCESS)
    with pytest.raises(DataError, match="hold no global batch"):
        imagenet.train_dataset(fake_source(4), batch_size=8, seed=0, num_epochs=1, **ONE_PROCESS)


def test_iterators_under_tfds_mock_data():
    with tfds.testing.mock_data(num_examples=10):
        assert imagenet.num_examples("train") == 10
        source = imagenet.open_split("train")
        record = source[0]  # Mock records: random uint8 images of random small sizes, no JPEG involved.
        assert record["image"].dtype == np.uint8 and record["image"].ndim == 3 and record["image"].shape[-1] == 3
        common = dict(image_size=SIZE, read_options=SEQUENTIAL, **ONE_PROCESS)
        train = imagenet.train_iterator(batch_size=4, seed=0, distortion="full", **common)
        batch = next(train)
        assert batch["image"].shape == (4, SIZE, SIZE, 3) and batch["image"].dtype == np.float32
        assert batch["label"].dtype == np.int32 and np.all((batch["label"] >= 0) & (batch["label"] < 1000))
        state = train.get_state()
        expected = next(train)
        train.set_state(state)
        np.testing.assert_array_equal(next(train)["image"], expected["image"])
        batches = list(imagenet.eval_iterator(batch_size=4, **common))
        assert [int(b["mask"].sum()) for b in batches] == [4, 4, 2]


# --- Real tfds sources -------------------------------------------------------------------------------------


def test_prepared_arrayrecord_dataset_decodes_jpegs_without_tensorflow(prepared):
    data_dir, labels = prepared
    source = imagenet.open_split("train", data_dir)
    record = source[3]  # tfds decodes the stored JPEG in NumPy (OpenCV if installed, else PIL).
    assert isinstance(record["image"], np.ndarray) and record["image"].dtype == np.uint8
    assert record["image"].shape == (23, 30, 3) and record["label"] == labels["train"][3]
    assert imagenet.num_examples("validation", data_dir) == 5
    assert imagenet.shard_lengths(source) == [6]  # The files' own shards.
    common = dict(image_size=SIZE, read_options=SEQUENTIAL, **ONE_PROCESS)
    batch = next(imagenet.train_iterator(batch_size=3, seed=0, data_dir=data_dir, **common))
    assert batch["image"].shape == (3, SIZE, SIZE, 3) and set(batch["label"].tolist()) <= set(labels["train"])
    batches = list(imagenet.eval_iterator(batch_size=2, data_dir=data_dir, **common))
    assert np.concatenate([b["label"] for b in batches])[:5].tolist() == labels["validation"]


def test_worker_processes_read_the_same_batches_and_resume_from_a_saved_state(prepared):
    """Two grain worker processes (`mp_prefetch`) reading the real ArrayRecord files, each assembling whole batches:
    the in-process pipeline's batches, in order; a new iterator set to a state saved mid-stream goes on from there
    (as after a restart); closed, the iterators have stopped their workers. (The evaluation pipeline reads through
    the same `read_batches`.)"""
    source = imagenet.open_split("train", prepared[0])
    kwargs = dict(batch_size=2, seed=3, image_size=SIZE, read_options=SEQUENTIAL, **ONE_PROCESS)
    expected = take(iter(imagenet.train_dataset(source, **kwargs)), 5)  # 6 examples: batches 3 and 4 are epoch 2
    with contextlib.closing(iter(imagenet.train_dataset(source, worker_count=2, **kwargs))) as batches:
        read = take(batches, 3)
        state = batches.get_state()
        read += take(batches, 2)
    with contextlib.closing(iter(imagenet.train_dataset(source, worker_count=2, **kwargs))) as resumed:
        resumed.set_state(state)
        read += take(resumed, 2)
    for a, b in zip(expected + expected[3:], read, strict=True):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["label"], b["label"])
    assert not multiprocessing.active_children()


def test_missing_dataset_says_where_to_put_the_manual_download(tmp_path):
    manual = os.path.join(tmp_path, "downloads", "manual")
    with pytest.raises(DataError) as error:
        imagenet.open_split("train", tmp_path)
    message = str(error.value)
    assert f"put them in tfds's manual_dir, {manual}/" in message
    assert "Download ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar from https://image-net.org" in message
    assert "pip install -e .[tensorflow]" in message
    assert f"tfds build imagenet2012 --file_format=array_record --data_dir={tmp_path}" in message
    os.makedirs(manual)
    for name in imagenet.MANUAL_FILES:
        open(os.path.join(manual, name), "wb").close()
    with pytest.raises(DataError, match=r"The manual download is in place .* Then prepare it once") as error:
        imagenet.num_examples("validation", tmp_path)
    assert "Download" not in str(error.value)
