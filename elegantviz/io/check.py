"""`elegantviz check`: verify a whole scene store, chunk by chunk.

For every part (the image pyramid, each ``labels/<name>`` and ``maps/<name>``): it is complete
(or is reported as incomplete); each level's ``zarr.json`` agrees with what the part's manifest
recorded at writing and with the image (labels have the image's shape and are uint8; levels
halve as the pyramid does); every chunk the manifest lists exists, no chunk lies beyond the
grid or was written after the part was finished, and every chunk there decodes (each one is
read). A store written before manifests existed is checked for all of that except missing
chunks, which it cannot tell from empty ones; that is said once, as a note.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import zarr

from elegantviz.errors import ElegantvizError
from elegantviz.io.blocks import run_threaded
from elegantviz.io.manifest import (MANIFEST, METADATA_FILE, array_prefix, chunk_index, chunk_region, grid_of,
                                    listed_keys, metadata_mismatch, present_chunks, record_problem, short_error)
from elegantviz.io.pyramid import level_shapes
from elegantviz.io.schema import KEY, LABELS, MAPS
from elegantviz.io.store import Scene, open_scene
from elegantviz.io.validate import (BROKEN, crs_of, dataset_paths, map_problem, node, part_names, part_state,
                                    problem_text, validate_root)

IMAGE = "image"


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a store: ``where`` (a part, an array's zarr.json, a chunk) and what."""

    store: str
    where: str
    text: str
    note: bool = False  # worth saying, but not damage

    def __str__(self) -> str:
        head = f"{self.store}: {self.where} " if self.where else f"{self.store}: "
        return head + self.text + (" (note)" if self.note else "")


@dataclass
class CheckReport:
    url: str
    problems: list[Problem] = field(default_factory=list)
    parts: int = 0
    chunks: int = 0  # chunks read and decoded

    @property
    def damage(self) -> list[Problem]:
        return [p for p in self.problems if not p.note]

    def summary(self) -> str:
        n = len(self.damage)
        state = f"damaged, {n} problem{'s' if n != 1 else ''}" if n else "clean"
        return f"{self.url}: {state} ({self.parts} parts, {self.chunks} chunks read)"


@dataclass
class _Level:
    """One array of a part, as the checks see it."""

    part: str
    k: int  # its level
    path: str  # inside the store, e.g. labels/gt/0
    array: zarr.Array
    record: dict | None  # the manifest's entry
    truth: dict  # shape, dtype, chunks it should have: the manifest's, else its zarr.json's


