"""Random edits of a finished scene store (issue #17): of its ``zarr.json`` files, of the
``elegantviz`` and ``ome`` attributes and of its chunk files. Whatever the edit, every reader a
user runs (``elegantviz info``, ``elegantviz check``, ``open_scene`` and reading every level of
the image, the labels and the maps, ``evaluate``) either gives what the untouched store gives or
stops with one elegantviz error naming the store: never a traceback, never a silently different
answer (an edited shape shown as fact, a lost chunk read as the fill value), and never a write
into the store. And when a reader stops, ``elegantviz check`` reports the store as damaged.

Stores are tiny (64 px, 32 px chunks) and built once; each example edits a fresh copy."""

from __future__ import annotations

import base64
import functools
import io
import json
import os
import shutil
import tempfile
import traceback
import warnings
import zlib
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path
from unittest import mock

import dask
import numpy as np
import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from elegantviz import cli
from elegantviz.classes import RIVERWORLD
from elegantviz.errors import ElegantvizError
from elegantviz.io.store import create_scene, open_scene

SCALE = float(os.environ.get("EDITS_SCALE", "1"))  # e.g. 0.1 for a quick run while fixing
STORE = "<store>"  # the copy's path in normalised outputs
WKT_32614 = 'PROJCS["WGS 84 / UTM zone 14N",GEOGCS["WGS 84",DATUM["WGS_1984",' \
            'SPHEROID["WGS 84",6378137,298.257223563]],PRIMEM["Greenwich",0],UNIT["degree",0.0174532925199433]],PROJECTION["Transverse_Mercator"],' \
            'PARAMETER["latitude_of_origin",0],PARAMETER["central_meridian",-99],PARAMETER["scale_factor",0.9996],' \
            'PARAMETER["false_easting",500000],PARAMETER["false_northing",0],UNIT["metre",1],AUTHORITY["EPSG","32614"]]'


def build_labelled(path: Path) -> None:
    """3 bands, labels/gt (with a chunk of ignore that zarr never writes), labels/pred, maps/margin."""
    rng = np.random.default_rng(0)
    scene = create_scene(path, rng.integers(0, 255, (3, 64, 64), dtype=np.uint8), bands=["red", "green", "blue"],
                         classes=RIVERWORLD, tile=32, progress=False, finalize=False)
    gt = rng.integers(0, 5, (64, 64), dtype=np.uint8)
    gt[:32, 32:] = 255
    pred = np.where(gt == 255, 0, gt).astype(np.uint8)
    pred[::3] = rng.integers(0, 5, (22, 64))
    scene.add_labels("gt", gt, progress=False)
    scene.add_labels("pred", pred, progress=False)
    scene.add_map("margin", rng.random((64, 64)), progress=False)
    scene.finalize()


def build_georeferenced(path: Path) -> None:
    """float32 with NaN nodata (one nodata chunk never written), a CRS and transform, a margin map
    and a (c, y, x) map at stride 8 as predict writes the keys."""
    rng = np.random.default_rng(1)
    image = rng.random((2, 64, 48)).astype(np.float32)
    image[:, :32, :32] = np.nan
    scene = create_scene(path, image, bands=["a", "b"], crs=WKT_32614, transform=[2.0, 0, 400000, 0, -2.0, 5200000],
                         nodata=float("nan"), tile=32, progress=False, finalize=False)
    scene.add_map("margin", rng.random((64, 48)), progress=False)
    scene.add_map("keys", rng.random((3, 8, 6)), dtype="float32", attrs={"stride": 8}, progress=False)
    scene.finalize()


# --- what a user's readers give -----------------------------------------------------------------
@dataclass
class Outcome:
    ok: bool
    value: object  # the normalised result, or the error's text
    clean: str | None = None  # why an error is not one clean line naming the store


def _cli(argv: list[str]) -> tuple[int, str, str]:
    """``elegantviz ARGV`` in this process: its exit status, stdout and stderr."""
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err), mock.patch.object(cli, "build_parser", PARSER):
        rc = cli.main(argv)
    return rc, out.getvalue(), err.getvalue()


