"""OME-NGFF 0.5 metadata and pyramid writing for scene stores: the parts of the format that are
NGFF's own (multiscales, omero display windows, label groups) rather than elegantviz's."""

from __future__ import annotations

import math
import time
from typing import Any, Sequence

import dask.array as da
import numpy as np
import zarr
from zarr.codecs import Crc32cCodec, ZstdCodec

from elegantviz.classes import IGNORE_INDEX
from elegantviz.io.blocks import write_blockwise
from elegantviz.io.pyramid import downsample, level_shapes
from elegantviz.io.schema import IGNORE_NAME, KEY, NGFF_VERSION


def json_number(v: float | None) -> float | str | None:
    if v is None:
        return None
    v = float(v)
    return "NaN" if math.isnan(v) else (int(v) if v.is_integer() else v)


def from_json_number(v: Any) -> float | None:
    if v is None:
        return None
    return float("nan") if v == "NaN" else float(v)


def multiscales(name: str, axes: Sequence[str], n_levels: int, stride: int = 1) -> list[dict]:
    """NGFF multiscales in pixel units of the scene's level 0; each level's pixels are centred.

    ``stride`` is a map's own resolution against the image's (the keys are at 1/8), so generic
    NGFF viewers put a coarse map where it belongs."""
    axis_type = {"c": "channel", "y": "space", "x": "space"}
    datasets = []
    for k in range(n_levels):
        f = stride * 2**k
        scale = [1.0 if a == "c" else float(f) for a in axes]
        shift = [0.0 if a == "c" else (f - 1) / 2 for a in axes]
        transforms: list[dict] = [{"type": "scale", "scale": scale}]
        if f > 1:
            transforms.append({"type": "translation", "translation": shift})
        datasets.append({"path": str(k), "coordinateTransformations": transforms})
    return [
        {
            "name": name,
            "axes": [{"name": a, "type": axis_type[a]} for a in axes],
            "datasets": datasets,
            "type": "mean" if "c" in axes else "mode",
        }
    ]


def image_label(classes) -> dict:
    """NGFF ``image-label`` metadata: a colour and a class name per value; ignore is transparent.

    ``colors`` and ``properties`` describe the same label values (ome-zarr-models refuses them
    otherwise), so the ignore value has a property too: its name, ``ignore``.
    """
    source = {"image": "../../"}  # labels/<name> -> the scene's root image
    if classes is None:
        return {"source": source}
    colors = [{"label-value": c.id, "rgba": [*c.color, 255]} for c in classes.classes]
    properties = [{"label-value": c.id, "class": c.name} for c in classes.classes]
    ignore = int(classes.ignore_index)
    if ignore not in {c.id for c in classes.classes}:
        colors.append({"label-value": ignore, "rgba": [0, 0, 0, 0]})
        properties.append({"label-value": ignore, "class": IGNORE_NAME})
    return {"colors": colors, "properties": properties, "source": source}


def list_label(labels: zarr.Group, name: str, listed: bool) -> None:
    """Add ``name`` to (or take it off) the NGFF ``labels`` list of the ``labels`` group.

    The list names finished label images only: a writer takes a name off before it (re)writes
    that label and puts it back when the label is complete, so an NGFF reader (and validator)
    never follows the list into a half-written or deleted group; the group always has its list.
    """
    names = set(labels.attrs.get("ome", {}).get("labels", []))
    names = names | {name} if listed else names - {name}
    labels.attrs["ome"] = {"version": NGFF_VERSION, "labels": sorted(names)}


def chunk_compressors() -> tuple:
    """zstd as zarr's default, then a CRC-32C of the compressed chunk: a flipped bit on disk is an
    error naming the chunk, not other pixels (zstd alone decodes many such flips silently)."""
    return (ZstdCodec(level=0, checksum=False), Crc32cCodec())


def write_pyramid(
    root: zarr.Group,
    prefix: str,
    data: da.Array,
    kind: str,
    tile: int,
    fill: Any,
    nodata: float | None,
    desc: str,
    progress: bool,
) -> int:
    """Create (or reuse, when resuming) arrays ``prefix/0..n`` and write every level."""
    shapes = level_shapes(data.shape[-2], data.shape[-1], tile)
    lead = tuple(data.shape[:-2])
    chunks = (1,) * len(lead) + (tile, tile)
    dims = ("c", "y", "x")[-data.ndim :]
    for k, (h, w) in enumerate(shapes):
        path = f"{prefix}/{k}" if prefix else str(k)
        shape = lead + (h, w)
        try:
            existing = root[path]
            ok = tuple(existing.shape) == shape and existing.dtype == data.dtype
        except KeyError:
            ok = False
        if not ok:
            root.create_array(path, shape=shape, dtype=data.dtype, chunks=chunks, fill_value=fill,
                              compressors=chunk_compressors(), dimension_names=dims, overwrite=True)
    for k in range(len(shapes)):
        path = f"{prefix}/{k}" if prefix else str(k)
        if k == 0:
            level = data
        else:
            prev = da.from_zarr(root[f"{prefix}/{k - 1}" if prefix else str(k - 1)])
            prev = prev.rechunk(lead + (2 * tile, 2 * tile))
            level = downsample(prev, kind, nodata=nodata, ignore=IGNORE_INDEX)
        if root[path].attrs.get(KEY, {}).get("complete"):
            continue
        started = time.perf_counter()
        write_blockwise(level, root, path, desc=f"{desc} level {k}", progress=progress)
        root[path].attrs[KEY] = {"complete": True, "write_seconds": round(time.perf_counter() - started, 3)}
    return len(shapes)



def omero_channels(top: zarr.Array, bands: Sequence[str], nodata: float | None) -> dict:
    """Display windows (2nd-98th percentile of the coarsest level) so viewers open with contrast."""
    data = np.asarray(top[...]).astype(np.float64)
    colors = ["FF0000", "00FF00", "0000FF", "FFFFFF"]
    channels = []
    for i, name in enumerate(bands):
        band = data[i]
        ok = ~np.isnan(band)
        if nodata is not None and not math.isnan(nodata):
            ok &= band != nodata
        vals = band[ok]
        lo, hi = (np.percentile(vals, [2, 98]) if vals.size else (0.0, 1.0))
        mn, mx = (float(vals.min()), float(vals.max())) if vals.size else (0.0, 1.0)
        channels.append(
            {
                "label": name,
                "color": colors[i] if i < 3 else "FFFFFF",
                "active": i < 3,
                "window": {"start": float(lo), "end": float(max(hi, lo + 1e-6)), "min": mn, "max": mx},
            }
        )
    return {"channels": channels, "rdefs": {"model": "color"}}
