"""Values as people write them on the command line and in YAML configs: whole and real numbers
in a range, sizes (12GB), device names, tile sides, overlaps, comma lists, class pairs, labels
names. Each parser raises ValueError with the reason; ``checked`` makes one an argparse type, so
the reason is argparse's one-line error, and the config reader names the file and key with it.
"""

from __future__ import annotations

import math
import re
from typing import Any

SEED_MAX = 2**32 - 1  # numpy's legacy seeding (np.random.seed) takes no more
SIZE_UNITS = {"": 1, "B": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4,
              "KB": 1000, "MB": 1000**2, "GB": 1000**3, "TB": 1000**4,
              "KIB": 1024, "MIB": 1024**2, "GIB": 1024**3, "TIB": 1024**4}
DEVICE = re.compile(r"auto|cpu|mps|cuda(:[0-9]+)?")


# --- values as people write them: each raises ValueError with the reason, for a one-line error --------
def whole_number(text: Any, lo: int | None = None, hi: int | None = None) -> int:
    """``text`` as a whole number in [lo, hi] ("1.5", "1e3" and "nan" are not)."""
    try:
        value = int(text) if not isinstance(text, float) else None
    except (TypeError, ValueError):
        value = None
    if value is None or isinstance(text, bool):
        raise ValueError(f"expected a whole number, got {text!r}")
    return _in_range(value, lo, hi)


def real_number(text: Any, lo: float | None = None, hi: float | None = None, below: float | None = None) -> float:
    """``text`` as a finite number in [lo, hi] (and < ``below``)."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise ValueError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"must be a finite number, got {text}")
    if below is not None and value >= below:
        raise ValueError(f"must be below {below:g}" + (f" (and at least {lo:g})" if lo is not None else "") +
                         f", got {text}")
    return _in_range(value, lo, hi)


def _in_range(value, lo, hi):
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        span = f"at least {lo}" if hi is None else f"at most {hi}" if lo is None else f"from {lo} to {hi}"
        raise ValueError(f"must be {span}, got {value}")
    return value


def parse_size(text: str | int | float) -> int:
    """Bytes from ``"12GB"``, ``"1.5 GiB"``, ``"800M"`` or a number of bytes.

    KB/MB/GB/TB are powers of 1000, KiB/MiB/GiB/TiB and bare K/M/G/T powers of 1024.
    """
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        if not math.isfinite(text) or text < 0:
            raise ValueError(f"not a size: {text!r} (a finite number of bytes >= 0)")
        return int(text)
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", text) if isinstance(text, str) else None
    unit = m.group(2).upper() if m else None
    if m is None or unit not in SIZE_UNITS:
        raise ValueError(f"not a size: {text!r} (examples: 12GB, 1.5GiB, 800M, 1000000)")
    return int(float(m.group(1)) * SIZE_UNITS[unit])


def device_name(text: Any) -> str:
    """A device this build can be asked for, by name only (checking it exists needs torch)."""
    if not isinstance(text, str) or not DEVICE.fullmatch(text):
        raise ValueError(f"expected auto, cpu, cuda, cuda:N or mps, got {text!r}")
    return text


def tile_side(text: Any) -> int:
    """``predict --tile``: halo tiles are multiples of HRNet's coarsest stride, 32 px, two at least."""
    try:
        return whole_number(text, 64)
    except ValueError:
        raise ValueError(f"tile must be a whole number of pixels >= 64 (tiles are multiples of 32 px), "
                         f"got {text!r}") from None


def overlap_fraction(text: Any) -> float:
    """``predict --overlap``: the share of a window its neighbour repeats, in [0, 1)."""
    try:
        return real_number(text, 0, below=1)
    except ValueError:
        raise ValueError(f"overlap must be in [0, 1), got {text!r}") from None


def size_text(text: str) -> str:
    """A memory size as written (12GB, 1.5GiB); checked here, parsed by the planner."""
    parse_size(text)
    return text


def unique_list(text: str, item=str) -> list:
    """Comma-separated items, none empty and none twice (``--bands 3,2,1``, ``--band-names R,G,B``)."""
    items = [t.strip() for t in text.split(",")]
    if not text.strip() or any(not t for t in items):
        raise ValueError(f"expected comma-separated items with none empty, got {text!r}")
    values = [item(t) for t in items]
    twice = sorted({str(v) for v in values if values.count(v) > 1})
    if twice:
        raise ValueError(f"{', '.join(twice)} given twice in {text!r}")
    return values


def band_number(text: str) -> int:
    """A band, counted from 1 as GDAL does."""
    try:
        return whole_number(text, 1)
    except ValueError:
        raise ValueError(f"expected band numbers counted from 1, like 3,2,1,4; {text!r} is not one") from None


def class_pair(text: str) -> str:
    """TRUE:PRED, two different class names (which ones exist the class table says, later)."""
    parts = [p.strip() for p in text.split(":")]
    if len(parts) != 2 or not all(parts):
        raise ValueError(f"expected TRUE:PREDICTED class names, e.g. river:pond, got {text!r}")
    if parts[0] == parts[1]:
        raise ValueError(f"{text!r} pairs a class with itself; a confusion pair names two classes")
    return text


def label_name(text: str) -> str:
    """A labels name: a plain word (the store refuses paths and names starting with _ or .)."""
    if not text or text != text.strip() or any(c.isspace() or not c.isprintable() for c in text):
        raise ValueError(f"expected a plain name such as pred or sliced, got {text!r}")
    return text


def checked(parse, *bounds, **kw):
    """An argparse type from one of these parsers: its reason becomes argparse's one-line error
    (``argument --tile: must be at least 64, got 7``)."""
    import argparse

    def convert(text: str):
        try:
            return parse(text, *bounds, **kw)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    convert.__name__ = parse.__name__.replace("_", " ")
    return convert


def at_least(lo: int, hi: int | None = None):
    """An argparse type: a whole number in [lo, hi]."""
    return checked(whole_number, lo, hi)


non_negative = checked(real_number, 0)  # an argparse type: a finite number >= 0