PARSER = functools.cache(cli.build_parser)  # the same parser each time: a thousand examples, not a thousand parsers


def _cli_outcome(path: str, command: str, rc: int, out: str, err: str) -> Outcome:
    lines = err.strip().splitlines()
    if rc == 0:
        return Outcome(True, out.replace(path, STORE))
    why = None
    if rc != 2 or len(lines) != 1 or not lines[0].startswith(f"elegantviz {command}: error: ") or path not in err:
        why = f"exit {rc}, stderr {err!r}"
    return Outcome(False, (out + err).replace(path, STORE), why)


def run_info(path: str) -> Outcome:
    return _cli_outcome(path, "info", *_cli(["info", path, "--json", "-q"]))


def run_check(path: str) -> Outcome:
    rc, out, err = _cli(["check", path, "-q"])
    outcome = _cli_outcome(path, "check", rc, out, err)
    if not outcome.ok and outcome.clean is None and not all(line.startswith(f"{path}: ") for line in out.splitlines()):
        outcome.clean = f"a problem line that does not name the store: {out!r}"
    return outcome


def digest(a: np.ndarray) -> str:
    return f"{a.dtype}{a.shape}:{zlib.crc32(np.ascontiguousarray(a).tobytes()):08x}"


def read_everything(path: str) -> dict:
    """What a notebook or the viewer reads: the metadata and every level of every part."""
    scene = open_scene(path)
    classes = scene.classes
    out: dict = {"bands": scene.bands, "crs": scene.crs, "transform": scene.transform, "nodata": repr(scene.nodata),
                 "classes": classes.to_dict() if classes else None, "shape": scene.shape, "dtype": str(scene.dtype),
                 "levels": scene.num_levels, "labels": scene.labels, "maps": scene.maps}
    arrays = {"image": scene.levels}
    for name in scene.labels:
        arrays[f"labels/{name}"] = scene.label_levels(name)
        table = scene.label_classes(name)
        out[f"labels/{name} classes"] = table.to_dict() if table else None
    for name in scene.maps:
        arrays[f"maps/{name}"] = scene.map_levels(name)
        out[f"maps/{name} stride"] = scene.map_attrs(name).get("stride", 1)
    keys = list(arrays)
    computed = dask.compute(*[a for k in keys for a in arrays[k]])
    at = 0
    for k in keys:
        out[k] = [digest(a) for a in computed[at: at + len(arrays[k])]]
        at += len(arrays[k])
    return out


def run_read(path: str) -> Outcome:
    try:
        return Outcome(True, read_everything(path))
    except ElegantvizError as e:
        text = str(e)
        return Outcome(False, text.replace(path, STORE), None if "\n" not in text and path in text else repr(text))


def run_evaluate(path: str) -> Outcome:
    from elegantviz.engine.evaluate import evaluate_scene

    try:
        report = evaluate_scene(path, pairs=["river:pond"], write_error_map=False, progress=False)
    except ElegantvizError as e:
        text = str(e)
        return Outcome(False, text.replace(path, STORE), None if "\n" not in text and path in text else repr(text))
    return Outcome(True, json.dumps(report, sort_keys=True, default=str).replace(path, STORE))


