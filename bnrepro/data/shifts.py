"""Domain shifts of MNIST-like uint8 (N, 28, 28) images, for domain adaptation (AdaBN): the same digits and
labels, other input statistics. Each shift is deterministic (noise from a fixed seed)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import PIL.Image


def inverted(images: np.ndarray) -> np.ndarray:
    """White digits on black become black on white."""
    return 255 - images


def rotated(images: np.ndarray, degrees: float = 30.0) -> np.ndarray:
    """Every image rotated by `degrees` counter-clockwise about its centre (bilinear, black fill)."""
    return np.stack([np.asarray(PIL.Image.fromarray(image).rotate(degrees, PIL.Image.BILINEAR)) for image in images])


def noisy(images: np.ndarray, std: float = 64.0, seed: int = 0) -> np.ndarray:
    """Gaussian pixel noise of standard deviation `std` (in 0..255 units), clipped to 0..255."""
    noise = np.random.default_rng(seed).normal(0.0, std, images.shape)
    return np.clip(np.rint(images + noise), 0, 255).astype(np.uint8)


def low_contrast(images: np.ndarray, contrast: float = 0.3, background: float = 110.0) -> np.ndarray:
    """Pixels mapped to background + contrast * pixel: a grey, washed-out image."""
    return np.rint(background + contrast * images.astype(np.float64)).astype(np.uint8)


SHIFTS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "inverted": inverted,
    "rotated": rotated,
    "noisy": noisy,
    "low_contrast": low_contrast,
}
