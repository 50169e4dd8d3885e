"""Class tables: names, palette colours and how raw mask values map to class ids.

Class ids in a scene store are contiguous (0..K-1) so they index logits directly; the raw
values of a dataset's masks (FBP's 1..24, Inria's 0/255, DeepGlobe's RGB colours) are mapped
through the table on conversion. Everything else (unlabeled, no-data, unknown values) becomes
the ignore value 255.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from elegantviz.errors import InputError

IGNORE_INDEX = 255


@dataclass(frozen=True)
class ClassInfo:
    id: int
    name: str
    color: tuple[int, int, int]
    source_values: tuple[int, ...] = ()


@dataclass(frozen=True)
class ClassTable:
    """A named list of classes with colours and the mask values that mean each of them."""

    name: str
    classes: tuple[ClassInfo, ...]
    ignore_source_values: tuple[int, ...] = ()
    # Confusion pairs (true name, predicted name) that error maps show by default.
    default_pairs: tuple[tuple[str, str], ...] = ()
    ignore_index: int = IGNORE_INDEX
    _by_name: dict = field(default=None, compare=False, repr=False)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        ids = [c.id for c in self.classes]
        if ids != list(range(len(ids))):
            raise InputError(f"class table {self.name!r}: ids must be 0..K-1 in order, got {ids}")
        if len(ids) > 255:
            raise InputError(f"class table {self.name!r}: at most 255 classes fit in uint8 labels")
        object.__setattr__(self, "_by_name", {c.name: c.id for c in self.classes})

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.classes]

    def id_of(self, name: str) -> int:
        try:
            return self._by_name[name]
        except KeyError:
            raise InputError(f"class table {self.name!r} has no class {name!r}; it has {self.names}") from None

    def palette(self) -> np.ndarray:
        """(256, 3) uint8 colours indexed by class id; unknown ids and ignore are black."""
        pal = np.zeros((256, 3), np.uint8)
        for c in self.classes:
            pal[c.id] = c.color
        return pal

    # -- mapping raw mask values -------------------------------------------------------
    def _value_pairs(self) -> tuple[np.ndarray, np.ndarray]:
        src, dst = [], []
        for c in self.classes:
            for v in c.source_values:
                src.append(v)
                dst.append(c.id)
        order = np.argsort(src, kind="stable")
        return np.asarray(src, np.float64)[order], np.asarray(dst, np.uint8)[order]

    def map_values(self, raw: np.ndarray, nodata: float | None = None) -> tuple[np.ndarray, int, int]:
        """Map a block of raw mask values to class ids.

        Returns (ids as uint8, number of pixels whose value is not in the table, number of
        nodata or explicitly ignored pixels). Both kinds become ``ignore_index``.
        """
        src, dst = self._value_pairs()
        flat = np.asarray(raw, dtype=np.float64).ravel()
        out = np.full(flat.shape, self.ignore_index, np.uint8)
        skip = np.isnan(flat)
        if nodata is not None and not np.isnan(nodata):
            skip |= flat == nodata
        for v in self.ignore_source_values:
            skip |= flat == v
        if len(src):
            pos = np.clip(np.searchsorted(src, flat), 0, len(src) - 1)
            hit = (src[pos] == flat) & ~skip
            out[hit] = dst[pos[hit]]
        else:
            hit = np.zeros(flat.shape, bool)
        n_unknown = int((~hit & ~skip).sum())
        return out.reshape(np.shape(raw)), n_unknown, int(skip.sum())

    def map_colors(self, rgb: np.ndarray) -> tuple[np.ndarray, int, int]:
        """Map an RGB mask block (3, h, w) through the palette (DeepGlobe ships masks so)."""
        rgb = np.asarray(rgb)
        if rgb.ndim != 3 or rgb.shape[0] != 3:
            raise InputError(f"an RGB mask needs 3 bands, got shape {rgb.shape}")
        code = (rgb[0].astype(np.int64) << 16) | (rgb[1].astype(np.int64) << 8) | rgb[2].astype(np.int64)
        out = np.full(code.shape, self.ignore_index, np.uint8)
        known = np.zeros(code.shape, bool)
        for c in self.classes:
            r, g, b = c.color
            m = code == ((r << 16) | (g << 8) | b)
            out[m] = c.id
            known |= m
        return out, int((~known).sum()), 0

    # -- serialisation ------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "ignore_index": self.ignore_index,
            "ignore_source_values": list(self.ignore_source_values),
            "default_pairs": [list(p) for p in self.default_pairs],
            "classes": [
                {"id": c.id, "name": c.name, "color": list(c.color), "source_values": list(c.source_values)}
                for c in self.classes
            ],
        }

    @classmethod
    def from_dict(cls, d: dict, origin: str = "class table") -> "ClassTable":
        """A table as ``to_dict`` writes it (or a hand-written JSON file). Every value is checked,
        none coerced: an id of 0.5 or a colour of 300 is refused, not rounded or wrapped."""
        try:
            if not isinstance(d, dict):
                raise TypeError(f"a {type(d).__name__}, not a mapping")
            rows = d["classes"]
            if not isinstance(rows, list) or not rows or not all(isinstance(c, dict) for c in rows):
                raise ValueError(f"'classes' must be a non-empty list of classes, got {rows!r:.80}")
            classes = tuple(
                ClassInfo(
                    id=_whole(c["id"], "id"),
                    name=_text(c["name"], "name"),
                    color=_color(c["color"]) if "color" in c else auto_color(_whole(c["id"], "id")),
                    source_values=tuple(_whole(v, "source value") for v in _listed(c.get("source_values", [c["id"]]))),
                )
                for c in rows
            )
            names = {c.name for c in classes}
            pairs = tuple(tuple(_text(n, "pair class") for n in _listed(p))
                          for p in _listed(d.get("default_pairs", [])))
            if any(len(p) != 2 or not set(p) <= names for p in pairs):
                raise ValueError(f"default pairs {[list(p) for p in pairs]} are not pairs of its classes")
            ignore = _whole(d.get("ignore_index", IGNORE_INDEX), "ignore_index")
            if not 0 <= ignore <= 255 or ignore < len(classes):
                raise ValueError(f"ignore_index {ignore} must be a uint8 value that is no class id")
            return cls(
                name=_text(d.get("name", origin), "name"),
                classes=classes,
                ignore_source_values=tuple(_whole(v, "ignored value")
                                           for v in _listed(d.get("ignore_source_values", []))),
                default_pairs=pairs,  # type: ignore[arg-type]
                ignore_index=ignore,
            )
        except (KeyError, TypeError, ValueError) as e:
            raise InputError(f"{origin}: not a valid class table ({type(e).__name__}: {e})") from None


def _whole(v: object, what: str) -> int:
    """An integer as JSON writes one (1 or 1.0); a bool, a fraction or a string is refused."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not float(v).is_integer():
        raise ValueError(f"{what} {v!r} is not a whole number")
    return int(v)