READERS = {"info": run_info, "check": run_check, "read": run_read, "evaluate": run_evaluate}


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file below ``folder`` with its size and modification time: a write changes one of them."""
    found = {}
    for top, _, files in os.walk(folder):
        for name in files:
            st_ = os.stat(os.path.join(top, name))
            found[os.path.relpath(os.path.join(top, name), folder)] = (st_.st_size, st_.st_mtime_ns)
    return found


# --- the stores ---------------------------------------------------------------------------------
@dataclass
class Base:
    kind: str
    path: Path
    arrays: list[str]  # zarr.json of every array
    groups: list[str]  # zarr.json of every group
    chunks: list[str]
    readers: tuple[str, ...]
    reference: dict = field(repr=False)  # reader -> Outcome on the untouched store
    files: dict[str, bytes] = field(repr=False)  # every file of the store, to write a copy fast

    def _repr_pretty_(self, printer, cycle) -> None:  # hypothesis prints the fixture with a failure
        printer.text(f"<{self.kind} store {self.path}>")


def make_bases(mktemp) -> dict[str, Base]:
    """The two untouched stores and what every reader gives on them."""
    out = {}
    for kind, build, readers in (("labelled", build_labelled, ("info", "check", "read", "evaluate")),
                                 ("geo", build_georeferenced, ("info", "check", "read"))):
        path = mktemp(kind) / "s.zarr"
        build(path)
        metas = sorted(str(p.relative_to(path)) for p in path.rglob("zarr.json"))
        kinds = {m: json.loads((path / m).read_text())["node_type"] for m in metas}
        chunks = sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file() and p.name != "zarr.json")
        with dask.config.set(scheduler="synchronous"):
            reference = {r: READERS[r](str(path)) for r in readers}
        assert all(o.ok for o in reference.values()), reference
        files = {str(p.relative_to(path)): p.read_bytes() for p in path.rglob("*") if p.is_file()}
        out[kind] = Base(kind, path, [m for m in metas if kinds[m] == "array"],
                         [m for m in metas if kinds[m] == "group"], chunks, readers, reference, files)
    return out


@pytest.fixture(scope="module")
def bases(tmp_path_factory) -> dict[str, Base]:
    return make_bases(tmp_path_factory.mktemp)


# --- the edits ----------------------------------------------------------------------------------
JUNK = st.sampled_from(["64", "", "NaN", [], {}, [1, "a"], {"a": 1}, 3.5, -1, 0, None, True, 10**20])
DTYPES = ["uint8", "int8", "uint16", "int32", "float16", "float32", "float64", "bool", "complex64", "string", "u1",
          "foo"]


def _dig(doc: dict, *keys):
    for k in keys:
        doc = doc[k]
    return doc


def edit_array_json(doc: dict, draw) -> str:
    """One change to an array's zarr.json: any of its fields, its shape, dtype, chunks, codecs."""
    field = draw(st.sampled_from(["shape", "data_type", "chunk_shape", "fill_value", "codecs", "dimension_names",
                                  "chunk_key_encoding", "remove", "retype", "node_type", "attributes"]))
    ndim = len(doc["shape"])
    if field == "shape":
        if draw(st.booleans()):
            k = draw(st.integers(0, ndim - 1))
            doc["shape"][k] = max(0, doc["shape"][k] + draw(st.integers(-40, 40).filter(bool)))
        else:
            doc["shape"] = draw(st.lists(st.integers(0, 100), max_size=4))
    elif field == "data_type":
        doc["data_type"] = draw(st.sampled_from(DTYPES) | JUNK)
    elif field == "chunk_shape":
        if draw(st.booleans()):
            doc["chunk_grid"]["configuration"]["chunk_shape"] = draw(st.lists(st.integers(0, 80), max_size=4))
        else:
            doc["chunk_grid"] = draw(JUNK | st.just({"name": "rectangular", "configuration": {}}))
    elif field == "fill_value":
        doc["fill_value"] = draw(st.sampled_from([0, 1, 7, 255, 256, -1, 0.5, "NaN", "Infinity", "abc", None, True]))
    elif field == "codecs":
        codecs = doc["codecs"]
        change = draw(st.sampled_from(["drop", "endian", "transpose", "level", "checksum", "gzip", "unknown", "junk"]))
        if change == "drop":
            del codecs[draw(st.integers(0, len(codecs) - 1))]
        elif change == "endian":
            codecs[0] = {"name": "bytes", "configuration": {"endian": "big"}}
        elif change == "transpose":
            codecs.insert(0, {"name": "transpose", "configuration": {"order": list(range(ndim))[::-1]}})
        elif change == "level":
            codecs[-1]["configuration"]["level"] = draw(st.integers(1, 9))
        elif change == "checksum":
            codecs[-1]["configuration"]["checksum"] = True
        elif change == "gzip":
            codecs[-1] = {"name": "gzip", "configuration": {"level": 1}}
        elif change == "unknown":
            codecs.append({"name": "rot13"})
        else:
            doc["codecs"] = draw(JUNK)
        field = f"codecs: {change}"
    elif field == "dimension_names":
        doc["dimension_names"] = draw(st.sampled_from([None, ["a", "b", "c"][:ndim], ["y"], [1, 2, 3][:ndim]]))
    elif field == "chunk_key_encoding":
        doc["chunk_key_encoding"] = draw(st.sampled_from([{"name": "default", "configuration": {"separator": "."}},
                                                          {"name": "v2", "configuration": {"separator": "."}},
                                                          {"name": "v2"}, {"name": "zig"}]))
    elif field == "remove":
        field = f"remove {draw(st.sampled_from(sorted(doc)))}"
        del doc[field.split()[1]]
    elif field == "retype":
        key = draw(st.sampled_from(sorted(doc)))
        doc[key] = draw(JUNK)
        field = f"retype {key}"
    elif field == "node_type":
        doc["node_type" if draw(st.booleans()) else "zarr_format"] = draw(st.sampled_from(["group", 2, 4, "array"]))
    else:
        doc["attributes"] = draw(JUNK | st.just({"elegantviz": {"complete": "no"}}))
    return field


