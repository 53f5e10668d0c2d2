"""Inception's training augmentation of ImageNet examples: random-size crop, flip and photometric distortion.

Sec. 4.2 trains with the Inception input pipeline: per example a random-size crop (:func:`sample_crop_box`: 8%-100%
of the area, aspect ratio 3/4-4/3), a resize to ``image_size``, a random horizontal flip and an optional
photometric distortion (:class:`ColorJitter`; the accelerated runs "reduce photometric distortions", Sec. 4.2.1,
which is the ``"reduced"`` preset of :data:`DISTORTIONS`), then per-channel normalization: :class:`TrainPreprocess`.
Every draw comes from the generator it is given, so an example's augmentation is a function of that generator's key.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from bnrepro.data.image_decoding import (
    MEAN_RGB,
    STDDEV_RGB,
    CropBox,
    crop_and_resize,
    normalize,
    record_label,
    rgb_image,
)

# Inception's random-size crop: "patches whose size is distributed evenly between 8% and 100% of the image area
# with aspect ratio constrained to the interval [3/4, 4/3]" (Szegedy et al. 2015, the paper's ref. for Sec. 4.2).
AREA_RANGE = (0.08, 1.0)
ASPECT_RATIO_RANGE = (3 / 4, 4 / 3)


# --- Geometry: Inception random-size crop ----------------------------------------------------------------------


def _fits(height: int, width: int, crop_h: int, crop_w: int, area_range, aspect_ratio_range) -> bool:
    """Whether an integer crop lies inside the image and within the area-fraction and aspect-ratio bounds."""
    area = height * width
    return (
        0 < crop_h <= height
        and 0 < crop_w <= width
        and area_range[0] * area <= crop_h * crop_w <= area_range[1] * area
        and aspect_ratio_range[0] * crop_h <= crop_w <= aspect_ratio_range[1] * crop_h
    )


def sample_crop_box(
    rng: np.random.Generator,
    height: int,
    width: int,
    *,
    area_range: tuple[float, float] = AREA_RANGE,
    aspect_ratio_range: tuple[float, float] = ASPECT_RATIO_RANGE,
    max_attempts: int = 10,
) -> CropBox:
    """Samples Inception's random-size crop of an image of ``height`` x ``width`` pixels.

    Each attempt draws the crop's area uniformly in ``area_range`` (fractions of the image area) and its aspect
    ratio width/height log-uniformly in ``aspect_ratio_range`` (so 3/4 and 4/3 are equally likely), rounds the
    sides to whole pixels and keeps the crop if it fits the image and the rounded crop still meets both bounds;
    its position is then uniform over the image. This is the sampler of TF-slim's ``distorted_bounding_box_crop``
    (used by the Flax ImageNet example) and torchvision's ``RandomResizedCrop``, up to how the size is drawn.

    If all ``max_attempts`` fail (only likely for very elongated images), the fallback is the largest centered crop
    whose aspect ratio lies in ``aspect_ratio_range``: the whole image when its own aspect ratio does. Only this
    fallback can fall below ``area_range[0]``.
    """
    log_lo, log_hi = math.log(aspect_ratio_range[0]), math.log(aspect_ratio_range[1])
    for _ in range(max_attempts):
        target_area = height * width * rng.uniform(*area_range)
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        crop_w = round(math.sqrt(target_area * aspect))
        crop_h = round(math.sqrt(target_area / aspect))
        if _fits(height, width, crop_h, crop_w, area_range, aspect_ratio_range):
            top = int(rng.integers(0, height - crop_h + 1))
            left = int(rng.integers(0, width - crop_w + 1))
            return CropBox(top, left, crop_h, crop_w)
    crop_h, crop_w = height, width
    if width < aspect_ratio_range[0] * height:  # Too tall: keep the width, cut the height.
        crop_h = max(1, min(height, math.floor(width / aspect_ratio_range[0])))
    elif width > aspect_ratio_range[1] * height:  # Too wide: keep the height, cut the width.
        crop_w = max(1, min(width, math.floor(height * aspect_ratio_range[1])))
    return CropBox((height - crop_h) // 2, (width - crop_w) // 2, crop_h, crop_w)


# --- Photometric distortion ----------------------------------------------------------------------------------

_LUMA = np.array([0.299, 0.587, 0.114], np.float32)
_RGB_TO_YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_YIQ_TO_RGB = np.linalg.inv(_RGB_TO_YIQ)


def adjust_brightness(image: np.ndarray, delta: float) -> np.ndarray:
    """Adds ``delta`` to every pixel (TF's ``adjust_brightness``); images in [0, 1]."""
    return image + np.float32(delta)


def adjust_saturation(image: np.ndarray, factor: float) -> np.ndarray:
    """Moves each pixel away from (factor > 1) or towards (factor < 1) its gray level; 0 gives grayscale."""
    gray = (image @ _LUMA)[..., None]
    return gray + np.float32(factor) * (image - gray)


def adjust_contrast(image: np.ndarray, factor: float) -> np.ndarray:
    """Scales each channel's deviation from its mean over the image by ``factor`` (TF's ``adjust_contrast``)."""
    mean = image.mean(axis=(0, 1), keepdims=True)
    return mean + np.float32(factor) * (image - mean)


def adjust_hue(image: np.ndarray, delta: float) -> np.ndarray:
    """Rotates hue by ``delta`` turns (|delta| <= 0.5), as a rotation of the chroma plane in YIQ space.

    A linear stand-in for TF's HSV ``adjust_hue`` (NVIDIA DALI does the same): luma and gray pixels are unchanged.
    """
    angle = 2 * math.pi * delta
    cos, sin = math.cos(angle), math.sin(angle)
    rotation = np.array([[1, 0, 0], [0, cos, -sin], [0, sin, cos]])
    matrix = (_YIQ_TO_RGB @ rotation @ _RGB_TO_YIQ).astype(np.float32)
    return image @ matrix.T


@dataclasses.dataclass(frozen=True)
class ColorJitter:
    """Strengths of Inception's photometric distortions; a zero strength turns that distortion off.

    Attributes:
      brightness: a delta drawn uniformly in [-brightness, brightness] is added (images in [0, 1]).
      saturation: saturation is scaled by a factor drawn uniformly in [1 - saturation, 1 + saturation].
      contrast: contrast is scaled by a factor drawn uniformly in [1 - contrast, 1 + contrast].
      hue: hue is rotated by a fraction of a turn drawn uniformly in [-hue, hue].
    """

    brightness: float = 0.0
    saturation: float = 0.0
    contrast: float = 0.0
    hue: float = 0.0

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Applies the enabled distortions in a random order, then clips to [0, 1] (as TF-slim's ``distort_color``)."""
        ops: list[Callable[[np.ndarray], np.ndarray]] = []
        if self.brightness:
            ops.append(lambda x: adjust_brightness(x, rng.uniform(-self.brightness, self.brightness)))
        if self.saturation:
            ops.append(lambda x: adjust_saturation(x, rng.uniform(1 - self.saturation, 1 + self.saturation)))
        if self.contrast:
            ops.append(lambda x: adjust_contrast(x, rng.uniform(1 - self.contrast, 1 + self.contrast)))
        if self.hue:
            ops.append(lambda x: adjust_hue(x, rng.uniform(-self.hue, self.hue)))
        for i in rng.permutation(len(ops)):
            image = ops[i](image)
        return np.clip(image, 0.0, 1.0)


# The paper does not quantify its distortions. "full" is Inception's as published in TF-slim's
# inception_preprocessing.distort_color; "reduced" (Sec. 4.2.1's "reduce the photometric distortions") is that
# function's fast_mode, brightness and saturation only, at the same strengths; "none" turns them off.
DISTORTIONS: dict[str, ColorJitter | None] = {
    "none": None,
    "reduced": ColorJitter(brightness=32 / 255, saturation=0.5),
    "full": ColorJitter(brightness=32 / 255, saturation=0.5, contrast=0.5, hue=0.2),
}


# --- Per-example transform -------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TrainPreprocess:
    """One training example: Inception random-size crop, resize, random flip, optional color jitter, normalize.

    Called by grain's ``random_map`` with the example and a generator keyed by the seed and the example's position.
    """

    image_size: int = 224
    area_range: tuple[float, float] = AREA_RANGE
    aspect_ratio_range: tuple[float, float] = ASPECT_RATIO_RANGE
    max_attempts: int = 10
    flip: bool = True
    color_jitter: ColorJitter | None = None
    mean: tuple[float, float, float] = MEAN_RGB
    std: tuple[float, float, float] = STDDEV_RGB
    dtype: Any = np.float32

    def __call__(self, record: Mapping[str, Any], rng: np.random.Generator) -> dict[str, np.ndarray]:
        image = rgb_image(record)
        box = sample_crop_box(
            rng,
            *image.shape[:2],
            area_range=self.area_range,
            aspect_ratio_range=self.aspect_ratio_range,
            max_attempts=self.max_attempts,
        )
        image = crop_and_resize(image, box, self.image_size)
        if self.flip and rng.random() < 0.5:
            image = image[:, ::-1]
        pixels = image.astype(np.float32) / 255.0
        if self.color_jitter is not None:
            pixels = self.color_jitter(pixels, rng)
        image = normalize(pixels, self.mean, self.std).astype(self.dtype)
        return {"image": image, "label": record_label(record)}