def _text(v: object, what: str) -> str:
    if not isinstance(v, str):
        raise ValueError(f"{what} {v!r} is not a string")
    return v


def _listed(v: object) -> list:
    if not isinstance(v, list):
        raise ValueError(f"{v!r:.40} is not a list")
    return v


def _color(v: object) -> tuple[int, int, int]:
    rgb = tuple(_whole(c, "colour value") for c in _listed(v))
    if len(rgb) != 3 or not all(0 <= c <= 255 for c in rgb):
        raise ValueError(f"colour {v!r} is not three values 0..255")
    return rgb  # type: ignore[return-value]


def auto_color(i: int) -> tuple[int, int, int]:
    """A distinct colour for class i when a table gives none (golden-angle hues)."""
    import colorsys

    r, g, b = colorsys.hsv_to_rgb((i * 0.618033988749895) % 1.0, 0.65, 0.95)
    return int(r * 255), int(g * 255), int(b * 255)


def _table(name, rows, first_source=0, ignore=(), pairs=()) -> ClassTable:
    return ClassTable(
        name=name,
        classes=tuple(
            ClassInfo(i, n, c, (first_source + i,)) for i, (n, c) in enumerate(rows)
        ),
        ignore_source_values=tuple(ignore),
        default_pairs=tuple(pairs),
    )


