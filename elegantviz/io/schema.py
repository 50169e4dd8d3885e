"""The scene store's schema in one place: part names, groups and the tables of derived labels.

A scene store (see :mod:`elegantviz.io.store`) is an OME-NGFF image pyramid with ``labels/<name>``
and ``maps/<name>`` parts. Everything that writes or reads a part by name takes the name from
here, so the library, the napari plugin and the notebooks cannot drift apart.
"""

from __future__ import annotations

from elegantviz.classes import IGNORE_INDEX, ClassInfo, ClassTable
from elegantviz.errors import InputError

NGFF_VERSION = "0.5"
IGNORE_NAME = "ignore"  # the class name of the ignore value (NGFF properties, napari features)
KEY = "elegantviz"  # the attribute that holds elegantviz's own metadata, on the root and on parts
PROGRESS_GROUP = "_progress"  # finished blocks of unfinished writes, for resuming
CACHE_GROUP = "_predict"  # the network's outputs at feature resolution, while predict writes parts

LABELS, MAPS = "labels", "maps"
GT, PRED, HARD, ERROR = "gt", "pred", "hard", "error"
MARGIN, BOUNDARY, KEYS, QUERIES, ATTENTION = "margin", "boundary", "keys", "queries", "attention"
EVIDENCE_MAPS = (MARGIN, BOUNDARY, KEYS, QUERIES, ATTENTION)

# Error regions smaller than this (level-0 pixels) are folded away in the evaluation report, the
# regions file and the navigator: on the demo store 30 of 32 were specks of 27 px or less.
MIN_REGION_AREA = 32

HARD_NAMES = ("easy", "hard")  # labels/hard: 1 where ECR selected the pixel
HARD_COLOUR = (255, 0, 255)
ERROR_COLOURS = ((230, 25, 75), (245, 130, 48), (255, 225, 25), (145, 30, 180), (70, 240, 240), (240, 50, 230))

__all__ = ["IGNORE_INDEX", "IGNORE_NAME", "part_path", "check_part_name", "check_prediction_name", "error_name",
           "hard_table", "error_table"]


def part_path(kind: str, name: str) -> str:
    """``labels/<name>`` or ``maps/<name>``: a part's path inside the store."""
    if kind not in (LABELS, MAPS):
        raise ValueError(f"a part is under {LABELS!r} or {MAPS!r}, not {kind!r}")
    return f"{kind}/{name}"


def check_part_name(kind: str, name: str, url: str) -> None:
    """A part's name is one plain path component: an empty name would address (and remove) the
    whole ``labels`` or ``maps`` group."""
    if not isinstance(name, str) or not name or "/" in name or "\\" in name or name.startswith(("_", ".")):
        raise InputError(f"{url}: invalid {kind} name {name!r} (a plain name such as 'pred', not starting with _ or .)")


def check_prediction_name(name: str, url: str) -> None:
    """Names predict may write: never the ground truth nor the parts it derives itself."""
    check_part_name(LABELS, name, url)
    if name == GT or name == HARD or name == ERROR or name.startswith(ERROR + "_"):
        raise InputError(f"{url}: --name {name!r} is reserved (labels/{name} is {'the ground truth' if name == GT else 'derived by predict'}); "
                         "choose another name, e.g. 'pred' or 'sliced'")


def error_name(pred: str) -> str:
    """The error labels of a prediction: ``error`` for ``pred``, ``error_<name>`` otherwise."""
    return ERROR if pred == PRED else f"{ERROR}_{pred}"


def hard_table(colour: tuple[int, int, int] = HARD_COLOUR, names: tuple[str, str] = HARD_NAMES) -> ClassTable:
    """Class table of ``labels/hard``."""
    return ClassTable(name=HARD, classes=(ClassInfo(0, names[0], (0, 0, 0)), ClassInfo(1, names[1], tuple(colour))))


def error_table(pairs: list[tuple[int, int]], table: ClassTable) -> ClassTable:
    """Class table of an error map: correct, one entry per confusion pair, other errors."""
    rows = [ClassInfo(0, "correct", (0, 0, 0), (0,))]
    for k, (a, b) in enumerate(pairs, start=1):
        rows.append(ClassInfo(k, f"{table.names[a]}->{table.names[b]}", ERROR_COLOURS[(k - 1) % len(ERROR_COLOURS)],
                              (k,)))
    rows.append(ClassInfo(len(pairs) + 1, "other error", (128, 128, 128), (len(pairs) + 1,)))
    return ClassTable(name="errors", classes=tuple(rows))
