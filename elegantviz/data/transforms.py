"""Augmentations that keep a scene whole: flips and 90-degree rotations of image and labels together."""

from __future__ import annotations

import numpy as np


def random_dihedral(image: np.ndarray, labels: np.ndarray, rng: np.random.Generator, flips: bool = True,
                    rot90: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """One of the 8 symmetries of the square applied to (c, h, w) image and (h, w) labels."""
    if rot90:
        k = int(rng.integers(4))
        image, labels = np.rot90(image, k, axes=(1, 2)), np.rot90(labels, k)
    if flips and rng.random() < 0.5:
        image, labels = image[:, :, ::-1], labels[:, ::-1]
    return np.ascontiguousarray(image), np.ascontiguousarray(labels)


def random_crop(image: np.ndarray, labels: np.ndarray, size: int, rng: np.random.Generator):
    _, h, w = image.shape
    ch, cw = min(size, h), min(size, w)
    y = int(rng.integers(0, h - ch + 1))
    x = int(rng.integers(0, w - cw + 1))
    return image[:, y : y + ch, x : x + cw], labels[y : y + ch, x : x + cw]