# Five-Billion-Pixels (Tong et al. 2023): mask 0 is unlabeled, 1..24 the classes.
FBP = _table(
    "fbp",
    [
        ("industrial area", (200, 0, 0)),
        ("paddy field", (0, 200, 0)),
        ("irrigated field", (150, 250, 0)),
        ("dry cropland", (150, 200, 150)),
        ("garden land", (200, 0, 200)),
        ("arbor forest", (150, 0, 250)),
        ("shrub forest", (150, 150, 250)),
        ("park", (200, 150, 200)),
        ("natural meadow", (250, 200, 0)),
        ("artificial meadow", (200, 200, 0)),
        ("river", (0, 0, 200)),
        ("urban residential", (250, 0, 150)),
        ("lake", (0, 150, 200)),
        ("pond", (0, 200, 250)),
        ("fish pond", (150, 200, 250)),
        ("snow", (250, 250, 250)),
        ("bareland", (200, 200, 200)),
        ("rural residential", (200, 150, 150)),
        ("stadium", (250, 200, 150)),
        ("square", (150, 150, 0)),
        ("road", (250, 150, 150)),
        ("overpass", (250, 150, 0)),
        ("railway station", (250, 200, 250)),
        ("airport", (200, 150, 0)),
    ],
    first_source=1,
    ignore=(0,),
    pairs=(("river", "pond"), ("pond", "river"), ("river", "lake"), ("lake", "river")),
)

# DeepGlobe land cover: masks are RGB; "unknown" is class 0, so the usual mIoU is over 1..6.
DEEPGLOBE = ClassTable(
    name="deepglobe",
    classes=tuple(
        ClassInfo(i, n, c, (v,))
        for i, (n, c, v) in enumerate(
            [
                ("unknown", (0, 0, 0), 0),
                ("urban land", (0, 255, 255), 1),
                ("agriculture land", (255, 255, 0), 2),
                ("rangeland", (255, 0, 255), 3),
                ("forest land", (0, 255, 0), 4),
                ("water", (0, 0, 255), 5),
                ("barren land", (255, 255, 255), 6),
            ]
        )
    ),
)

# Inria aerial building labelling: masks are 0 / 255.
INRIA = ClassTable(
    name="inria",
    classes=(ClassInfo(0, "background", (0, 0, 0), (0,)), ClassInfo(1, "building", (255, 255, 255), (255, 1))),
)

# LoveDA: mask 0 is no-data, 1..7 the classes.
LOVEDA = _table(
    "loveda",
    [
        ("background", (255, 255, 255)),
        ("building", (255, 0, 0)),
        ("road", (255, 255, 0)),
        ("water", (0, 0, 255)),
        ("barren", (159, 129, 183)),
        ("forest", (0, 255, 0)),
        ("agriculture", (255, 195, 128)),
    ],
    first_source=1,
    ignore=(0,),
)

# The synthetic scenes of elegantviz.data.synthetic: rivers and ponds share one texture.
RIVERWORLD = _table(
    "riverworld",
    [
        ("cropland", (214, 196, 84)),
        ("forest", (34, 120, 50)),
        ("built-up", (200, 60, 60)),
        ("river", (30, 90, 230)),
        ("pond", (0, 210, 230)),
    ],
    pairs=(("river", "pond"), ("pond", "river")),
)

BUILTIN_TABLES: dict[str, ClassTable] = {t.name: t for t in (FBP, DEEPGLOBE, INRIA, LOVEDA, RIVERWORLD)}


def get_class_table(spec: str | ClassTable) -> ClassTable:
    """A built-in table by name (fbp, deepglobe, inria, loveda, riverworld) or a JSON file."""
    if isinstance(spec, ClassTable):
        return spec
    if spec.lower() in BUILTIN_TABLES:
        return BUILTIN_TABLES[spec.lower()]
    path = Path(spec)
    if not path.exists():
        raise InputError(
            f"{spec}: not a built-in class table ({', '.join(BUILTIN_TABLES)}) nor an existing JSON file"
        )
    try:
        d = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise InputError(f"{path}: cannot read class table JSON ({e})") from None
    return ClassTable.from_dict(d, origin=str(path))


def table_from_values(values: np.ndarray, name: str = "generic") -> ClassTable:
    """A table for a mask that came without one: each distinct value becomes a class."""
    vals = sorted(int(v) for v in np.unique(values))
    return ClassTable(
        name=name,
        classes=tuple(ClassInfo(i, f"class {v}", auto_color(i), (v,)) for i, v in enumerate(vals)),
    )
