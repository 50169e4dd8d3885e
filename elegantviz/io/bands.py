"""Which bands to show and how to stretch them: one band picker and one display-window reader
for the napari plugin, the notebooks and the figures alike."""

from __future__ import annotations

import numpy as np

from elegantviz.errors import InputError

NATURAL, FALSE_COLOUR = "natural", "false-colour"
BAND_ALIASES = {
    "red": ("red", "r"),
    "green": ("green", "g"),
    "blue": ("blue", "b"),
    "nir": ("nir", "near-infrared", "near infrared", "nir1", "infrared"),
}


def band_index(bands: list[str], role: str) -> int | None:
    """Index of the band named for ``role`` (red, green, blue, nir), else None."""
    aliases = BAND_ALIASES[role]
    for i, b in enumerate(bands):
        if b.strip().lower() in aliases:
            return i
    return None


def choose_bands(bands: list[str], composite: str = NATURAL) -> list[int]:
    """Band indices to show: [r, g, b] (natural or NIR false colour) or [k] for grey."""
    if composite not in (NATURAL, FALSE_COLOUR):
        raise InputError(f"composite must be {NATURAL!r} or {FALSE_COLOUR!r}, got {composite!r}")
    r, g, b, nir = (band_index(bands, k) for k in ("red", "green", "blue", "nir"))
    named_rgb = None not in (r, g, b)
    if composite == FALSE_COLOUR:
        if nir is None and len(bands) == 4 and not named_rgb:
            nir = 3  # unnamed 4-band imagery is R, G, B, NIR by convention
        if nir is None:
            raise InputError(f"no near-infrared band for a false-colour composite (bands: {bands})")
        red, green = (r, g) if named_rgb else (0, 1)
        return [nir, red, green]  # type: ignore[list-item]
    if named_rgb:
        return [r, g, b]  # type: ignore[list-item]
    if len(bands) >= 3:
        return [0, 1, 2]
    return [0]


def stored_windows(ome: dict, n_bands: int, dtype: np.dtype) -> list[tuple[float, float]]:
    """Contrast window of every band from NGFF omero metadata (conversion stores the 2nd-98th
    percentile), else the dtype's range (0..1 for floats)."""
    channels = ome.get("omero", {}).get("channels", [])
    wins = []
    for i in range(n_bands):
        w = channels[i].get("window", {}) if i < len(channels) else {}
        if "start" in w and "end" in w:
            wins.append((float(w["start"]), float(w["end"])))
        elif np.issubdtype(dtype, np.integer):
            info = np.iinfo(dtype)
            wins.append((float(info.min), float(info.max)))
        else:
            wins.append((0.0, 1.0))
    return wins