def _bits(text: str, n: int) -> np.ndarray:
    return np.unpackbits(np.frombuffer(zlib.decompress(base64.b64decode(text)), np.uint8))[:n]


def _pack(bits: np.ndarray) -> str:
    return base64.b64encode(zlib.compress(np.packbits(bits).tobytes())).decode()


def edit_manifest(manifest, draw) -> str:
    """One change to a part's chunk manifest: its records, their fields, the bitmap."""
    if not isinstance(manifest, dict) or not manifest:
        return "no manifest"
    level = draw(st.sampled_from(sorted(manifest)))
    record = manifest[level]
    change = draw(st.sampled_from(["drop level", "add level", "field", "retype", "flip bit", "bitmap junk",
                                   "truncate bitmap", "all set", "written", "junk record"]))
    n = int(np.prod([-(-s // c) for s, c in zip(record["shape"], record["chunks"])]))
    if change == "drop level":
        del manifest[level]
    elif change == "add level":
        manifest[str(len(manifest))] = dict(record)
    elif change == "field":
        key = draw(st.sampled_from(["shape", "chunks", "dtype"]))
        record[key] = draw(st.sampled_from(["float64", "uint16"])) if key == "dtype" else \
            [max(1, v + draw(st.integers(-20, 20))) for v in record[key]]
    elif change == "retype":
        record[draw(st.sampled_from(sorted(record)))] = draw(JUNK)
    elif change == "flip bit":
        bits = _bits(record["present"], n)
        bits[draw(st.integers(0, n - 1))] ^= 1
        record["present"] = _pack(bits)
    elif change == "bitmap junk":
        record["present"] = draw(st.sampled_from(["", "!!", "AAAA", base64.b64encode(b"nonsense").decode()]))
    elif change == "truncate bitmap":
        record["present"] = _pack(_bits(record["present"], n)[: draw(st.integers(0, n - 1))])
    elif change == "all set":
        record["present"] = _pack(np.ones(n, np.uint8))
    elif change == "written":
        record["written"] = record["written"] + draw(st.integers(-3, 3).filter(bool))
    else:
        manifest[level] = draw(JUNK)
    return f"manifest {level}: {change}"


def edit_classes(table, draw) -> str:
    """One change to a class table that makes it wrong (or leaves it as it was)."""
    if not isinstance(table, dict):
        return "no table"
    rows = table["classes"]
    k = draw(st.integers(0, len(rows) - 1))
    change = draw(st.sampled_from(["drop row", "swap ids", "id", "name", "color", "source", "ignore", "pairs",
                                   "empty", "junk rows", "no name", "junk"]))
    if change == "drop row":
        del rows[0]
    elif change == "swap ids":
        rows[0]["id"], rows[-1]["id"] = rows[-1]["id"], rows[0]["id"]
    elif change == "id":
        rows[k]["id"] = draw(st.sampled_from([0.5, True, "x", -1, 300, None]))
    elif change == "name":
        rows[k]["name"] = draw(st.sampled_from([5, None, [], {}]))
    elif change == "color":
        rows[k]["color"] = draw(st.sampled_from([[1, 2], [300, 0, 0], [-1, 0, 0], "red", [0.5, 0, 0], None,
                                                 [1, 2, 3, 4]]))
    elif change == "source":
        rows[k]["source_values"] = draw(st.sampled_from([["a"], "1", [0.5], None]))
    elif change == "ignore":
        table["ignore_index"] = draw(st.sampled_from([0, 3, 300, -1, "x", None, 2.5]))
    elif change == "pairs":
        table["default_pairs"] = draw(st.sampled_from([[["river", "lake"]], "ab", [["river"]], [[1, 2]], 5]))
    elif change == "empty":
        table["classes"] = []
    elif change == "junk rows":
        table["classes"] = draw(JUNK)
    elif change == "no name":
        del table["name"]
    else:
        return f"classes: {change}"
    return f"classes: {change}"


def edit_group_json(doc: dict, draw, root: bool, integer: bool, coarse: bool) -> str:
    """One change to a group's attributes. ``integer``: the image is uint8; ``coarse``: the part is a
    map at the model's stride (whose stride can be checked against its shape)."""
    attrs = doc.setdefault("attributes", {})
    ours, ome = attrs.get("elegantviz"), attrs.get("ome")
    fields = ["ome", "datasets", "version", "remove", "retype"]
    if isinstance(ours, dict):
        fields += ["complete", "manifest", "ours"] + (
            ["bands", "crs", "transform", "nodata", "job", "root classes"] if root else ["stride", "part classes"])
    field = draw(st.sampled_from(fields))
    if field == "complete":
        value = draw(st.sampled_from([False, "remove", "yes", "false", 1, 0, None, []]))
        if value == "remove":
            del ours["complete"]
        else:
            ours["complete"] = value
        return f"complete -> {value!r}"
    if field == "manifest":
        return edit_manifest(ours.get("manifest"), draw)
    if field == "root classes" or field == "part classes":
        return edit_classes(ours.get("classes"), draw)
    if field == "ours":
        attrs["elegantviz"] = draw(JUNK)
    elif field == "bands":
        ours["bands"] = draw(st.sampled_from([ours["bands"][:-1], ours["bands"] + ["extra"], [1, 2, 3], "rgb", None,
                                               {}, [], [None] * len(ours["bands"]), [["a"]] * len(ours["bands"])]))
    elif field == "crs":
        ours["crs"] = draw(st.sampled_from(["", "not a crs", "EPSG:99999", 32614, [], {"epsg": 1}, True]))
    elif field == "transform":
        ours["transform"] = draw(st.sampled_from([[1, 0, 0, 0, -1], [1, 0, 0, 0, -1, 0, 0], ["1", 0, 0, 0, -1, 0],
                                                  [1, 0, 0, 0, float("inf"), 0], [float("nan")] * 6, [0] * 6, "affine",
                                                  {}, 5, [True, 0, 0, 0, -1, 0], [[1], 0, 0, 0, -1, 0]]))
    elif field == "nodata":
        wrong = [300, -1, 0.5, "NaN"] if integer else [1e40, float("-inf")]  # what the image's dtype cannot hold
        ours["nodata"] = draw(st.sampled_from(["abc", "nan", "Infinity", [], {}, True, float("inf"), *wrong]))
    elif field == "job":
        job = ours.get("job")
        if isinstance(job, dict) and draw(st.booleans()):
            key = draw(st.sampled_from(sorted(job)))
            job[key] = draw(JUNK | st.just([1, 2, 3]))
            field = f"job.{key}"
        else:
            ours["job"] = draw(JUNK | st.just("shape dtype tile"))
    elif field == "stride":
        ours["stride"] = draw(st.sampled_from([0, -8, 8.5, "8", None, True, [8]] + ([2, 16] if coarse else [])))
    elif field == "ome":
        attrs["ome"] = draw(JUNK)
    elif field == "datasets" and isinstance(ome, dict) and "multiscales" in ome:
        sets = ome["multiscales"][0]["datasets"]
        change = draw(st.sampled_from(["drop", "add", "path", "no path", "empty", "junk", "multiscales"]))
        if change == "drop":
            del sets[-1]
        elif change == "add":
            sets.append({"path": str(len(sets)), "coordinateTransformations": []})
        elif change == "path":
            sets[draw(st.integers(0, len(sets) - 1))]["path"] = draw(st.sampled_from(["5", "1", "0", 1, None]))
        elif change == "no path":
            del sets[0]["path"]
        elif change == "empty":
            ome["multiscales"][0]["datasets"] = []
        elif change == "junk":
            ome["multiscales"][0]["datasets"] = draw(JUNK)
        else:
            ome["multiscales"] = draw(JUNK)
        field = f"datasets: {change}"
    elif field == "version" and isinstance(ome, dict):
        ome["version"] = draw(st.sampled_from(["0.4", "0.6", 5, None]))
    elif field == "remove":
        key = draw(st.sampled_from(sorted(doc) + [f"ome.{k}" for k in (ome or {})]
                                   + [f"elegantviz.{k}" for k in ("bands", "manifest", "job", "source", "palette",
                                                                  "format", "kind") if k in (ours or {})]))
        where, _, name = key.rpartition(".")
        del (attrs[where] if where else doc)[name]
        field = f"remove {key}"
    else:
        key = draw(st.sampled_from(sorted(doc)))
        doc[key] = draw(JUNK)
        field = f"retype {key}"
    return field


def edit_bytes(data: bytes, draw, flips: bool = False) -> tuple[bytes | None, str]:
    """A damaged file: gone, cut short, emptied, garbage, or with bytes appended."""
    change = draw(st.sampled_from(["delete", "truncate", "empty", "garbage", "append"] + (["flip"] if flips else [])))
    if change == "flip":
        at = draw(st.integers(0, len(data) - 1))
        return data[:at] + bytes([data[at] ^ (1 << draw(st.integers(0, 7)))]) + data[at + 1:], f"flip byte {at}"
    if change == "delete":
        return None, change
    if change == "truncate":
        return data[: draw(st.integers(1, max(1, len(data) - 1)))], change
    if change == "empty":
        return b"", change
    if change == "garbage":
        return draw(st.binary(min_size=1, max_size=64)), change
    return data + draw(st.binary(min_size=1, max_size=16)), change


@dataclass
class Edit:
    text: str
    unfinished: str | None = None  # the part a legitimate edit of its complete flag leaves unfinished
    path: str = ""  # the file it changed, inside the store


def part_of(meta_file: str) -> str:
    parts = Path(meta_file).parts[:-1]
    return "image" if not parts or parts[0] not in ("labels", "maps") else "/".join(parts[:2])


def apply_json_edit(store: Path, base: Base, draw, family: str) -> Edit:
    name = draw(st.sampled_from(base.arrays if family == "array" else base.groups))
    path = store / name
    try:
        doc = json.loads(path.read_text())
        old = json.loads(path.read_text())
        if family == "array":
            text = edit_array_json(doc, draw)
        else:
            text = edit_group_json(doc, draw, root=name == "zarr.json", integer=base.kind == "labelled",
                                   coarse=name == "maps/keys/zarr.json")
    except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError):  # an earlier edit broke it
        return Edit(f"{name}: not applicable")
    path.write_text(json.dumps(doc))
    changed = {k: doc.get(k, "<removed>") for k in sorted(set(doc) | set(old)) if doc.get(k) != old.get(k)}
    unfinished = unfinished_by(name, old, doc) if family == "group" else None  # a level's flag is no part's
    return Edit(f"{name}: {text} {json.dumps(changed, default=str)[:300]}", unfinished, name)


def unfinished_by(name: str, old: dict, new: dict) -> str | None:
    """The part an edit legitimately leaves unfinished: its complete flag false or gone, or its
    elegantviz attributes gone (a bare NGFF part, which elegantviz never takes for finished)."""
    def ours(doc):
        attrs = doc.get("attributes")
        return attrs.get("elegantviz", {}) if isinstance(attrs, dict) else {}

    before, after = ours(old), ours(new)
    gone = isinstance(before, dict) and before.get("complete") is True and after in ({}, None)
    flagged_off = isinstance(after, dict) and after.get("complete", False) is False
    if name == "zarr.json":
        return "image" if flagged_off else None
    if name not in ("labels/zarr.json", "maps/zarr.json") and (gone or flagged_off):
        return part_of(name)
    return None


def apply_file_edit(store: Path, base: Base, draw, family: str) -> Edit:
    name = draw(st.sampled_from(base.chunks if family in ("chunk", "flip") else base.arrays + base.groups))
    path = store / name
    if not path.is_file():
        return Edit(f"{name}: not applicable (gone)")
    data, text = edit_bytes(path.read_bytes(), draw, flips=family == "flip")
    if data is None:
        path.unlink()
    else:
        path.write_bytes(data)
    return Edit(f"{name}: {text}", path=name)


def add_stray_chunk(store: Path, base: Base, draw) -> Edit:
    """A chunk file where the part wrote none: the never-written all-fill chunk, or beyond the grid."""
    source = draw(st.sampled_from(base.chunks))
    where = draw(st.sampled_from(["labels/gt/0/c/0/1", "0/c/0/0/0", "0/c/1/0/0", "maps/margin/0/c/3/3",
                                  "0/c/9/0/0", "labels/pred/1/c/0/1"]))
    target = store / where
    if not target.parent.is_dir() or target.exists() or not (store / source).is_file():
        return Edit(f"stray {where}: not applicable")
    target.write_bytes((store / source).read_bytes())
    return Edit(f"stray {where} (a copy of {source})", path=where)


def apply_edit(store: Path, base: Base, draw, family: str) -> Edit:
    if family in ("array", "group"):
        return apply_json_edit(store, base, draw, family)
    if family == "stray":
        return add_stray_chunk(store, base, draw)
    return apply_file_edit(store, base, draw, family)


# --- the property -------------------------------------------------------------------------------
def expected(base: Base, reader: str, edit: Edit, got: Outcome) -> bool:
    """A correct result: the untouched store's, or for an unfinished part what an unfinished part reads as."""
    ref = base.reference[reader]
    if got.value == ref.value or reader == "check" and got.ok and drop_notes(got.value) == ref.value:
        return True
    if edit.unfinished is None or not got.ok:
        return False
    if reader == "info":
        info = json.loads(got.value)
        return edit.unfinished in info["incomplete_parts"]
    if reader == "read":
        kind, _, name = edit.unfinished.partition("/")
        return name not in got.value[kind] and f"{edit.unfinished}" not in got.value
    return reader == "evaluate" and edit.unfinished == "maps/margin"  # a report without the margin's means


def _line(value, n: int = 300) -> str:
    return " ".join(str(value).split())[:n]


def drop_notes(out: str) -> str:
    """check's output without its notes (a part without a manifest reads as a store from before them)."""
    return "".join(line for line in out.splitlines(keepends=True) if not line.rstrip().endswith("(note)"))


def judge(base: Base, store: Path, edits: list[Edit]) -> list[str]:
    """Every way the readers broke the property on this edited store; [] when they kept it."""
    path = str(store)
    edit = Edit("", next((e.unfinished for e in edits if e.unfinished), None))
    before = snapshot(store.parent)
    failures, outcomes = [], {}
    read_by_evaluate = any(e.path == "zarr.json" or e.path.startswith(("labels/", "maps/")) for e in edits)
    for reader in [r for r in base.readers if r != "evaluate" or read_by_evaluate]:  # it reads no image pixel
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                got = READERS[reader](path)
            except Exception as e:  # noqa: BLE001  what a user would see as a traceback
                tb = traceback.extract_tb(e.__traceback__)[-1]
                failures.append(f"{reader} | traceback {type(e).__name__} at {Path(tb.filename).name}:{tb.lineno} | "
                                f"{_line(e)}")
                continue
        outcomes[reader] = got
        loud = [f"{w.category.__name__}: {w.message}" for w in caught
                if not issubclass(w.category, (DeprecationWarning, PendingDeprecationWarning))]
        if loud:
            failures.append(f"{reader} | warned | {_line(loud[:2])}")
        if got.clean:
            failures.append(f"{reader} | unclean error | {_line(got.clean)}")
        elif got.ok and not expected(base, reader, edit, got):
            failures.append(f"{reader} | silently different | {_line(got.value)}")
    after = snapshot(store.parent)
    if after != before:
        changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
        failures.append(f"any | wrote into the store | {changed[:5]}")
    stopped = [r for r, o in outcomes.items() if r != "check" and not o.ok
               and not o.value.startswith(f"{STORE}: incomplete scene store")]
    if stopped and "check" in outcomes and outcomes["check"].ok:
        failures.append(f"check | says clean, but {stopped[0]} stopped | {_line(outcomes[stopped[0]].value)}")
    return failures


# a thousand copies of a store of 70 files: in memory where the system has a tmpfs (3x faster here)
SCRATCH = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


def edited_copy(base: Base) -> Path:
    store = Path(tempfile.mkdtemp(prefix=f"edit-{base.kind}-", dir=SCRATCH)) / "s.zarr"
    for name, data in base.files.items():
        (store / name).parent.mkdir(parents=True, exist_ok=True)
        (store / name).write_bytes(data)
    return store


def run_property(bases: dict[str, Base], draw, families: list[str], n_edits: int = 1) -> None:
    base = bases[draw(st.sampled_from(sorted(bases)))]
    store = edited_copy(base)
    try:
        edits = [apply_edit(store, base, draw, draw(st.sampled_from(families))) for _ in range(n_edits)]
        for e in edits:
            note(f"{base.kind}: {e.text}")
        with dask.config.set(scheduler="synchronous"):
            failures = judge(base, store, edits)
        assert not failures, "\n".join([f"{base.kind} store, " + "; ".join(e.text for e in edits)] + failures)
    finally:
        shutil.rmtree(store.parent, ignore_errors=True)


EXAMPLES = {"array": 260, "group": 300, "files": 160, "chunks": 130, "two": 150}  # 1,000
SETTINGS = dict(deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


def examples(kind: str) -> int:
    return max(1, int(EXAMPLES[kind] * SCALE))


@settings(max_examples=examples("array"), **SETTINGS)
@given(st.data())
def test_an_edited_array_zarr_json_is_refused_or_harmless(bases, data):
    """Shape, dtype, chunk grid, fill value, codecs, names, keys and types of any level's zarr.json."""
    run_property(bases, data.draw, ["array"])


@settings(max_examples=examples("group"), **SETTINGS)
@given(st.data())
def test_edited_attributes_are_refused_or_harmless(bases, data):
    """The elegantviz attributes (bands, classes, CRS, transform, nodata, complete, manifest, stride,
    job) and the ome ones (multiscales datasets, versions) of the root and of every part."""
    run_property(bases, data.draw, ["group"])


@settings(max_examples=examples("files"), **SETTINGS)
@given(st.data())
def test_a_broken_or_missing_zarr_json_is_refused(bases, data):
    """Invalid JSON, a truncated or emptied file, one that is gone."""
    run_property(bases, data.draw, ["json file"])


@settings(max_examples=examples("chunks"), **SETTINGS)
@given(st.data())
def test_a_damaged_missing_or_stray_chunk_is_named(bases, data):
    """Chunk files deleted, truncated, replaced, appended to or with a bit flipped (every chunk carries
    a CRC-32C, io/ngff.py), and chunks where none was written."""
    run_property(bases, data.draw, ["chunk", "stray", "flip"])


@settings(max_examples=examples("two"), **SETTINGS)
@given(st.data())
def test_two_edits_at_once(bases, data):
    """Two edits of any kind: the second must not hide the first."""
    run_property(bases, data.draw, ["array", "group", "json file", "chunk", "stray"], n_edits=2)
