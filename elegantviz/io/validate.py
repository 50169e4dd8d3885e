"""A scene store's metadata checked before anything is believed.

``zarr.json`` files and the ``elegantviz`` attributes are text anyone can edit, and a reader
that takes them as they are shows an edited shape as fact, reads an edited fill value where a
chunk was never written, or ends in zarr's or numpy's traceback. Here every entry a reader uses
is checked by type and range (bands, class tables, CRS, transform, nodata, the complete flags,
the OME datasets, strides, manifests), every level's ``zarr.json`` is opened under one error that
names it and compared with the manifest written with the part (:mod:`elegantviz.io.manifest`),
and the pyramid must halve as it was written. Only metadata is read: a store on S3 costs one
request per ``zarr.json`` and one listing per ``labels/`` and ``maps/``, never a chunk.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import zarr
from zarr.core.sync import sync

from elegantviz.classes import ClassTable
from elegantviz.errors import ElegantvizError, InputError, SceneStoreError
from elegantviz.io.manifest import (MANIFEST, METADATA_FILE, checked_dask, damaged, metadata_mismatch, record_problem,
                                    short_error)
from elegantviz.io.pyramid import level_shapes
from elegantviz.io.schema import KEY, LABELS, MAPS

# what zarr raises on a zarr.json it cannot use (bad JSON, wrong types, a fill value out of range, ...)
BROKEN = (ValueError, TypeError, LookupError, AttributeError, NotImplementedError, ArithmeticError)


def broken(url: str, where: str, problem: str) -> SceneStoreError:
    return SceneStoreError(f"{url}: {where} {problem} (the store is damaged; `elegantviz check {url}` lists every "
                           "problem)")


def node(group: zarr.Group, path: str, url: str, where: str, array: bool) -> Any:
    """``group[path]`` as an array (or a group), or one line naming the ``zarr.json`` zarr cannot use."""
    try:
        with warnings.catch_warnings():  # a value its dtype cannot hold (a fill value of 1e20 in float16)
            warnings.simplefilter("error", RuntimeWarning)  # would be cast to inf with only a warning
            found = group[path]
    except KeyError:
        raise broken(url, where, f"is missing (no {where}/{METADATA_FILE})") from None
    except (*BROKEN, RuntimeWarning) as e:
        raise broken(url, f"{where}/{METADATA_FILE}", f"cannot be read ({short_error(e)})") from None
    if isinstance(found, zarr.Array) != array:
        raise broken(url, where, f"is {'a group' if array else 'an array'}, not {'an array' if array else 'a group'}")
    return found


def listed(group: zarr.Group, prefix: str) -> list[str]:
    """The names one level below ``prefix`` (relative to the group), as the store lists them."""
    base = "/".join(p for p in (group.store_path.path.strip("/"), prefix) if p)

    async def collect() -> list[str]:
        return [k async for k in group.store_path.store.list_dir(base)]

    try:
        return sorted(k.rstrip("/") for k in sync(collect()))
    except (FileNotFoundError, NotADirectoryError):
        return []


# --- the root -----------------------------------------------------------------------------------
def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def meta_problem(meta: dict, shape: tuple[int, ...] | None, dtype: np.dtype | None, url: str) -> str | None:
    """What is wrong with the root's elegantviz attributes, or None; ``shape``/``dtype`` are level 0's
    (None when level 0 is itself damaged: then bands and nodata are checked by type alone)."""
    bands, crs, transform, nodata = meta.get("bands"), meta.get("crs"), meta.get("transform"), meta.get("nodata")
    if not isinstance(bands, list) or not all(isinstance(b, str) for b in bands):
        return f"has bands {bands!r:.80}, not a list of names"
    if shape is not None and len(bands) != shape[0]:
        return f"names {len(bands)} bands, the image has {shape[0]}"
    if not isinstance(meta.get("complete", False), bool):
        return f"has complete flag {meta.get('complete')!r:.40}, not true or false"
    if crs is not None and (not isinstance(crs, str) or not crs.strip()):
        return f"has CRS {crs!r:.80}, not a WKT string"
    if transform is not None:
        if not isinstance(transform, list) or len(transform) != 6 or not all(_number(v) for v in transform):
            return f"has transform {transform!r:.80}, not six finite numbers"
        a, b, _, d, e, _ = transform
        if a * e - b * d == 0:
            return f"has transform {transform}, which maps every pixel to one line"
    if nodata is not None and nodata_problem(nodata, dtype or np.dtype("float64")):
        return f"has nodata {nodata!r:.40}, {nodata_problem(nodata, dtype or np.dtype('float64'))}"
    for key in ("job", "source"):
        if meta.get(key) is not None and not isinstance(meta[key], dict if key == "job" else str):
            return f"has {key} {meta[key]!r:.60}"
    if meta.get("classes") is not None:
        table_of(meta["classes"], f"{url} class table")
    return None


def nodata_problem(v: Any, dtype: np.dtype) -> str | None:
    floating = np.issubdtype(dtype, np.floating)
    if v == "NaN" and floating:
        return None
    if not _number(v):
        return f"not a number a {dtype} image holds"
    if floating:
        return None if abs(v) <= float(np.finfo(dtype).max) else f"beyond {dtype}"
    info = np.iinfo(dtype)
    return None if float(v).is_integer() and info.min <= v <= info.max else f"not a {dtype} value"


def table_of(d: Any, origin: str) -> ClassTable:
    """A stored class table; a stored one has its own name (a file's may be named after the file)."""
    if isinstance(d, dict) and not isinstance(d.get("name"), str):
        raise SceneStoreError(f"{origin}: not a valid class table (its name is {d.get('name')!r})")
    return ClassTable.from_dict(d, origin=origin)


def dataset_paths(attrs: Any, url: str, where: str) -> list[str]:
    """The level paths of a group's OME multiscales: they must be "0", "1", ... in order."""
    try:
        datasets = attrs["ome"]["multiscales"][0]["datasets"]
        paths = [d["path"] for d in datasets]
    except (KeyError, IndexError, TypeError):
        raise broken(url, where, "has no readable OME multiscales metadata") from None
    if not paths or paths != [str(k) for k in range(len(paths))]:
        raise broken(url, where, f"lists levels {paths!r:.80} in its OME multiscales, not 0, 1, ...")
    return paths


def level_arrays(group: zarr.Group, prefix: str, url: str, meta: dict, complete: bool,
                 compare: int | None = None) -> list[zarr.Array]:
    """Every level of a part, the first ``compare`` (all by default) checked against their manifest
    records when the part is finished (the others are when read), and, without a manifest, as a
    pyramid: level k halves level k - 1 until one chunk holds it, in one dtype."""
    what = prefix or "image"
    paths = dataset_paths(group.attrs, url, what)
    arrays = [node(group, p, url, f"{prefix}/{p}" if prefix else p, array=True) for p in paths]
    manifest = meta.get(MANIFEST) if complete else None
    if manifest is not None:
        if not isinstance(manifest, dict) or sorted(manifest) != sorted(paths):
            keys = sorted(manifest) if isinstance(manifest, dict) else manifest
            raise broken(url, what, f"has a manifest of levels {keys!r:.60}, its OME multiscales {paths}")
        for k, (path, array) in enumerate(zip(paths, arrays)):
            problem = record_problem(manifest[path])
            where = f"{prefix}/{path}" if prefix else path
            if problem:
                raise broken(url, f"the manifest of {what}", f"level {path} {problem}")
            wrong = metadata_mismatch(array, manifest[path]) if compare is None or k < compare else None
            if wrong:
                label = f"{where}/{METADATA_FILE}" if prefix else f"image {where}/{METADATA_FILE}"
                raise damaged(url, label, f"disagrees with the manifest: it says {wrong}")
    elif complete:
        base = arrays[0]
        expect = level_shapes(base.shape[-2], base.shape[-1], base.chunks[-1])
        got = [tuple(a.shape[-2:]) for a in arrays]
        if got != expect or any(a.shape[:-2] != base.shape[:-2] or a.dtype != base.dtype for a in arrays):
            raise broken(url, what, f"has levels {[list(a.shape) for a in arrays]} of {[str(a.dtype) for a in arrays]}"
                                    f"; a {base.shape[-2]} x {base.shape[-1]} pyramid in {base.chunks[-1]} px chunks "
                                    f"has {[list(s) for s in expect]} of {base.dtype}")
    return arrays


def validate_root(root: zarr.Group, url: str, levels: bool = True) -> None:
    """Refuse a root whose elegantviz or OME attributes, or whose image levels, cannot be believed.
    ``levels=False`` (`elegantviz check`, which looks at each level itself) leaves the levels out."""
    meta = root.attrs.get(KEY)
    if not isinstance(meta, dict) or "bands" not in meta:
        raise SceneStoreError(f"{url}: not an elegantviz scene store (no '{KEY}' metadata); make one with "
                              "`elegantviz convert`")
    if not isinstance(root.attrs.get("ome"), dict):
        raise SceneStoreError(f"{url}: scene store has no image pyramid (missing 'ome' multiscales or level 0)")
    complete = meta.get("complete") is True
    if levels:
        first = level_arrays(root, "", url, meta, complete, compare=1)[0]  # what Scene.shape and .dtype say
        if first.ndim != 3:
            raise broken(url, "image 0", f"has shape {list(first.shape)}, not (bands, y, x)")
    else:
        try:
            first = node(root, "0", url, "0", array=True)
        except SceneStoreError:
            first = None
    problem = meta_problem(meta, None if first is None else first.shape, None if first is None else first.dtype, url)
    if problem:
        raise SceneStoreError(f"{url}: its {KEY} attributes are damaged: it {problem}")


def crs_of(wkt: str | None, url: str):
    """The store's CRS parsed (rasterio), None when it has none; one line when it does not parse."""
    if not wkt:
        return None
    import rasterio
    from rasterio.crs import CRS
    from rasterio.errors import CRSError

    try:
        with rasterio.Env():  # PROJ's own message goes to the log, not to stderr as a second line
            return CRS.from_user_input(wkt)
    except CRSError as e:
        raise SceneStoreError(f"{url}: its CRS does not parse ({short_error(e)})") from None


# --- labels and maps ----------------------------------------------------------------------------
def part_names(root: zarr.Group, kind: str) -> list[str]:
    """The names under ``kind/`` as the store lists them (zarr's own listing skips a part whose
    ``zarr.json`` is gone, which would make it vanish without a word)."""
    return [n for n in listed(root, kind) if n != METADATA_FILE]


def part_state(root: zarr.Group, kind: str, name: str, url: str) -> bool | None:
    """Whether ``kind/name`` is a finished part; None when the name is no part (a stray file)."""
    path = f"{kind}/{name}"
    try:
        part = root[path]
    except KeyError:
        if listed(root, path):  # a folder of a part without its zarr.json; a stray file is no part
            raise broken(url, path, f"has no {METADATA_FILE}") from None
        return None
    except BROKEN as e:
        raise broken(url, f"{path}/{METADATA_FILE}", f"cannot be read ({short_error(e)})") from None
    if not isinstance(part, zarr.Group):
        return None
    return part_meta_of(part, kind, name, url).get("complete", False)


def part_states(root: zarr.Group, kind: str, url: str) -> dict[str, bool]:
    """Every part under ``kind/`` and whether it is finished; a damaged one is named, not skipped."""
    states = {name: part_state(root, kind, name, url) for name in part_names(root, kind)}
    return {name: done for name, done in states.items() if done is not None}


def part_group(root: zarr.Group, kind: str, name: str, url: str) -> zarr.Group:
    path = f"{kind}/{name}"
    try:
        group = root[path]
    except KeyError:
        raise InputError(f"{url}: no {path}") from None
    except BROKEN as e:
        raise broken(url, f"{path}/{METADATA_FILE}", f"cannot be read ({short_error(e)})") from None
    if not isinstance(group, zarr.Group):
        raise broken(url, path, "is an array, not a part")
    return group


def part_meta(root: zarr.Group, kind: str, name: str, url: str) -> dict:
    """``kind/name``'s elegantviz attributes, checked (see :func:`part_meta_of`)."""
    return part_meta_of(part_group(root, kind, name, url), kind, name, url)


def part_meta_of(group: zarr.Group, kind: str, name: str, url: str) -> dict:
    """A part's elegantviz attributes ({} for a bare NGFF part), refused when a reader cannot use them."""
    path = f"{kind}/{name}"
    meta = group.attrs.get(KEY, {})
    if not isinstance(meta, dict):
        raise broken(url, path, f"has {KEY} attributes {meta!r:.60}, not a mapping")
    if not isinstance(meta.get("complete", False), bool):
        raise broken(url, path, f"has complete flag {meta['complete']!r:.40}, not true or false")
    if kind == LABELS and meta.get("classes") is not None:
        table_of(meta["classes"], f"{url} {path} class table")
    stride = meta.get("stride", 1)
    if kind == MAPS and (isinstance(stride, bool) or not isinstance(stride, int) or stride < 1):
        raise broken(url, path, f"has stride {stride!r:.40}, not a whole number >= 1")
    return dict(meta)


def part_levels(root: zarr.Group, kind: str, name: str, url: str, image: tuple[int, ...]) -> list:
    """The levels of a finished part as checked dask arrays; labels are (y, x) uint8 of the image's
    size, maps (y, x) or (c, y, x) at the image's size or at its stride."""
    path = f"{kind}/{name}"
    group = part_group(root, kind, name, url)
    meta = part_meta_of(group, kind, name, url)
    arrays = level_arrays(group, path, url, meta, complete=True)
    if kind == LABELS and (arrays[0].shape != tuple(image[-2:]) or arrays[0].dtype != np.uint8):
        raise broken(url, path, f"is {list(arrays[0].shape)} {arrays[0].dtype}; labels of the image are "
                                f"{list(image[-2:])} uint8")
    wrong = map_problem(list(arrays[0].shape), list(image), meta.get("stride", 1)) if kind == MAPS else None
    if wrong:
        raise broken(url, f"{path}/0", wrong)
    manifest = meta.get(MANIFEST) or {}
    return [checked_dask(a, url, manifest.get(str(k))) for k, a in enumerate(arrays)]


def map_problem(shape: list[int], image: list[int], stride: Any) -> str | None:
    """A map is (y, x) or (c, y, x) at the image's size, or at its stride (rounded either way)."""
    if not isinstance(stride, int) or isinstance(stride, bool) or stride < 1:
        return f"has stride {stride!r:.40}, not a whole number >= 1"
    fits = all(n in (size, size // stride, -(-size // stride)) for n, size in zip(shape[-2:], image[-2:]))
    if len(shape) in (2, 3) and fits:
        return None
    return f"has shape {shape}, which fits neither the image's {image[-2:]} nor its stride {stride}"


def read_level(root: zarr.Group, prefix: str, level: int, url: str, **kw: Any):
    """Level ``level`` of the image (``prefix`` "") or a part as a checked dask array (:func:`checked_dask`)."""
    group = node(root, prefix, url, prefix, array=False) if prefix else root
    where = f"{prefix}/{level}" if prefix else str(level)
    array = node(group, str(level), url, where, array=True)
    meta = group.attrs.get(KEY, {})
    manifest = meta.get(MANIFEST) if isinstance(meta, dict) else None
    record = manifest.get(str(level)) if isinstance(manifest, dict) else None
    if manifest is not None and record_problem(record):
        raise broken(url, f"the manifest of {prefix or 'image'}", f"level {level} {record_problem(record)}")
    return checked_dask(array, url, record, image=not prefix, **kw)


def problem_text(e: ElegantvizError, url: str) -> str:
    """An error's text without the store's name in front nor the advice to run `elegantviz check`
    (for check's own lines)."""
    advice = f"the store is damaged; `elegantviz check {url}` lists every problem)"
    text = str(e).removeprefix(f"{url}: ")
    return text.replace(f" ({advice}", "").replace(f"; {advice}", ")")
