"""Scene stores: one OME-NGFF 0.5 zarr v3 group per scene, read lazily with dask.

Layout (see ARCHITECTURE.md): image pyramid ``0/ 1/ ...`` (c, y, x); ``labels/<name>/`` NGFF label
groups (y, x, uint8) with colours and class names; ``maps/<name>/`` float pyramids of the
model's evidence. The root's ``elegantviz`` attribute holds bands, class table, CRS, transform
and nodata. Every part carries ``elegantviz.complete``, set last, so a reader never takes a
half-written part for a finished one; ``_progress/`` records finished blocks for resuming.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Sequence

import dask.array as da
import numpy as np
import zarr

from elegantviz import __version__
from elegantviz.classes import IGNORE_INDEX, ClassTable
from elegantviz.errors import IncompleteSceneError, InputError, SceneStoreError
from elegantviz.io.bands import NATURAL, choose_bands, stored_windows
from elegantviz.io.blocks import drop_ledgers
from elegantviz.io.manifest import MANIFEST, part_manifest, short_error
from elegantviz.io.ngff import (from_json_number, image_label, json_number, list_label, multiscales, omero_channels,
                                write_pyramid)
from elegantviz.io.schema import CACHE_GROUP, KEY, LABELS, MAPS, NGFF_VERSION, check_part_name, part_path
from elegantviz.io.swap import replace_group
from elegantviz.io.validate import BROKEN, crs_of, part_levels, part_state, part_states, read_level, validate_root
from elegantviz.io.validate import part_meta as checked_part_meta

DEFAULT_TILE = 512
SAVED = "_saved"  # below the cache group: labels written beside the ones they replace


def _open_group(url: str | Path, mode: str) -> zarr.Group:
    try:
        return zarr.open_group(str(url), mode=mode)  # type: ignore[arg-type]
    except FileNotFoundError:
        raise InputError(f"{url}: no such scene store") from None
    except (zarr.errors.GroupNotFoundError, zarr.errors.ContainsArrayError, ValueError, KeyError) as e:  # type: ignore[attr-defined]
        raise SceneStoreError(f"{url}: not a zarr group ({type(e).__name__}: {e})") from None


def _is_local_missing(url: str | Path) -> bool:
    return "://" not in str(url) and not Path(str(url)).exists()


def _as_dask(data: Any, ndim: int, what: str) -> da.Array:
    arr = data if isinstance(data, da.Array) else da.asarray(np.asarray(data))
    if arr.ndim != ndim:
        raise InputError(f"{what}: expected {ndim} dimensions, got shape {arr.shape}")
    if 0 in arr.shape:
        raise InputError(f"{what}: zero-size array {arr.shape}")
    return arr


# --- the scene --------------------------------------------------------------------------------
@dataclass
class Scene:
    """A scene store opened for reading (and adding labels and maps)."""

    root: zarr.Group
    url: str

    # metadata ---------------------------------------------------------------------------------
    @property
    def meta(self) -> dict:
        return dict(self.root.attrs[KEY])

    @property
    def complete(self) -> bool:
        return self.meta.get("complete") is True

    @property
    def bands(self) -> list[str]:
        return list(self.meta["bands"])

    @cached_property
    def crs(self) -> str | None:
        crs = self.meta.get("crs")
        crs_of(crs, self.url)  # a CRS that does not parse is one line here, not an error later
        return crs

    @property
    def transform(self) -> list[float] | None:
        return self.meta.get("transform")

    @property
    def nodata(self) -> float | None:
        return from_json_number(self.meta.get("nodata"))

    @property
    def classes(self) -> ClassTable | None:
        d = self.meta.get("classes")
        return ClassTable.from_dict(d, origin=f"{self.url} class table") if d else None

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.root["0"].shape)  # type: ignore[return-value]

    @property
    def dtype(self) -> np.dtype:
        return self.root["0"].dtype

    @property
    def num_levels(self) -> int:
        return len(self.root.attrs["ome"]["multiscales"][0]["datasets"])

    # image ------------------------------------------------------------------------------------
    @cached_property
    def levels(self) -> list[da.Array]:
        return [self._read("", k) for k in range(self.num_levels)]

    def _read(self, prefix: str, level: int, **kw: Any) -> da.Array:  # checked against the part's manifest
        return read_level(self.root, prefix, level, self.url, **kw)

    def image(self, level: int = 0) -> da.Array:
        return self.levels[level]

    def tile_levels(self) -> list[da.Array]:
        """The image pyramid with every band of a tile in one dask chunk: a viewer's screenful
        then costs one read per tile instead of one per band and tile."""
        arrays = [self.root[str(k)] for k in range(self.num_levels)]
        return [self._read("", k, chunks=(a.shape[0], *a.chunks[-2:]), inline_array=True) for k, a in enumerate(arrays)]

    def band_indices(self, composite: str = NATURAL) -> list[int]:
        """Bands to show: [r, g, b] (natural colour or NIR false colour) or [k] for grey."""
        return choose_bands(self.bands, composite)

    def display_windows(self) -> list[tuple[float, float]]:
        """(start, end) contrast window of every band, as conversion stored it."""
        return stored_windows(self.root.attrs.get("ome", {}), len(self.bands), self.dtype)

    # labels and maps --------------------------------------------------------------------------
    def _parts(self, kind: str, complete: bool = True) -> list[str]:  # as listed: a part without zarr.json is named
        return [name for name, done in part_states(self.root, kind, self.url).items() if done == complete]

    @property
    def labels(self) -> list[str]:
        return self._parts("labels")

    @property
    def maps(self) -> list[str]:
        return self._parts("maps")

    def incomplete_parts(self) -> list[str]:
        parts = [] if self.complete else ["image"]
        parts += [f"labels/{n}" for n in self._parts("labels", complete=False)]
        parts += [f"maps/{n}" for n in self._parts("maps", complete=False)]
        return parts

    def _levels_of(self, kind: str, name: str) -> list[da.Array]:
        if part_state(self.root, kind, name, self.url) is not True:  # one part asked, one part looked at
            have = self._parts(kind)
            raise InputError(f"{self.url}: no complete {kind}/{name} (has: {', '.join(have) or 'none'})")
        return part_levels(self.root, kind, name, self.url, self.shape)  # checked against the manifest and image

    def label_levels(self, name: str) -> list[da.Array]:
        return self._levels_of("labels", name)

    def label(self, name: str, level: int = 0) -> da.Array:
        return self.label_levels(name)[level]

    def label_classes(self, name: str) -> ClassTable | None:
        d = self.part_meta(LABELS, name).get("classes")
        return ClassTable.from_dict(d) if d else None

    def map_levels(self, name: str) -> list[da.Array]:
        return self._levels_of("maps", name)

    def map(self, name: str, level: int = 0) -> da.Array:
        return self.map_levels(name)[level]

    def map_attrs(self, name: str) -> dict:
        return self.part_meta(MAPS, name)

    def part_meta(self, kind: str, name: str) -> dict:
        """A part's elegantviz attributes (classes, stride, pairs, ...); {} for a bare NGFF part."""
        return checked_part_meta(self.root, kind, name, self.url)

    def update_part_meta(self, kind: str, name: str, **values: Any) -> None:
        """Add entries to a finished part's elegantviz attributes (e.g. evaluation's regions)."""
        meta = self.part_meta(kind, name)
        meta.update(values)
        self.root[part_path(kind, name)].attrs[KEY] = meta

    # scratch space ----------------------------------------------------------------------------
    def scratch(self, name: str, create: bool = False) -> zarr.Group | None:
        """``_predict/<name>``: a job's intermediate arrays, kept until it finishes so that an
        interrupted run resumes; None when absent and not ``create``."""
        path = f"{CACHE_GROUP}/{name}"
        if path in self.root:
            return self.root[path]
        return self.root.require_group(path) if create else None

    def drop_scratch(self, name: str) -> None:
        path = f"{CACHE_GROUP}/{name}"
        if path in self.root:
            del self.root[path]
        drop_ledgers(self.root, path)  # parts staged there were being written block by block
        if CACHE_GROUP in self.root and not list(self.root[CACHE_GROUP].keys()):
            del self.root[CACHE_GROUP]

    # writing ----------------------------------------------------------------------------------
    def _start_part(self, kind: str, name: str, overwrite: bool, under: str) -> zarr.Group:
        check_part_name(kind, name, self.url)
        parent = self.root.require_group(f"{under}{kind}")
        done = name in parent and parent[name].attrs.get(KEY, {}).get("complete") is True
        if done and not overwrite:
            raise InputError(f"{self.url}: {kind}/{name} exists (pass overwrite=True to replace it)")
        if kind == LABELS and not under:
            list_label(parent, name, listed=False)  # unlisted until finished (NGFF readers follow the list)
        if done:
            del parent[name]
            drop_ledgers(self.root, f"{under}{kind}/{name}")
        elif name in parent:
            return parent[name]  # resume an interrupted write
        return parent.create_group(name)

    def remove(self, kind: str, name: str, under: str = "") -> None:
        """Delete ``labels/<name>`` or ``maps/<name>`` (below ``under``), finished or not, and its ledger."""
        check_part_name(kind, name, self.url)
        if f"{under}{kind}" in self.root and name in self.root[f"{under}{kind}"]:
            if kind == LABELS and not under:
                list_label(self.root[LABELS], name, listed=False)
            del self.root[f"{under}{kind}"][name]
        drop_ledgers(self.root, f"{under}{kind}/{name}")

    def staged_meta(self, kind: str, name: str, under: str) -> dict:
        """The elegantviz attributes of a part written below ``under`` ("" for the part itself), {} when
        there is none."""
        path = f"{under}{part_path(kind, name)}"
        return dict(self.root[path].attrs.get(KEY, {})) if path in self.root else {}

    def swap_in(self, kind: str, name: str, under: str) -> None:
        """Put the finished part written below ``under`` (e.g. by ``add_labels(..., under=...)``) in
        place of ``kind/name`` at once: a reader sees the old part or the new one (io/swap.py)."""
        if self.staged_meta(kind, name, under).get("complete") is not True:
            raise InputError(f"{self.url}: no finished {under}{kind}/{name} to swap in")
        self.root.require_group(kind)
        replace_group(self.root, f"{under}{kind}/{name}", part_path(kind, name))
        if kind == LABELS:
            list_label(self.root[LABELS], name, listed=True)

    def replace_labels(self, name: str, data: Any, classes: ClassTable | None = None, progress: bool = True) -> None:
        """``labels/<name>``, new or in place of a finished one: then written beside it and swapped
        in, so a reader holding the old labels (a napari layer) sees old or new chunks, never none."""
        if name not in self.labels:
            return self.add_labels(name, data, classes=classes, overwrite=True, progress=progress)
        under = f"{CACHE_GROUP}/{SAVED}/"
        self.drop_scratch(SAVED)  # an interrupted save's blocks belong to other data
        self.add_labels(name, data, classes=classes, overwrite=True, progress=progress, under=under)
        self.swap_in(LABELS, name, under)
        self.drop_scratch(SAVED)

    def add_labels(self, name: str, data: Any, classes: ClassTable | None = None, overwrite: bool = False,
                   progress: bool = True, tile: int | None = None, attrs: dict | None = None, under: str = "") -> None:
        """A (y, x) uint8 label image with a mode pyramid as ``labels/<name>``; ``attrs`` are set with
        ``complete``. ``under`` (a group path ending in /) writes it there, to be swapped in later."""
        arr = _as_dask(data, 2, f"{self.url} labels/{name}")
        if arr.shape != self.shape[1:]:
            raise InputError(f"{self.url}: labels/{name} has shape {arr.shape}, the image is {self.shape[1:]}")
        if arr.dtype != np.uint8:
            raise InputError(f"{self.url}: labels/{name} must be uint8 class ids, got {arr.dtype}")
        classes = classes or self.classes
        group = self._start_part("labels", name, overwrite, under)
        path = f"{under}labels/{name}"
        n = write_pyramid(self.root, path, arr, "mode", tile or self.tile, IGNORE_INDEX, None, f"labels/{name}", progress)
        ome = {"version": NGFF_VERSION, "multiscales": multiscales(name, ("y", "x"), n), "image-label": image_label(classes)}
        meta = {"complete": True, "classes": classes.to_dict() if classes else None, **(attrs or {}),
                MANIFEST: part_manifest(self.root, path, n)}
        group.attrs.update({"ome": ome, KEY: meta})
        if not under:
            list_label(self.root[LABELS], name, listed=True)

    def add_map(self, name: str, data: Any, dtype: str = "float16", overwrite: bool = False, progress: bool = True,
                attrs: dict | None = None, tile: int | None = None, under: str = "") -> None:
        """Write a (y, x) or (c, y, x) float map with a mean-pooled pyramid as ``maps/<name>`` (or below
        ``under``, as add_labels).

        A map may be at a coarser resolution than the image (the keys are at feature
        resolution); ``attrs['stride']`` records the factor.
        """
        arr = data if isinstance(data, da.Array) else da.asarray(np.asarray(data))
        if arr.ndim not in (2, 3) or 0 in arr.shape:
            raise InputError(f"{self.url}: maps/{name} must be (y, x) or (c, y, x), got {arr.shape}")
        arr = arr.astype(dtype)
        group = self._start_part("maps", name, overwrite, under)
        path = f"{under}maps/{name}"
        n = write_pyramid(self.root, path, arr, "mean", tile or self.tile, np.nan, None, f"maps/{name}", progress)
        axes = ("c", "y", "x")[-arr.ndim :]
        stride = int((attrs or {}).get("stride", 1)) if arr.shape[-2:] != self.shape[1:] else 1  # margin: upsampled
        meta = {"complete": True, **(attrs or {}), MANIFEST: part_manifest(self.root, path, n)}
        group.attrs.update({"ome": {"version": NGFF_VERSION, "multiscales": multiscales(name, axes, n, stride)}, KEY: meta})

    def finalize(self) -> None:
        """Mark the scene finished: the last write of a conversion."""
        self.root.attrs[KEY] = {**self.meta, MANIFEST: part_manifest(self.root, "", self.num_levels), "complete": True}

    @property
    def tile(self) -> int:
        """Chunk side of the image (and default of added parts), in pixels."""
        return int(self.root["0"].chunks[-1])

    def __repr__(self) -> str:
        return f"Scene({self.url!r}, shape={self.shape}, dtype={self.dtype}, labels={self.labels}, maps={self.maps})"


