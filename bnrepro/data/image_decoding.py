"""ImageNet records as model inputs: a decoded record checked, cropped, resized and normalized.

tfds decodes each stored JPEG into ``{'image': uint8 (H, W, 3), 'label': int}`` (`bnrepro.data.imagenet.open_split`);
this module takes it from there, deterministically: :func:`rgb_image` and :func:`record_label` check a record,
:func:`crop_and_resize` cuts a :class:`CropBox` out and resizes it, :func:`normalize` scales the pixels, and
:class:`EvalPreprocess` is single-crop evaluation (Sec. 4.2). The random training transforms are in
`bnrepro.data.augmentation`. PIL is imported when an image is first resized.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from bnrepro.data.core import DataError

# ILSVRC-2012 labels its images 0..999.
NUM_CLASSES = 1000
# Evaluation crops the central 87.5% of the shorter side (224 of 256), as Inception and the Flax example do.
CROP_FRACTION = 0.875
# Per-channel mean and standard deviation of ImageNet training pixels, for images scaled to [0, 1].
MEAN_RGB = (0.485, 0.456, 0.406)
STDDEV_RGB = (0.229, 0.224, 0.225)


# --- Geometry: central crop and resize -------------------------------------------------------------------------


class CropBox(NamedTuple):
    """A rectangle of whole pixels: rows [top, top + height), columns [left, left + width)."""

    top: int
    left: int
    height: int
    width: int


def center_crop_box(height: int, width: int, crop_fraction: float = CROP_FRACTION) -> CropBox:
    """The central square whose side is ``crop_fraction`` of the shorter side.

    Resizing this square to ``image_size`` is the same as resizing the shorter side to ``image_size /
    crop_fraction`` (256 for 224) and cropping the central ``image_size`` square, but resizes fewer pixels.
    """
    side = max(1, int(crop_fraction * min(height, width)))
    return CropBox((height - side + 1) // 2, (width - side + 1) // 2, side, side)


def crop_and_resize(image: np.ndarray, box: CropBox, size: int) -> np.ndarray:
    """Crops ``box`` out of a uint8 (H, W, 3) image and resizes it to (size, size, 3), bilinear (PIL, antialiased)."""
    import PIL.Image

    pil_box = (box.left, box.top, box.left + box.width, box.top + box.height)
    resized = PIL.Image.fromarray(image).resize((size, size), PIL.Image.Resampling.BILINEAR, box=pil_box)
    return np.asarray(resized)


# --- Normalization and per-example checks ----------------------------------------------------------------------


def normalize(image: np.ndarray, mean: Sequence[float] = MEAN_RGB, std: Sequence[float] = STDDEV_RGB) -> np.ndarray:
    """Per-channel ``(image - mean) / std`` for float images in [0, 1], in float32."""
    return (image - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)


def rgb_image(record: Mapping[str, Any]) -> np.ndarray:
    """The record's image, checked to be uint8 (H, W, 3) with no empty side."""
    image = np.asarray(record["image"])
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3 or 0 in image.shape:
        raise DataError(f"imagenet2012: expected a uint8 (H, W, 3) image, got {image.dtype} {image.shape}.")
    return image


def record_label(record: Mapping[str, Any]) -> np.int32:
    """The record's class, checked to be one of the `NUM_CLASSES`."""
    label = int(record["label"])
    if not 0 <= label < NUM_CLASSES:  # The unlabeled 'test' split has label -1.
        raise DataError(f"imagenet2012: label {label} is outside 0..{NUM_CLASSES - 1}; is this a labeled split?")
    return np.int32(label)


@dataclasses.dataclass(frozen=True)
class EvalPreprocess:
    """One evaluation example: the central ``crop_fraction`` square resized to ``image_size``, normalized."""

    image_size: int = 224
    crop_fraction: float = CROP_FRACTION
    mean: tuple[float, float, float] = MEAN_RGB
    std: tuple[float, float, float] = STDDEV_RGB
    dtype: Any = np.float32

    def __call__(self, record: Mapping[str, Any]) -> dict[str, np.ndarray]:
        image = rgb_image(record)
        image = crop_and_resize(image, center_crop_box(*image.shape[:2], self.crop_fraction), self.image_size)
        image = normalize(image.astype(np.float32) / 255.0, self.mean, self.std).astype(self.dtype)
        return {"image": image, "label": record_label(record)}
