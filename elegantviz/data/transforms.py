"""Augmentations that keep a scene whole: flips and 90-degree rotations of image and labels together."""

from __future__ import annotations

import numpy as np


def random_dihedral(image: np.ndarray, labels: np.ndarray, rng: np.random.Generator, flips: bool = True,
                    rot90: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """One of the 8 symmetries of the square applied to (c, h, w) image and (h, w) labels."""
    return apply_dihedral(image, labels, *dihedral_choice(rng, flips, rot90))


def random_crop(image: np.ndarray, labels: np.ndarray, size: int, rng: np.random.Generator):
    ys, xs = crop_window(image.shape, size, rng)
    return image[:, ys, xs], labels[ys, xs]


def crop_window(shape: tuple[int, ...], size: int, rng: np.random.Generator) -> tuple[slice, slice]:
    """The window :func:`random_crop` would take from an image of ``shape``, drawing the same
    random numbers: a rank can draw another rank's sample without reading its scene."""
    h, w = shape[-2:]
    ch, cw = min(size, h), min(size, w)
    y = int(rng.integers(0, h - ch + 1))
    x = int(rng.integers(0, w - cw + 1))
    return slice(y, y + ch), slice(x, x + cw)


def dihedral_choice(rng: np.random.Generator, flips: bool = True, rot90: bool = True) -> tuple[int, bool]:
    """The (quarter turns, flip) :func:`random_dihedral` would apply, drawing the same numbers."""
    k = int(rng.integers(4)) if rot90 else 0
    return k, bool(flips and rng.random() < 0.5)


def apply_dihedral(image: np.ndarray, labels: np.ndarray, k: int, flip: bool) -> tuple[np.ndarray, np.ndarray]:
    image, labels = np.rot90(image, k, axes=(1, 2)), np.rot90(labels, k)
    if flip:
        image, labels = image[:, :, ::-1], labels[:, ::-1]
    return np.ascontiguousarray(image), np.ascontiguousarray(labels)