# --- public functions -------------------------------------------------------------------------
def open_scene(url: str | Path, mode: str = "r", allow_incomplete: bool = False) -> Scene:
    """Open a scene store; refuse stores that are not scene stores or were never finished."""
    if _is_local_missing(url):
        raise InputError(f"{url}: no such scene store")
    try:
        root = _open_group(url, mode="r+" if mode in ("a", "r+") else "r")
    except BROKEN as e:  # what _open_group leaves to zarr: a zarr.json of the wrong types
        raise SceneStoreError(f"{url}: zarr.json cannot be read ({short_error(e)})") from None
    validate_root(root, str(url))  # attributes, OME levels, each level's zarr.json against the manifest
    scene = Scene(root, str(url))
    if not scene.complete and not allow_incomplete:
        raise IncompleteSceneError(
            f"{url}: incomplete scene store (its writer was interrupted); run the same command again to resume"
        )
    return scene


def fingerprint(**job: Any) -> dict:
    """What a resumed write must match: a different job into the same store is refused."""
    return {k: v for k, v in job.items() if v is not None}


def create_scene(
    url: str | Path,
    image: Any,
    bands: Sequence[str] | None = None,
    classes: ClassTable | None = None,
    crs: str | None = None,
    transform: Sequence[float] | None = None,
    nodata: float | None = None,
    source: str | None = None,
    tile: int = DEFAULT_TILE,
    overwrite: bool = False,
    progress: bool = True,
    job: dict | None = None,
    finalize: bool = True,
) -> Scene:
    """Write a (c, y, x) image (numpy or lazy dask) as a new scene store with its pyramid.

    An unfinished store with the same ``job`` is resumed; a finished one is refused unless
    ``overwrite``. With ``finalize=False`` the caller adds more parts (e.g. ``labels/gt``)
    and calls ``Scene.finalize()`` last, so an interrupted conversion never looks finished.
    """
    arr = _as_dask(image, 3, f"{url} image")
    if tile < 16 or tile % 2:
        raise InputError(f"tile size must be an even number >= 16, got {tile}")
    bands = list(bands) if bands else [f"band {i + 1}" for i in range(arr.shape[0])]
    if len(bands) != arr.shape[0]:
        raise InputError(f"{url}: {len(bands)} band names for {arr.shape[0]} bands")
    job = fingerprint(shape=list(arr.shape), dtype=str(arr.dtype), tile=tile, **(job or {}))
    root = None
    if not _is_local_missing(url):
        try:
            root = zarr.open_group(str(url), mode="r+")
        except Exception:
            root = None
    if root is not None and len(list(root.keys())) + len(root.attrs) > 0:
        meta = root.attrs.get(KEY)
        if overwrite:
            root = None
        elif not isinstance(meta, dict):
            raise InputError(f"{url}: exists and is not a scene store; pass --overwrite to replace it")
        elif meta.get("complete") is True:
            raise InputError(f"{url}: exists (a finished scene store); pass --overwrite to replace it")
        elif meta.get("job") != job:
            raise InputError(
                f"{url}: holds an unfinished conversion of a different job ({meta.get('job')}); "
                "pass --overwrite to start again"
            )
    if root is None:
        root = zarr.open_group(str(url), mode="w")
        root.attrs.update(
            {
                "ome": {"version": NGFF_VERSION, "multiscales": multiscales("image", ("c", "y", "x"), 1)},
                KEY: {
                    "format": 1,
                    "complete": False,
                    "job": job,
                    "bands": bands,
                    "classes": classes.to_dict() if classes else None,
                    "palette": classes.palette()[: classes.num_classes].tolist() if classes else None,
                    "crs": crs,
                    "transform": list(transform) if transform is not None else None,
                    "nodata": json_number(nodata),
                    "source": source,
                    "created_by": f"elegantviz {__version__}",
                },
            }
        )
    fill = nodata if nodata is not None else 0
    n = write_pyramid(root, "", arr, "mean", tile, fill, nodata, "image", progress)
    ome = {
        "version": NGFF_VERSION,
        "multiscales": multiscales("image", ("c", "y", "x"), n),
        "omero": omero_channels(root[str(n - 1)], bands, nodata),
    }
    root.attrs["ome"] = ome
    scene = Scene(root, str(url))
    if finalize:
        scene.finalize()
    return scene