def check_scene(url: str, progress: bool = True) -> CheckReport:
    """Every problem of the scene store at ``url`` (its ``problems``), and what was looked at."""
    report = CheckReport(str(url))
    add = report.problems.append
    try:
        scene = open_scene(url, allow_incomplete=True)
    except ElegantvizError as e:
        scene = _opened_for_check(report.url)  # a damaged level: looked at one by one below
        if scene is None:
            add(Problem(report.url, "", problem_text(e, report.url)))
            return report
    root = scene.root
    try:
        crs_of(scene.crs, report.url)
    except ElegantvizError as e:
        add(Problem(report.url, "", problem_text(e, report.url)))
    parts, groups = [(IMAGE, "", root, scene.complete)], {}
    for kind in (LABELS, MAPS):
        names = part_names(root, kind)
        try:
            groups[kind] = node(root, kind, report.url, kind, array=False) if names else None
        except ElegantvizError as e:
            add(Problem(report.url, "", problem_text(e, report.url)))
        for name in names:
            try:
                complete = part_state(root, kind, name, report.url)
            except ElegantvizError as e:
                add(Problem(report.url, "", problem_text(e, report.url)))
                continue
            if complete is not None:
                parts.append((f"{kind}/{name}", f"{kind}/{name}", root[f"{kind}/{name}"], complete))
    report.parts = len(parts)
    listing = _attr(groups[LABELS], "ome").get("labels", []) if groups.get(LABELS) is not None else []
    for name in listing if isinstance(listing, list) else [listing]:
        if name not in part_names(root, LABELS):
            add(Problem(report.url, f"{LABELS}/{METADATA_FILE}", f"lists labels {name!r}, which is not there"))
    job = scene.meta.get("job") or {}
    shape = job.get("shape")
    sized = isinstance(shape, list) and len(shape) == 3 and all(isinstance(v, int) for v in shape)
    image_truth: dict | None = {"shape": shape} if sized else None  # until the image's own
    unrecorded, tasks = [], []
    for part, prefix, group, complete in parts:
        if not complete:
            add(Problem(report.url, part, "is incomplete (its writer was interrupted; run the same command again to "
                                          "resume, or write that part again)"))
            continue
        found = _part_levels(report, part, prefix, group)
        if found is None:
            continue
        levels, n_levels = found
        if not _attr(group, KEY).get(MANIFEST):
            unrecorded.append(part)
        first = levels[0] if levels and levels[0].k == 0 else None
        if part == IMAGE and first:
            image_truth = first.truth
            _check_image(report, first, job)
        elif part.startswith(LABELS) and first and image_truth is not None:
            _check_labels(report, first, image_truth)
        elif part.startswith(MAPS) and first and image_truth is not None:
            wrong = map_problem(first.truth["shape"], image_truth["shape"], _attr(group, KEY).get("stride", 1))
            if wrong:
                add(Problem(report.url, first.path, wrong))
        _check_pyramid(report, levels, n_levels)
        for level in levels:
            tasks += _check_chunks(report, level)
    if unrecorded:
        add(Problem(report.url, "", f"{', '.join(unrecorded)}: no chunk manifest (written before elegantviz recorded "
                                    "one), so a missing chunk cannot be told from an empty one", note=True))

    def decode(task) -> Problem | None:
        array, index, key = task
        try:
            array[chunk_region(index, array.shape, array.chunks)]
        except Exception as e:
            return Problem(report.url, key, f"is corrupt ({short_error(e)})")
        return None

    found = run_threaded(tasks, decode, f"check {report.url}", progress)
    report.chunks = len(tasks)
    report.problems += [p for p in found if p is not None]
    return report


def _opened_for_check(url: str) -> Scene | None:
    """The store with its root attributes checked but not its levels; None when even those fail."""
    try:
        root = zarr.open_group(url, mode="r")
        validate_root(root, url, levels=False)
    except (ElegantvizError, FileNotFoundError, *BROKEN):
        return None
    return Scene(root, url)


def _attr(group: zarr.Group, key: str) -> dict:
    value = group.attrs.get(key)
    return value if isinstance(value, dict) else {}


def _part_levels(report: CheckReport, part: str, prefix: str, group: zarr.Group) -> tuple[list[_Level], int] | None:
    add = report.problems.append
    try:
        paths = dataset_paths(group.attrs, report.url, part)
    except ElegantvizError as e:
        add(Problem(report.url, "", problem_text(e, report.url)))
        return None
    manifest = _attr(group, KEY).get(MANIFEST)
    if manifest is not None and not (isinstance(manifest, dict) and manifest):
        add(Problem(report.url, part, f"has a manifest without records ({manifest!r:.40})"))
    manifest = manifest if isinstance(manifest, dict) else {}
    levels = []
    for k, path in enumerate(paths):
        where = f"{prefix}/{path}" if prefix else path
        try:
            array = group[path]
        except KeyError:
            add(Problem(report.url, where, f"is missing ({part} lists it as a level)"))
            continue
        except Exception as e:
            add(Problem(report.url, f"{where}/{METADATA_FILE}", f"cannot be read ({short_error(e)})"))
            continue
        if not isinstance(array, zarr.Array):
            add(Problem(report.url, where, "is a group, not an array"))
            continue
        record = manifest.get(path)
        said = {"shape": list(array.shape), "dtype": str(array.dtype), "chunks": list(array.chunks)}
        if record is not None and record_problem(record):
            add(Problem(report.url, where, f"has a manifest record that {record_problem(record)}"))
            record = None
        elif manifest and record is None:
            add(Problem(report.url, where, f"is not in the manifest of {part}"))
        elif record is not None:
            wrong = metadata_mismatch(array, record)
            if wrong:
                add(Problem(report.url, f"{where}/{METADATA_FILE}", f"disagrees with the manifest: it says {wrong}"))
        truth = {k: record[k] for k in said} if record is not None else said
        levels.append(_Level(part, k, where, array, record, truth))
    for extra in sorted(set(manifest) - set(paths)):
        add(Problem(report.url, part, f"has a manifest record of level {extra!r}, which its OME multiscales do "
                                      "not list"))
    return levels, len(paths)


