"""Error regions: the file evaluation writes and the error navigator reads.

Format (JSON, UTF-8): a list of objects, largest first::

    [
      {"pair": "river->pond", "bbox": [y0, x0, y1, x1], "area": 5321},
      {"pair": "pond->river", "bbox": [120, 40, 180, 95], "area": 2210}
    ]

- ``pair``: "<true class>-><predicted class>", names as in the scene's class table
  (``ClassTable.default_pairs`` gives the usual ones, e.g. river predicted as pond).
- ``bbox``: the region's bounding box in level-0 pixels, half-open (rows y0..y1-1, columns
  x0..x1-1), integers.
- ``area``: the region's pixel count (connected pixels of that pair), an integer > 0.
- Optional keys are kept and ignored (e.g. ``"label": 3`` for the connected-component id).

Where: beside the store as ``NAME.errors.json`` for ``NAME.zarr`` (``default_path``); the
navigator loads that file by itself and any other through its Load button. It also reads what
``elegantviz evaluate`` already writes: its ``report.json`` (``{"pairs": [{"pair": ...,
"regions": [...]}, ...]}``, the same region objects, with ``means``) and the ``pairs`` kept in
the ``labels/error`` attributes of the store (``regions_in_store``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from elegantviz.errors import InputError

PAIR_ARROW = "->"


@dataclass(frozen=True)
class Region:
    pair: str
    bbox: tuple[int, int, int, int]
    area: int

    @property
    def truth(self) -> str:
        return self.pair.split(PAIR_ARROW)[0]

    @property
    def predicted(self) -> str:
        return self.pair.split(PAIR_ARROW)[1]

    @property
    def centre(self) -> tuple[float, float]:
        y0, x0, y1, x1 = self.bbox
        return (y0 + y1) / 2, (x0 + x1) / 2


def default_path(scene_path: str | Path) -> Path:
    p = Path(str(scene_path).rstrip("/"))
    return p.with_name(p.name[: -len(".zarr")] + ".errors.json" if p.name.endswith(".zarr") else p.name + ".errors.json")


def parse_regions(data: object, origin: str = "regions") -> list[Region]:
    """Validate and sort (largest first) the decoded JSON."""
    if not isinstance(data, list):
        raise InputError(f"{origin}: expected a JSON list of regions, got {type(data).__name__}")
    regions = []
    for k, item in enumerate(data):
        try:
            pair = str(item["pair"])
            bbox = tuple(int(v) for v in item["bbox"])
            area = int(item["area"])
        except (KeyError, TypeError, ValueError) as e:
            raise InputError(f"{origin}: region {k} needs pair, bbox and area ({type(e).__name__}: {e})") from None
        if pair.count(PAIR_ARROW) != 1 or len(bbox) != 4 or area <= 0:
            raise InputError(f"{origin}: region {k} is malformed: {item!r}")
        y0, x0, y1, x1 = bbox
        if y1 <= y0 or x1 <= x0:
            raise InputError(f"{origin}: region {k} has an empty bbox {list(bbox)}")
        regions.append(Region(pair, bbox, area))  # type: ignore[arg-type]
    return sorted(regions, key=lambda r: -r.area)


def regions_of(data: object, origin: str = "regions") -> list[Region]:
    """Regions from this module's list or from an evaluation report's ``pairs``."""
    if isinstance(data, dict) and isinstance(data.get("pairs"), list):
        data = [r for entry in data["pairs"] if isinstance(entry, dict) for r in entry.get("regions", [])]
    return parse_regions(data, origin)


def regions_in_store(scene_path: str, label: str = "error") -> list[Region] | None:
    """The regions evaluation kept in ``labels/<label>`` of a scene store, or None if it has none."""
    from elegantviz.errors import ElegantvizError
    from elegantviz.io.store import open_scene

    try:
        scene = open_scene(scene_path)
    except (ElegantvizError, OSError):
        return None
    if label not in scene.labels:
        return None
    pairs = scene.root[f"labels/{label}"].attrs.get("elegantviz", {}).get("pairs")
    if not pairs:
        return None
    return regions_of({"pairs": pairs}, origin=f"{scene_path} labels/{label}")


def load_regions(path: str | Path) -> list[Region]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise InputError(f"{path}: cannot read error regions ({e})") from None
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: not JSON ({e})") from None
    return regions_of(data, origin=str(path))


def save_regions(path: str | Path, regions: list[Region]) -> None:
    """Write regions in the format above (what evaluation should call)."""
    rows = [{"pair": r.pair, "bbox": list(r.bbox), "area": r.area} for r in sorted(regions, key=lambda r: -r.area)]
    Path(path).write_text(json.dumps(rows, indent=1), encoding="utf-8")
