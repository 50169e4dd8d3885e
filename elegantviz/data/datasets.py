"""Samplers over scene stores: whole scenes (holistic) or random crops (sliced), same stores.

Images are normalised per band with statistics of the coarsest pyramid level (cheap, and
stored in the checkpoint so prediction normalises the same way); nodata becomes 0 after
normalisation and its labels become ignore.
"""

from __future__ import annotations

import glob
import math
from dataclasses import dataclass

import numpy as np

from elegantviz.classes import IGNORE_INDEX, ClassTable
from elegantviz.data.transforms import apply_dihedral, crop_window, dihedral_choice
from elegantviz.errors import InputError
from elegantviz.io.store import Scene, open_scene


@dataclass
class Normalization:
    mean: list[float]
    std: list[float]

    @classmethod
    def of_scenes(cls, scenes: list[Scene]) -> "Normalization":
        sums, sq, count = 0.0, 0.0, 0
        for s in scenes:
            top = np.asarray(s.image(s.num_levels - 1).compute(), np.float64)
            valid = _valid(top, s.nodata)
            x = np.where(valid, top, 0.0)
            sums = sums + x.sum((1, 2))
            sq = sq + (x * x).sum((1, 2))
            count = count + valid.sum((1, 2))
        count = np.maximum(count, 1)
        mean = sums / count
        std = np.sqrt(np.maximum(sq / count - mean**2, 1e-12))
        return cls([float(v) for v in mean], [float(max(v, 1e-6)) for v in std])

    def apply(self, image: np.ndarray, nodata: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Normalised float32 image and the (h, w) mask of pixels valid in every band."""
        x = image.astype(np.float32)
        valid = _valid(x, nodata).all(0)
        mean = np.asarray(self.mean, np.float32)[:, None, None]
        std = np.asarray(self.std, np.float32)[:, None, None]
        x = (x - mean) / std
        x[:, ~valid] = 0.0
        return np.nan_to_num(x, nan=0.0), valid


def _valid(x: np.ndarray, nodata: float | None) -> np.ndarray:
    ok = ~np.isnan(x)
    if nodata is not None and not math.isnan(nodata):
        ok &= x != nodata
    return ok


def expand_paths(patterns: list[str], what: str) -> list[str]:
    """Local glob patterns (scenes/train-*.zarr) expanded in sorted order; URLs kept as they are."""
    paths = []
    for pattern in patterns:
        if "://" not in pattern and any(ch in pattern for ch in "*?["):
            found = sorted(glob.glob(pattern))
            if not found:
                raise InputError(f"{what} scenes: {pattern!r} matches no file")
            paths += found
        else:
            paths.append(pattern)
    return paths


def open_training_scenes(paths: list[str], label: str, what: str) -> tuple[list[Scene], ClassTable]:
    if not paths:
        raise InputError(f"no {what} scenes given")
    scenes = [open_scene(p) for p in expand_paths(paths, what)]
    tables = []
    for s in scenes:
        if label not in s.labels:
            raise InputError(f"{s.url}: has no labels/{label} to train on (has: {', '.join(s.labels) or 'none'})")
        tables.append(s.label_classes(label) or s.classes)
    first = scenes[0]
    for s, t in zip(scenes[1:], tables[1:]):
        if t != tables[0]:
            raise InputError(f"{s.url}: its class table differs from {first.url}'s")
        if s.shape[0] != first.shape[0]:
            raise InputError(f"{s.url}: has {s.shape[0]} bands, {first.url} has {first.shape[0]}")
    if tables[0] is None:
        raise InputError(f"{first.url}: labels/{label} has no class table")
    return scenes, tables[0]


CELL = 32  # HRNet's coarsest stride: a scene is padded to whole cells of this side


def check_run_scenes(train: list[Scene], val: list[Scene], table: ClassTable, label: str, level: int,
                     min_side: int = 0, crop: int | None = None) -> None:
    """Before the first step: validation scenes fit the training set (a 3-band validation scene
    used to crash after the first training stretch), the level exists, every training scene is
    large enough for a training step (BatchNorm needs more than one value per channel at stride
    32: a 1 x 1 scene crashed in the first forward), and every scene has labelled pixels (a
    scene of ignore only trained with a loss of 0.0 and no word). ``min_side``: the model's own
    smallest side (ISDNet's deep branch at 1/32, GLNet's and FCtL's patches), for every scene and for
    the ``crop`` of sliced training."""
    if crop is not None and crop < min_side:
        raise InputError(f"data.crop_size {crop} is smaller than this model takes ({min_side} px a side at least)")
    first = train[0]
    for s in val:
        if s.shape[0] != first.shape[0]:
            raise InputError(f"{s.url}: validation scene has {s.shape[0]} bands, the training scenes "
                             f"({first.url}) have {first.shape[0]}")
        if (s.label_classes(label) or s.classes) != table:
            raise InputError(f"{s.url}: validation scene's class table differs from the training scenes'")
    for s in train + val:
        if level >= s.num_levels:
            raise InputError(f"{s.url}: data.level {level} does not exist (levels 0..{s.num_levels - 1})")
        h, w = s.image(level).shape[1:]
        if s in train and math.ceil(h / CELL) * math.ceil(w / CELL) < 2:
            raise InputError(f"{s.url}: {h} x {w} px at data.level {level} is too small to train on (a step needs "
                             f"more than one {CELL} x {CELL} px cell, e.g. {2 * CELL} x {CELL} px)")
        if min(h, w) < min_side:
            raise InputError(f"{s.url}: {h} x {w} px at data.level {level} is smaller than this model takes "
                             f"({min_side} px a side at least)")
        if not has_labelled_pixel(s.label_levels(label), table.ignore_index):
            raise InputError(f"{s.url}: labels/{label} has no labelled pixel (all {table.ignore_index} = ignore); "
                             "nothing to learn or score")


def has_labelled_pixel(levels: list, ignore: int) -> bool:
    """Any pixel not ignore? The coarsest level answers at once when it finds one (a mode pyramid
    keeps classes); only when it has none is level 0 read, chunk by chunk, stopping at the first."""
    if (np.asarray(levels[-1]) != ignore).any():
        return True
    base = levels[0]
    for idx in np.ndindex(*base.numblocks):
        if (np.asarray(base.blocks[idx]) != ignore).any():
            return True
    return False


class SceneSampler:
    """Endless training samples: one whole scene (holistic) or one random crop (sliced) at a time.

    Its random state is a numpy Generator whose state goes into checkpoints, so a resumed run
    draws the same samples as an uninterrupted one.
    """

    def __init__(self, scenes: list[Scene], norm: Normalization, label: str = "gt", mode: str = "holistic",
                 crop_size: int = 512, level: int = 0, flips: bool = True, rot90: bool = True, seed: int = 0):
        if mode not in ("holistic", "sliced"):
            raise InputError(f"data.mode must be holistic or sliced, got {mode!r}")
        self.scenes, self.norm, self.label, self.mode = scenes, norm, label, mode
        self.crop_size, self.level, self.flips, self.rot90 = crop_size, level, flips, rot90
        self.rng = np.random.default_rng(seed)
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._shapes: dict[int, tuple[int, ...]] = {}

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Normalised image and labels of one scene at the training level (cached: scenes that
        are trained holistically fit in host memory by design)."""
        if index not in self._cache:
            s = self.scenes[index]
            img, valid = self.norm.apply(np.asarray(s.image(self.level).compute()), s.nodata)
            lab = np.asarray(s.label(self.label, self.level).compute()).copy()
            lab[~valid] = IGNORE_INDEX
            self._cache[index] = (img, lab)
        return self._cache[index]

    def _shape(self, index: int) -> tuple[int, ...]:
        """A scene's shape at the training level, read once (on S3 a metadata read is a request)."""
        if index not in self._shapes:
            self._shapes[index] = tuple(self.scenes[index].image(self.level).shape)
        return self._shapes[index]

    def sample(self) -> tuple[np.ndarray, np.ndarray]:
        return self.step_samples(1, range(1))[0]

    def step_samples(self, count: int, mine: range) -> list[tuple[np.ndarray, np.ndarray]]:
        """The ``count`` samples of one optimizer step over all ranks (ranks x accumulation), of
        which only those in ``mine`` are read and returned. Every rank draws the same random
        numbers, so the ranks share one stream (one state in the checkpoint) and a step on N ranks
        sees the samples a single process accumulating N sees. Within a step the scenes differ
        while there are enough of them (a distributed sampler's partition, drawn anew each step)."""
        n = len(self.scenes)
        if count == 1:
            indices = [int(self.rng.integers(n))]
        else:
            indices = [int(i) for i in self.rng.choice(n, size=count, replace=count > n)]
        out = []
        for j, index in enumerate(indices):
            window = crop_window(self._shape(index), self.crop_size, self.rng) if self.mode == "sliced" else None
            turn = dihedral_choice(self.rng, self.flips, self.rot90)
            if j in mine:
                img, lab = self.load(index)
                if window is not None:
                    img, lab = img[:, window[0], window[1]], lab[window[0], window[1]]
                out.append(apply_dihedral(img, lab, *turn))
        return out

    def state(self) -> dict:
        return self.rng.bit_generator.state

    def set_state(self, state: dict) -> None:
        self.rng.bit_generator.state = state