def _check_image(report: CheckReport, level: _Level, job: dict) -> None:
    for key in ("shape", "dtype"):
        if key in job and job[key] != level.truth[key]:
            report.problems.append(Problem(report.url, level.path, f"has {key} {level.truth[key]}, but the scene "
                                                                   f"was converted with {job[key]}"))


def _check_labels(report: CheckReport, level: _Level, image: dict) -> None:
    if level.truth["shape"] != list(image["shape"][-2:]):
        report.problems.append(Problem(report.url, level.path, f"has shape {level.truth['shape']}, but the image is "
                                                               f"{list(image['shape'][-2:])}"))
    if level.truth["dtype"] != "uint8":
        report.problems.append(Problem(report.url, level.path, f"has dtype {level.truth['dtype']}; labels are uint8"))


def _check_pyramid(report: CheckReport, levels: list[_Level], n_levels: int) -> None:
    """Level k halves level k - 1 (rounding up) until one chunk holds it, as written."""
    if not levels or levels[0].k != 0:
        return
    base = levels[0].truth
    lead, (h, w), tile = base["shape"][:-2], base["shape"][-2:], base["chunks"][-1]
    expect = [lead + list(s) for s in level_shapes(h, w, tile)]
    if n_levels != len(expect):
        report.problems.append(Problem(report.url, levels[0].part, f"has {n_levels} levels; a {h} x {w} pyramid in "
                                                                   f"{tile} px chunks has {len(expect)}"))
    for level in levels[1:]:
        if level.k < len(expect) and level.truth["shape"] != expect[level.k]:
            report.problems.append(Problem(report.url, level.path, f"has shape {level.truth['shape']}; level "
                                                                   f"{level.k} of {base['shape']} is {expect[level.k]}"))
        if level.truth["dtype"] != base["dtype"]:
            report.problems.append(Problem(report.url, level.path, f"has dtype {level.truth['dtype']}, level 0 "
                                                                   f"{base['dtype']}"))


def _check_chunks(report: CheckReport, level: _Level) -> list:
    """Missing, stray and out-of-grid chunk files of one array; the chunks to decode."""
    add = report.problems.append
    array, truth = level.array, level.truth
    grid = grid_of(truth["shape"], truth["chunks"])
    present = present_chunks(level.record) if level.record is not None else None
    prefix = array_prefix(array)
    try:
        keys = listed_keys(array)
    except Exception as e:
        add(Problem(report.url, level.path, f"cannot be listed ({short_error(e)})"))
        return []
    sound = level.record is None or metadata_mismatch(array, level.record) is None
    seen = np.zeros(grid, bool)
    tasks = []
    for key in keys:
        index = chunk_index(array, key)
        if index is None:
            add(Problem(report.url, prefix + key, f"is not a chunk of {level.path} (readers ignore it)", note=True))
        elif len(index) != len(grid) or any(i >= g for i, g in zip(index, grid)):
            add(Problem(report.url, prefix + key, f"is beyond the chunk grid of {level.path} "
                                                  f"({' x '.join(map(str, grid))} chunks)"))
        else:
            seen[index] = True
            if present is not None and not present[index]:
                add(Problem(report.url, prefix + key, f"was not written with {level.part} (not in its manifest)"))
            elif sound:
                tasks.append((array, index, prefix + key))
    if present is not None:
        for index in zip(*np.nonzero(present & ~seen)):
            key = array.metadata.chunk_key_encoding.encode_chunk_key(tuple(int(i) for i in index))
            add(Problem(report.url, prefix + key, "is missing"))
    return tasks
