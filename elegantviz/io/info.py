"""What is in a scene store: the facts `elegantviz info` prints, as a plain dict."""

from __future__ import annotations

import math

import numpy as np

from elegantviz.io.blocks import map_blocks_collect
from elegantviz.io.store import Scene
from elegantviz.io.validate import crs_of


def crs_name(wkt: str | None, url: str = "scene store") -> str:
    """'EPSG:32614 (WGS 84 / UTM zone 14N)'; a CRS that does not parse is one line naming ``url``."""
    crs = crs_of(wkt, url)
    if crs is None:
        return "none (not georeferenced)"
    epsg = crs.to_epsg()
    name = wkt.split('"')[1] if '"' in wkt else "custom"
    return f"EPSG:{epsg} ({name})" if epsg else name


def class_histogram(scene: Scene, name: str, progress: bool = True) -> dict[str, int]:
    """Pixel count per class of labels/<name> at full resolution, block by block."""
    arr = scene.label(name)
    counts = map_blocks_collect(arr, lambda b: np.bincount(b.ravel(), minlength=256), f"histogram {name}", progress)
    total = np.sum(counts, axis=0)
    table = scene.label_classes(name)
    names = {c.id: c.name for c in table.classes} if table else {}
    hist = {}
    for value in np.nonzero(total)[0]:
        key = "ignore" if value == 255 else names.get(int(value), f"value {value}")
        hist[key] = int(total[value])
    return hist


def scene_info(scene: Scene, histograms: bool = True, progress: bool = True) -> dict:
    nodata = scene.nodata
    info = {
        "path": scene.url,
        "complete": scene.complete,
        "incomplete_parts": scene.incomplete_parts(),
        "shape": list(scene.shape),
        "dtype": str(scene.dtype),
        "bands": scene.bands,
        "nodata": None if nodata is None else ("NaN" if math.isnan(nodata) else nodata),
        "crs": crs_name(scene.crs, scene.url),
        "transform": scene.transform,
        "classes": scene.classes.name if scene.classes else None,
        "levels": [
            {"shape": list(a.shape), "chunks": list(scene.root[str(k)].chunks)} for k, a in enumerate(scene.levels)
        ],
        "labels": {},
        "maps": {},
        "source": scene.meta.get("source"),
    }
    for name in scene.labels:
        table = scene.label_classes(name)
        entry: dict = {"levels": len(scene.label_levels(name)), "classes": table.name if table else None}
        if histograms:
            entry["histogram"] = class_histogram(scene, name, progress)
        info["labels"][name] = entry
    for name in scene.maps:
        levels = scene.map_levels(name)
        info["maps"][name] = {"levels": len(levels), "shape": list(levels[0].shape), "dtype": str(levels[0].dtype)}
    return info


def format_info(info: dict) -> str:
    c, h, w = info["shape"]
    lines = [
        f"scene      {info['path']}",
        f"complete   {'yes' if info['complete'] else 'NO: ' + ', '.join(info['incomplete_parts'])}",
        f"size       {w} x {h} px, {c} band(s), {info['dtype']}",
        f"bands      {', '.join(info['bands'])}",
        f"nodata     {info['nodata'] if info['nodata'] is not None else 'none'}",
        f"crs        {info['crs']}",
    ]
    if info["transform"]:
        a, b, x0, d, e, y0 = info["transform"]
        lines.append(f"transform  origin ({x0:g}, {y0:g}), pixel {a:g} x {e:g}" + (" (rotated)" if b or d else ""))
    lines.append(f"source     {info['source']}")
    lines.append("levels     " + "; ".join(
        f"{k}: {lv['shape'][-1]}x{lv['shape'][-2]} (chunks {lv['chunks'][-1]}x{lv['chunks'][-2]})"
        for k, lv in enumerate(info["levels"])
    ))
    if info["incomplete_parts"] and info["complete"]:
        lines.append(f"unfinished {', '.join(info['incomplete_parts'])} (run the writing command again)")
    lines.append(f"labels     {', '.join(info['labels']) or 'none'}")
    for name, entry in info["labels"].items():
        lines.append(f"  {name}: {entry['levels']} levels, class table {entry['classes']}")
        hist = entry.get("histogram")
        if hist:
            total = sum(hist.values())
            for cls, n in sorted(hist.items(), key=lambda kv: -kv[1]):
                lines.append(f"    {cls:<24} {n:>14,d} px  {100 * n / total:6.2f} %")
    lines.append(f"maps       {', '.join(info['maps']) or 'none'}")
    for name, entry in info["maps"].items():
        lines.append(f"  {name}: {entry['shape']} {entry['dtype']}, {entry['levels']} levels")
    return "\n".join(lines)
