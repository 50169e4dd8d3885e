"""Bad input through the real `elegantviz` command: a clear one-line error, or not (issue 17).

Builds tiny inputs in a temporary folder (riverworld scenes, GeoTIFFs, the checkpoint of a
2-iteration training run), runs ``python -m elegantviz ...`` on each kind of bad input in a
folder of its own, and classifies what happened:

- clear: exit 2, one line on stderr naming the file or option, no traceback;
- unclear: refused without a traceback, but in several lines, with another exit status, or
  without naming the file or option;
- traceback: a Python traceback on stderr;
- accepted: exit 0 where it should have been refused, or a wrong result or lost data (each
  case's ``verify`` checks what must hold afterwards, also after a refusal);
- ok: the few inputs where working is right (``ok=True``), exit 0 and the result checked;
- hang: no answer within the timeout.

Each case states what a correct outcome is, so the table can be checked by hand. Read-only
folders and a full disk are made in a private mount namespace (``unshare -m``), so they hold
for root too and vanish with the command.

    OMP_NUM_THREADS=1 python benchmarks/bad_input_probe.py [--only predict,train] [--match tile]
        [--jobs 1] [--keep DIR] [--out benchmarks/results/bad_input_probe.json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

HERE = Path(__file__).resolve().parent
COMMANDS = ("convert", "synth", "info", "check", "train", "predict", "evaluate", "export", "models", "demo", "cli")
OUTCOMES = ("clear", "unclear", "traceback", "accepted", "ok", "hang", "skipped")


@dataclass
class Case:
    command: str
    kind: str
    correct: str  # what a correct outcome is
    build: Callable[[Path], list[str]]  # prepares the case folder; the arguments after `elegantviz`
    names: tuple[str, ...] = ()  # a clear error names one of these (the file or the option)
    verify: Callable[[Path], str | None] | None = None  # what went wrong afterwards, or None
    ok: bool = False  # exit 0 is also right, when verify finds nothing wrong
    wrap: tuple | None = None  # ("ro", rel) read-only folder; ("full", rel, slack bytes) a full disk
    timeout: float = 150.0


CASES: list[Case] = []


def case(command: str, kind: str, correct: str, build, names=(), **kw) -> None:
    CASES.append(Case(command, kind, correct, build, tuple([names] if isinstance(names, str) else names), **kw))


# --- fixtures ---------------------------------------------------------------------------------
class Fixtures:
    """Inputs shared by all cases (built once, copied into a case's folder before it changes them)."""

    root: Path

    def build(self, root: Path) -> None:
        import torch

        from elegantviz.config import config_from_dict
        from elegantviz.data.synthetic import synthesize_riverworld
        from elegantviz.engine.evaluate import evaluate_scene
        from elegantviz.engine.predict import predict_scene
        from elegantviz.engine.train import Trainer

        torch.set_num_threads(1)
        self.root = root
        self.scene = root / "base.zarr"
        self.val = root / "val.zarr"
        synthesize_riverworld(self.scene, height=96, width=80, seed=1, tile=64, progress=False)
        synthesize_riverworld(self.val, height=96, width=80, seed=2, tile=64, progress=False)
        self.tif, self.mask = synthesize_riverworld(root / "img.tif", height=64, seed=3, tile=32, progress=False)
        self.config = {
            "data": {"train": [str(self.scene)], "val": [str(self.val)]},
            "model": {"name": "elegantseg-cpu", "overrides": {"dim": 16, "hidden_dim": 16}},
            "optim": {"warmup_iters": 1}, "memory": {"policy": "none"},
            "iters": 2, "val_every": 2, "ckpt_every": 2, "log_every": 1, "out_dir": str(root / "run"),
        }
        self.run = root / "run"
        self.ckpt = Trainer(config_from_dict(self.config), progress=False).fit()
        self.last = self.run / "last.pt"
        self.pred = root / "pred.zarr"
        shutil.copytree(self.scene, self.pred)
        predict_scene(self.ckpt, self.pred, progress=False)
        evaluate_scene(self.pred, progress=False)


F = Fixtures()


# --- helpers that make inputs in a case's folder ------------------------------------------------
def digest(path: Path) -> str:
    """One hash of a file or of a whole folder (names and contents), to tell whether it changed."""
    h = hashlib.sha256()
    if path.is_file():
        h.update(path.read_bytes())
    elif path.is_dir():
        for p in sorted(path.rglob("*")):
            h.update(str(p.relative_to(path)).encode())
            if p.is_file():
                h.update(p.read_bytes())
    else:
        return "absent"
    return h.hexdigest()


def copy(src: Path, d: Path, name: str | None = None) -> str:
    dst = d / (name or src.name)
    (shutil.copytree if src.is_dir() else shutil.copyfile)(src, dst)
    return str(dst)


def scene(d: Path, name: str = "s.zarr", src: Path | None = None) -> str:
    return copy(src or F.scene, d, name)


def edit_json(path: Path, fn) -> None:
    data = json.loads(path.read_text())
    fn(data)
    path.write_text(json.dumps(data))


def root_attrs(s: str, fn) -> None:
    edit_json(Path(s) / "zarr.json", lambda d: fn(d["attributes"]["elegantviz"]))


def write_tif(path: Path, data, crs="EPSG:32615", origin=(500000, 4500000), res=1.0, nodata=None) -> str:
    import numpy as np
    import rasterio
    from rasterio.transform import from_origin

    data = np.asarray(data)
    data = data[None] if data.ndim == 2 else data
    profile = dict(driver="GTiff", count=data.shape[0], height=data.shape[1], width=data.shape[2],
                   dtype=data.dtype, crs=crs, transform=from_origin(*origin, res, res), nodata=nodata)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return str(path)


def image(h=64, w=64, bands=4, dtype="uint8", fill=None):
    import numpy as np

    rng = np.random.default_rng(0)
    if fill is not None:
        return np.full((bands, h, w), fill, dtype)
    return rng.integers(0, 200, (bands, h, w)).astype(dtype)


def small_scene(d: Path, h: int, w: int, bands: int = 4, name: str = "small.zarr") -> str:
    """A scene of any size (riverworld needs 64 px): a random image with a riverworld mask."""
    import numpy as np

    from elegantviz.io.convert import convert_raster

    tif = write_tif(d / f"{name}.tif", image(h, w, bands))
    mask = write_tif(d / f"{name}_mask.tif", (np.arange(h * w).reshape(h, w) % 5).astype("uint8"))
    convert_raster([tif], d / name, mask=mask, classes="riverworld", tile=64, progress=False)
    return str(d / name)


def scene_with_gt(d: Path, values, table=None, name: str = "s.zarr") -> str:
    """The base scene with labels/gt replaced (every pixel ``values``, or a given array)."""
    import numpy as np

    from elegantviz.classes import RIVERWORLD
    from elegantviz.io.store import open_scene

    s = scene(d, name)
    sc = open_scene(s, mode="a")
    gt = np.full(sc.shape[1:], values, np.uint8) if np.isscalar(values) else values
    sc.add_labels("gt", gt, classes=table or RIVERWORLD, overwrite=True, progress=False)
    return s


def three_band_scene(d: Path, name: str = "s3.zarr") -> str:
    from elegantviz.io.convert import convert_raster

    convert_raster([F.tif], d / name, bands=[1, 2, 3], mask=F.mask, classes="riverworld", tile=64, progress=False)
    return str(d / name)


def chunk(s: str, part: str = "0", key: str = "0/0/0") -> Path:
    return Path(s) / part / "c" / key


def remove_chunk(s: str, part="0", key="0/0/0") -> str:
    chunk(s, part, key).unlink()
    return s


def corrupt_chunk(s: str, part="0", key="0/0/0") -> str:
    chunk(s, part, key).write_bytes(b"\x28\xb5\x2f\xfd garbage, not zstd " * 4)
    return s


def checkpoint(d: Path, fn=None, name: str = "bad.pt", src: Path | None = None) -> str:
    """A copy of the trained checkpoint with ``fn(ck)`` applied to its dict."""
    import torch

    ck = torch.load(src or F.ckpt, map_location="cpu", weights_only=False)
    if fn is not None:
        ck = fn(ck) or ck
    torch.save(ck, d / name)
    return str(d / name)


def raw(d: Path, data: bytes, name: str) -> str:
    (d / name).write_bytes(data)
    return str(d / name)


def truncated(src: Path, d: Path, name: str, keep: float = 0.5) -> str:
    data = src.read_bytes()
    return raw(d, data[: int(len(data) * keep)], name)


def bitrot(src: Path, d: Path, name: str) -> str:
    """The file with a run of bytes in its second half flipped (tile data, past the header)."""
    data = bytearray(src.read_bytes())
    start = len(data) * 2 // 3
    for i in range(start, min(start + 256, len(data))):
        data[i] ^= 0xFF
    return raw(d, bytes(data), name)


def config(d: Path, edits: dict | None = None, drop: tuple[str, ...] = (), name: str = "cfg.yaml",
           text: str | None = None) -> str:
    """The tiny training config with dotted-key ``edits`` (and ``drop``), out_dir in the case folder."""
    import copy as _copy

    import yaml

    if text is not None:
        (d / name).write_text(text)
        return str(d / name)
    cfg = _copy.deepcopy(F.config)
    cfg["out_dir"] = str(d / "run")
    for key, value in (edits or {}).items():
        *path, last = key.split(".")
        node = cfg
        for p in path:
            node = node.setdefault(p, {})
        node[last] = value
    for key in drop:
        *path, last = key.split(".")
        node = cfg
        for p in path:
            node = node[p]
        del node[last]
    (d / name).write_text(yaml.safe_dump(cfg))
    return str(d / name)


def run_copy(d: Path, name: str = "run") -> str:
    return copy(F.run, d, name)


def lock_held(s: str) -> str:
    Path(s + ".lock").write_text(json.dumps({"pid": os.getpid(), "host": os.uname().nodename,
                                             "command": "predict", "since": "now"}))
    return s


# --- checks run after the command ---------------------------------------------------------------
def unchanged(rel: str, ref: Callable[[], Path] | None = None):
    """``rel`` in the case folder holds what it held before (or what ``ref`` holds)."""
    def check(d: Path) -> str | None:
        before = BEFORE.get((d, rel)) if ref is None else digest(ref())
        return None if digest(d / rel) == before else f"{rel} was changed"
    check.snapshot = rel
    return check


def absent(*rels: str):
    def check(d: Path) -> str | None:
        made = [r for r in rels if (d / r).exists()]
        return f"{', '.join(made)} written for a refused input" if made else None
    return check


def both(*checks):
    def check(d: Path) -> str | None:
        for c in checks:
            problem = c(d)
            if problem:
                return problem
        return None
    check.snapshot = [getattr(c, "snapshot", None) for c in checks]
    return check


def no_labels(rel: str, *names: str):
    def check(d: Path) -> str | None:
        from elegantviz.io.store import open_scene

        try:
            have = open_scene(str(d / rel), allow_incomplete=True).labels
        except Exception as e:  # noqa: BLE001 - a store the command broke
            return f"{rel} no longer opens ({type(e).__name__})"
        made = [n for n in names if n in have]
        return f"labels/{', labels/'.join(made)} written for a refused input" if made else None
    return check


BEFORE: dict[tuple[Path, str], str] = {}


def snapshots(check) -> list[str]:
    s = getattr(check, "snapshot", None)
    if s is None:
        return []
    if isinstance(s, list):
        return [x for x in s if x]
    return [s]


# --- the cases ------------------------------------------------------------------------------------
REFUSE = "refused in one line naming {}"
NOTHING = "; nothing written"


def strict_json(path: Path) -> None:
    """zarr.json as strict JSON (no NaN/Infinity literals, which other readers refuse)."""
    def bad(token):
        raise ValueError(f"{path}: {token} is not JSON")
    json.loads(path.read_text(), parse_constant=bad)


def opens(rel: str, shape=None, labels=()):
    """The store opens as a complete scene (of ``shape``, with ``labels``) and zarr.json is strict JSON."""
    def check(d: Path) -> str | None:
        from elegantviz.io.store import open_scene

        try:
            strict_json(d / rel / "zarr.json")
            s = open_scene(str(d / rel))
        except Exception as e:  # noqa: BLE001
            return f"{rel} is not a valid store ({str(e)[:120]})"
        if shape is not None and tuple(s.shape) != tuple(shape):
            return f"{rel} has shape {s.shape}, expected {shape}"
        missing = [n for n in labels if n not in s.labels]
        return f"{rel} lacks labels/{missing[0]}" if missing else None
    return check


def intact(rel: str):
    """A copy of the base scene whose every file is as it was (gt and image untouched)."""
    return unchanged(rel)


def touch(d: Path, name: str, text: str = "x") -> str:
    (d / name).parent.mkdir(parents=True, exist_ok=True)
    (d / name).write_text(text)
    return str(d / name)


def mkdir(d: Path, name: str) -> str:
    (d / name).mkdir(parents=True)
    return str(d / name)


def convert_cases() -> None:
    c = "convert"
    case(c, "source does not exist", REFUSE.format("the file") + NOTHING,
         lambda d: [c, "nope.tif", "o.zarr"], "nope.tif", verify=absent("o.zarr"))
    case(c, "source is a text file", REFUSE.format("the file") + NOTHING,
         lambda d: [c, raw(d, b"hello\n", "x.tif"), "o.zarr"], "x.tif", verify=absent("o.zarr"))
    case(c, "source is an empty file", REFUSE.format("the file") + NOTHING,
         lambda d: [c, raw(d, b"", "x.tif"), "o.zarr"], "x.tif", verify=absent("o.zarr"))
    case(c, "source is a folder", REFUSE.format("the folder") + NOTHING,
         lambda d: [c, str(d), "o.zarr"], str("cases"), verify=absent("o.zarr"))
    case(c, "truncated GeoTIFF", REFUSE.format("the file"),
         lambda d: [c, truncated(F.tif, d, "t.tif"), "o.zarr"], "t.tif")
    case(c, "bit-rotted GeoTIFF (tile data flipped)", REFUSE.format("the file"),
         lambda d: [c, bitrot(F.tif, d, "r.tif"), "o.zarr"], "r.tif")
    case(c, "output is a plain folder of the user's files", REFUSE.format("the folder") + "; the files kept",
         lambda d: ((d / "mine").mkdir(), (d / "mine" / "notes.txt").write_text("mine"),
                    [c, str(F.tif), "mine"])[-1], "mine", verify=unchanged("mine"))
    case(c, "output is a plain folder, with --overwrite", REFUSE.format("the folder") + "; the files kept",
         lambda d: ((d / "mine").mkdir(), (d / "mine" / "notes.txt").write_text("mine"),
                    [c, str(F.tif), "mine", "--overwrite"])[-1], "mine", verify=unchanged("mine"))
    case(c, "output is an existing file", REFUSE.format("the file") + "; the file kept",
         lambda d: ((d / "o.zarr").write_text("x"), [c, str(F.tif), "o.zarr"])[-1], "o.zarr",
         verify=unchanged("o.zarr"))
    case(c, "output is the current folder", REFUSE.format("the output") + "; the folder kept",
         lambda d: ((d / "keep.txt").write_text("x"), [c, str(F.tif), "."])[-1], ".",
         verify=lambda d: None if (d / "keep.txt").is_file() else "keep.txt deleted")
    case(c, "output is the source file itself", REFUSE.format("the file") + "; the source kept",
         lambda d: [c, copy(F.tif, d, "x.tif"), "x.tif"], "x.tif", verify=unchanged("x.tif"))
    case(c, "output store exists, no --overwrite", REFUSE.format("the store") + "; the store kept",
         lambda d: [c, str(F.tif), scene(d, "o.zarr")], "o.zarr", verify=unchanged("o.zarr"))
    case(c, "output in a read-only folder", REFUSE.format("the output"),
         lambda d: ((d / "ro").mkdir(), [c, str(F.tif), "ro/o.zarr"])[-1], "o.zarr", wrap=("ro", "ro"))
    case(c, "output on a full disk", REFUSE.format("the output"),
         lambda d: ((d / "disk").mkdir(), [c, str(F.tif), "disk/o.zarr"])[-1], "o.zarr", wrap=("full", "disk", 0))
    case(c, "output's parent is a file", REFUSE.format("the output") + NOTHING,
         lambda d: ((d / "f").write_text("x"), [c, str(F.tif), "f/o.zarr"])[-1], "f/o.zarr")
    case(c, "empty output path", REFUSE.format("the output"), lambda d: [c, str(F.tif), ""], "output")
    case(c, "no source and no --band", REFUSE.format("SRC or --band"), lambda d: [c, "o.zarr"], ("SRC", "--band"))
    for spec, why in (("0", "band 0"), ("5", "band 5 of 4"), ("a,b", "not numbers"), ("", "empty"),
                      ("1,,2", "an empty item"), ("-1", "negative"), ("1,1,1,1,1", "one band five times")):
        case(c, f"--bands {spec!r} ({why})", REFUSE.format("--bands") + NOTHING,
             lambda d, spec=spec: [c, str(F.tif), "o.zarr", f"--bands={spec}"], ("--bands", "band"),
             verify=absent("o.zarr"))
    case(c, "--band-names: 2 names for 4 bands", REFUSE.format("--band-names") + NOTHING,
         lambda d: [c, str(F.tif), "o.zarr", "--band-names", "R,G"], ("band names", "--band-names"),
         verify=absent("o.zarr"))
    case(c, "--band-names with an empty name", REFUSE.format("--band-names") + NOTHING,
         lambda d: [c, str(F.tif), "o.zarr", "--band-names", "R,,B,N"], "--band-names", verify=absent("o.zarr"))
    case(c, "--band-names with a duplicate", REFUSE.format("--band-names") + NOTHING,
         lambda d: [c, str(F.tif), "o.zarr", "--band-names", "R,R,B,N"], "--band-names", verify=absent("o.zarr"))
    case(c, "--band files on different grids", REFUSE.format("the second file") + NOTHING,
         lambda d: [c, "o.zarr", "--band", write_tif(d / "a.tif", image(64, 64, 1)),
                    "--band", write_tif(d / "b.tif", image(32, 32, 1))], "b.tif", verify=absent("o.zarr"))
    case(c, "--band file with 4 bands", REFUSE.format("the file") + NOTHING,
         lambda d: [c, "o.zarr", "--band", str(F.tif), "--band", str(F.tif)], "img.tif", verify=absent("o.zarr"))
    case(c, "mask does not exist", REFUSE.format("the mask") + NOTHING,
         lambda d: [c, str(F.tif), "o.zarr", "--mask", "nomask.tif"], "nomask.tif", verify=absent("o.zarr"))
    case(c, "mask in another CRS", REFUSE.format("the mask") + NOTHING,
         lambda d: [c, str(F.tif), "o.zarr", "--mask", write_tif(d / "m.tif", image(64, 64, 1, fill=1)[0],
                                                                   crs="EPSG:4326")], "m.tif",
         verify=absent("o.zarr"))
    case(c, "mask with another transform", REFUSE.format("the mask") + NOTHING,
         lambda d: [c, str(F.tif), "o.zarr", "--mask", write_tif(d / "m.tif", image(64, 64, 1, fill=1)[0],
                                                                   origin=(500100, 4500000))], "m.tif",
         verify=absent("o.zarr"))
    case(c, "mask of another size", REFUSE.format("the mask") + NOTHING,
         lambda d: [c, str(F.tif), "o.zarr", "--mask", write_tif(d / "m.tif", image(32, 32, 1, fill=1)[0])],
         "m.tif", verify=absent("o.zarr"))
    case(c, "mask with 2 bands", REFUSE.format("the mask") + NOTHING,
         lambda d: [c, str(F.tif), "o.zarr", "--mask", write_tif(d / "m.tif", image(64, 64, 2, fill=1))],
         "m.tif", verify=absent("o.zarr"))
    case(c, "mask with fractional float values", REFUSE.format("the mask") + " (class values are whole numbers)",
         lambda d: [c, str(F.tif), "o.zarr", "--mask", write_tif(d / "m.tif", image(64, 64, 1, "float32", 1.5)[0])],
         "m.tif", verify=absent("o.zarr"))
    case(c, "mask with no class value (all nodata)", REFUSE.format("the mask") + NOTHING,
         lambda d: [c, str(F.tif), "o.zarr", "--mask", write_tif(d / "m.tif", image(64, 64, 1, fill=0)[0], nodata=0)],
         "m.tif", verify=absent("o.zarr"))
    case(c, "--strict with mask values outside the table", REFUSE.format("the mask") + NOTHING,
         lambda d: [c, str(F.tif), "o.zarr", "--strict", "--classes", "riverworld", "--mask",
                    write_tif(d / "m.tif", image(64, 64, 1, fill=9)[0])], "m.tif", verify=absent("o.zarr"))
    case(c, "--classes unknown name", REFUSE.format("--classes") + NOTHING,
         lambda d: [c, str(F.tif), "o.zarr", "--mask", str(F.mask), "--classes", "nosuch"], "nosuch",
         verify=absent("o.zarr"))
    case(c, "--classes JSON file that is not JSON", REFUSE.format("the JSON file") + NOTHING,
         lambda d: [c, str(F.tif), "o.zarr", "--mask", str(F.mask), "--classes", raw(d, b"{not json", "t.json")],
         "t.json", verify=absent("o.zarr"))
    case(c, "--classes JSON of the wrong shape", REFUSE.format("the JSON file") + NOTHING,
         lambda d: [c, str(F.tif), "o.zarr", "--mask", str(F.mask), "--classes", raw(d, b'{"x": 1}', "t.json")],
         "t.json", verify=absent("o.zarr"))
    case(c, "--classes without --mask", REFUSE.format("--classes") + " (it has nothing to apply to)" + NOTHING,
         lambda d: [c, str(F.tif), "o.zarr", "--classes", "riverworld"], "--classes", verify=absent("o.zarr"))
    for value, why in (("300", "beyond uint8"), ("nan", "NaN on uint8"), ("-1", "negative on uint8"),
                       ("0.5", "fraction on uint8"), ("abc", "not a number"), ("inf", "infinite"),
                       ("1e400", "overflows to inf")):
        case(c, f"--nodata {value} ({why})", REFUSE.format("--nodata") + NOTHING,
             lambda d, v=value: [c, str(F.tif), "o.zarr", f"--nodata={v}"], "--nodata", verify=absent("o.zarr"))
    for value, why in (("0", "zero"), ("-64", "negative"), ("7", "below 16"), ("17", "odd"), ("abc", "not a number"),
                       ("1.5", "a fraction"), ("99999999999", "huge"), ("nan", "NaN")):
        case(c, f"--chunk {value} ({why})", REFUSE.format("--chunk") + NOTHING,
             lambda d, v=value: [c, str(F.tif), "o.zarr", f"--chunk={v}"], "--chunk", verify=absent("o.zarr"))
    case(c, "float image with +-inf pixels", "works: inf pixels become counted nodata, zarr.json strict JSON",
         lambda d: [c, write_tif(d / "f.tif", _with_inf()), "o.zarr"], ok=True, verify=opens("o.zarr"))
    case(c, "float image of NaN only", REFUSE.format("the file") + " (no valid pixel)",
         lambda d: [c, write_tif(d / "f.tif", image(64, 64, 2, "float32", float("nan"))), "o.zarr"], "f.tif")
    case(c, "complex-valued GeoTIFF", REFUSE.format("the file") + " (pixels must be real numbers)" + NOTHING,
         lambda d: [c, write_tif(d / "z.tif", image(32, 32, 1, "complex64", 1)), "o.zarr"], "z.tif",
         verify=absent("o.zarr"))
    case(c, "1x1 GeoTIFF", "works (a 1x1 store that opens) or refused in one line naming the file",
         lambda d: [c, write_tif(d / "p.tif", image(1, 1, 4)), "o.zarr"], "p.tif", ok=True,
         verify=lambda d: opens("o.zarr", (4, 1, 1))(d) if (d / "o.zarr").exists() else None)
    case(c, "mask is an RGB image without --classes", REFUSE.format("the mask"),
         lambda d: [c, str(F.tif), "o.zarr", "--mask", write_tif(d / "m.tif", image(64, 64, 3))], "m.tif",
         verify=absent("o.zarr"))


def _with_inf():
    import numpy as np

    a = image(64, 64, 2, "float32")
    a[0, 3, 3], a[1, 5, 5] = np.inf, -np.inf
    return a


def synth_cases() -> None:
    c = "synth"
    for opt, values in (("--size", ("0", "-5", "abc", "1.5", "63", "nan", "1e3", "99999999999999")),
                        ("--width", ("0", "abc", "-64", "99999999999999")),
                        ("--seed", ("-1", "abc", "1.5", str(2 ** 70))),
                        ("--chunk", ("0", "7", "17", "abc", "1.5", "-512"))):
        for v in values:
            size = [] if opt == "--size" else ["--size=64"]
            case(c, f"{opt} {v}", REFUSE.format(opt) + NOTHING,
                 lambda d, o=opt, v=v, size=size: [c, "o.zarr", *size, f"{o}={v}"], opt, verify=absent("o.zarr"),
                 timeout=60)
    case(c, "output named x.png", REFUSE.format("the output") + NOTHING, lambda d: [c, "x.png", "--size", "64"],
         "x.png", verify=absent("x.png"))
    case(c, "output named x (no suffix)", "works (a scene store named x) or refused naming the output",
         lambda d: [c, "x", "--size", "64"], "x", ok=True,
         verify=lambda d: opens("x", (4, 64, 64))(d) if (d / "x").exists() else None)
    case(c, "output is a plain folder of the user's files", REFUSE.format("the folder") + "; files kept",
         lambda d: ((d / "mine").mkdir(), (d / "mine" / "a.txt").write_text("x"),
                    [c, "mine", "--size", "64", "--overwrite"])[-1], "mine", verify=unchanged("mine"))
    case(c, "output store exists, no --overwrite", REFUSE.format("the store") + "; kept",
         lambda d: [c, scene(d, "o.zarr"), "--size", "64"], "o.zarr", verify=unchanged("o.zarr"))
    case(c, "GeoTIFF output exists, no --overwrite", REFUSE.format("the file") + "; kept",
         lambda d: [c, copy(F.tif, d, "o.tif"), "--size", "64"], "o.tif", verify=unchanged("o.tif"))
    case(c, "GeoTIFF's mask exists, no --overwrite", REFUSE.format("the mask file") + "; nothing written",
         lambda d: (touch(d, "o_mask.tif"), [c, "o.tif", "--size", "64"])[-1],
         "o_mask.tif", verify=both(absent("o.tif"), unchanged("o_mask.tif")))
    case(c, "output in a read-only folder", REFUSE.format("the output"),
         lambda d: ((d / "ro").mkdir(), [c, "ro/o.zarr", "--size", "64"])[-1], "o.zarr", wrap=("ro", "ro"))
    case(c, "GeoTIFF output in a read-only folder", REFUSE.format("the output"),
         lambda d: ((d / "ro").mkdir(), [c, "ro/o.tif", "--size", "64"])[-1], "o.tif", wrap=("ro", "ro"))
    case(c, "output on a full disk", REFUSE.format("the output"),
         lambda d: ((d / "disk").mkdir(), [c, "disk/o.zarr", "--size", "128"])[-1], "o.zarr",
         wrap=("full", "disk", 0))
    case(c, "output's parent is a file", REFUSE.format("the output"),
         lambda d: ((d / "f").write_text("x"), [c, "f/o.zarr", "--size", "64"])[-1], "f/o.zarr")
    case(c, "empty output path", REFUSE.format("the output"), lambda d: [c, "", "--size", "64"], "output")


def info_check_cases() -> None:
    for c in ("info", "check"):
        case(c, f"{c}: path does not exist", REFUSE.format("the path"), lambda d, c=c: [c, "nope.zarr"], "nope.zarr")
        case(c, f"{c}: a plain folder", REFUSE.format("the folder"),
             lambda d, c=c: (touch(d, "f/a.txt"), [c, "f"])[-1], "f")
        case(c, f"{c}: a file", REFUSE.format("the file"), lambda d, c=c: [c, touch(d, "x.zarr")], "x.zarr")
        case(c, f"{c}: zarr.json is not JSON", REFUSE.format("zarr.json or the store"),
             lambda d, c=c: [c, (s := scene(d)), (Path(s) / "zarr.json").write_text("{oops")][:2], "s.zarr")
        case(c, f"{c}: zarr.json is empty", REFUSE.format("the store"),
             lambda d, c=c: [c, (s := scene(d)), (Path(s) / "zarr.json").write_text("")][:2], "s.zarr")
        case(c, f"{c}: zarr.json is a JSON list", REFUSE.format("the store"),
             lambda d, c=c: [c, (s := scene(d)), (Path(s) / "zarr.json").write_text("[]")][:2], "s.zarr")
        case(c, f"{c}: level 0 shape edited in zarr.json", REFUSE.format("the store and level 0") +
             " (the manifest says otherwise)",
             lambda d, c=c: [c, (s := scene(d)), edit_json(Path(s) / "0" / "zarr.json",
                                                          lambda j: j.update(shape=[4, 200, 80]))][:2], "s.zarr")
        case(c, f"{c}: level 0 dtype edited in zarr.json", REFUSE.format("the store and level 0"),
             lambda d, c=c: [c, (s := scene(d)), edit_json(Path(s) / "0" / "zarr.json",
                                                          lambda j: j.update(data_type="uint16"))][:2], "s.zarr")
        case(c, f"{c}: labels/gt shape edited in zarr.json", REFUSE.format("labels/gt"),
             lambda d, c=c: [c, (s := scene(d)), edit_json(Path(s) / "labels/gt/0/zarr.json",
                                                          lambda j: j.update(shape=[50, 80]))][:2], ("labels/gt", "s.zarr"))
        case(c, f"{c}: a gt chunk missing", REFUSE.format("the chunk"),
             lambda d, c=c: [c, remove_chunk(scene(d), "labels/gt/0", "0/0")], ("labels/gt", "chunk", "s.zarr"))
        case(c, f"{c}: a gt chunk corrupt", REFUSE.format("the chunk"),
             lambda d, c=c: [c, corrupt_chunk(scene(d), "labels/gt/0", "0/0")], ("labels/gt", "chunk", "s.zarr"))
        case(c, f"{c}: level 1 deleted", REFUSE.format("the store's level 1"),
             lambda d, c=c: [c, (s := scene(d)), shutil.rmtree(Path(s) / "1")][:2], "s.zarr")
        case(c, f"{c}: labels/gt/0/zarr.json deleted", REFUSE.format("labels/gt"),
             lambda d, c=c: [c, (s := scene(d)), (Path(s) / "labels/gt/0/zarr.json").unlink()][:2], ("labels/gt", "s.zarr"))
        case(c, f"{c}: elegantviz.bands lists 3 names for 4 bands", REFUSE.format("the store's bands"),
             lambda d, c=c: [c, (s := scene(d)), root_attrs(s, lambda a: a.update(bands=["r", "g", "b"]))][:2],
             ("s.zarr",))
        case(c, f"{c}: elegantviz.classes is a number", REFUSE.format("the store's classes"),
             lambda d, c=c: [c, (s := scene(d)), root_attrs(s, lambda a: a.update(classes=5))][:2], "s.zarr")
        case(c, f"{c}: elegantviz.transform is a string", REFUSE.format("the store's transform"),
             lambda d, c=c: [c, (s := scene(d)), root_attrs(s, lambda a: a.update(transform="x"))][:2], "s.zarr")
        case(c, f"{c}: elegantviz.nodata is a string", REFUSE.format("the store's nodata"),
             lambda d, c=c: [c, (s := scene(d)), root_attrs(s, lambda a: a.update(nodata="abc"))][:2], "s.zarr")
        case(c, f"{c}: elegantviz.bands is not a list", REFUSE.format("the store's bands"),
             lambda d, c=c: [c, (s := scene(d)), root_attrs(s, lambda a: a.update(bands="rgbn"))][:2], "s.zarr")
    case("check", "check: an image chunk missing", REFUSE.format("the store") + " (stdout names the chunk)",
         lambda d: ["check", remove_chunk(scene(d))], "s.zarr")
    case("check", "check: an image chunk corrupt", REFUSE.format("the store"),
         lambda d: ["check", corrupt_chunk(scene(d))], "s.zarr")
    case("check", "check: a chunk beyond the grid", REFUSE.format("the store"),
         lambda d: ["check", (s := scene(d)), touch(Path(s), "0/c/9/9/9")][:2], "s.zarr")
    case("info", "info: 1 of 2 scenes missing (info takes one)", "refused by argparse in one line",
         lambda d: ["info", scene(d), "nope.zarr"], ("unrecognized", "nope.zarr"))


def train_cases() -> None:
    c = "train"
    for v in ("0", "-5", "abc", "1.5", "nan", "1e3"):
        case(c, f"--iters {v}", REFUSE.format("--iters") + NOTHING, lambda d, v=v: [c, config(d), f"--iters={v}"],
             "--iters", verify=absent("run"))
    for v in ("lots", "-1GB", "0", "12 XB", "1e999GB", "", "nan"):
        case(c, f"--memory-budget {v!r}", REFUSE.format("--memory-budget") + NOTHING,
             lambda d, v=v: [c, config(d, {"memory.policy": "auto"}), f"--memory-budget={v}"], "--memory-budget",
             verify=absent("run"))
    case(c, "--memory-budget 1KB (too small for any policy)", REFUSE.format("the budget") + " with figures" + NOTHING,
         lambda d: [c, config(d, {"memory.policy": "auto"}), "--memory-budget=1KB"], ("budget",),
         verify=absent("run/best.pt"))
    case(c, "--policy bogus", REFUSE.format("--policy"), lambda d: [c, config(d), "--policy", "bogus"], "--policy",
         verify=absent("run"))
    case(c, "--out a finished run (no --resume/--overwrite)", REFUSE.format("the run folder") + "; best.pt kept",
         lambda d: [c, config(d), "--out", run_copy(d)], "run", verify=unchanged("run"))
    case(c, "--out is a file", REFUSE.format("the file"), lambda d: [c, config(d), "--out", touch(d, "runfile")],
         "runfile", verify=unchanged("runfile"))
    case(c, "--out in a read-only folder", REFUSE.format("the run folder"),
         lambda d: (mkdir(d, "ro"), [c, config(d), "--out", "ro/run"])[-1], "ro/run", wrap=("ro", "ro"))
    case(c, "--out on a full disk", REFUSE.format("the run folder or checkpoint"),
         lambda d: (mkdir(d, "disk"), [c, config(d), "--out", "disk/run"])[-1], "disk/run",
         wrap=("full", "disk", 0))
    case(c, "--resume with nothing to resume", REFUSE.format("last.pt") + NOTHING,
         lambda d: [c, config(d), "--resume"], "last.pt", verify=absent("run/best.pt"))
    case(c, "--resume from a truncated last.pt", REFUSE.format("last.pt"),
         lambda d: (mkdir(d, "run"), truncated(F.last, d, "run/last.pt"), [c, config(d), "--resume"])[-1], "last.pt")
    case(c, "--resume from random bytes", REFUSE.format("last.pt"),
         lambda d: (mkdir(d, "run"), raw(d, os.urandom(4096), "run/last.pt"), [c, config(d), "--resume"])[-1],
         "last.pt")
    case(c, "--resume another run's last.pt (other lr)", REFUSE.format("last.pt") + "; its weights not adopted",
         lambda d: (run_copy(d), [c, config(d, {"optim.lr": 0.5}), "--resume"])[-1], "last.pt",
         verify=unchanged("run"))
    case(c, "--resume an exported checkpoint", REFUSE.format("last.pt"),
         lambda d: (mkdir(d, "run"), _export(d / "run" / "last.pt"), [c, config(d), "--resume"])[-1], "last.pt")
    case(c, "--resume and --overwrite together", REFUSE.format("the two options"),
         lambda d: (run_copy(d), [c, config(d), "--resume", "--overwrite"])[-1], ("--resume", "--overwrite"),
         verify=unchanged("run"))
    case(c, "config file does not exist", REFUSE.format("the config"), lambda d: [c, "nope.yaml"], "nope.yaml")
    case(c, "config is not YAML", REFUSE.format("the config"), lambda d: [c, config(d, text="a: [1,\n  b: }")],
         "cfg.yaml")
    case(c, "config is a YAML list", REFUSE.format("the config"), lambda d: [c, config(d, text="- 1\n- 2\n")],
         "cfg.yaml")
    case(c, "config is a YAML string", REFUSE.format("the config"), lambda d: [c, config(d, text="hello\n")],
         "cfg.yaml")
    case(c, "config is a directory", REFUSE.format("the config"), lambda d: [c, mkdir(d, "conf.yaml")], "conf.yaml")
    case(c, "config is binary junk", REFUSE.format("the config"), lambda d: [c, raw(d, bytes(range(256)), "j.yaml")],
         "j.yaml")
    yaml_values = [
        ("iters", "ten"), ("iters", -5), ("iters", 0), ("iters", 1.5), ("iters", True), ("iters", float("inf")),
        ("optim.lr", "abc"), ("optim.lr", 0), ("optim.lr", -1), ("optim.lr", float("nan")), ("optim.lr", float("inf")),
        ("ckpt_every", 0), ("val_every", -1), ("log_every", 0), ("data.level", 5), ("data.level", -1),
        ("data.level", "0"), ("model.name", "nosuch-net"), ("model.name", 5), ("model.overrides", {"nope": 1}),
        ("model.overrides", {"dim": -1}), ("model.overrides", {"dim": "x"}), ("model.overrides", [1, 2]),
        ("bogus_key", 1), ("optim.lrr", 0.1), ("data.mode", "whole"), ("optim.optimizer", "adam"),
        ("optim.schedule", "linear"), ("optim.warmup", "none"), ("optim.betas", [2, 3]), ("optim.betas", "x"),
        ("optim.betas", [0.9]), ("optim.betas", [0.9, "a"]), ("optim.milestones", ["a"]), ("optim.milestones", [-1]),
        ("data.crop_size", 8), ("loss.sobel_ksize", 4), ("loss.sobel_ksize", 0), ("loss.w_bd", -1),
        ("loss.w_aux", float("nan")), ("memory.threshold", "lots"), ("memory.threshold", "-1MiB"),
        ("memory.budget", "lots"), ("memory.policy", "bogus"), ("device", "gpu0"), ("device", "cuda"),
        ("device", ""), ("device", "cuda:-1"), ("seed", -1), ("seed", 1.5), ("seed", 2 ** 70), ("precise_bn", -1),
        ("optim.momentum", 2), ("optim.accumulate", 0), ("optim.grad_clip", -1), ("optim.max_bad_steps", 0),
        ("amp", "yes"), ("data.flips", "no"), ("optim.warmup_iters", -1), ("optim.head_lr_mult", -1),
        ("optim.weight_decay", -0.1), ("data.label", "nosuch"), ("data.label", ""), ("data.train", []),
        ("data.train", ["nope.zarr"]), ("data.train", ["nomatch-*.zarr"]), ("data.train", "base.zarr"),
        ("data.train", [5]), ("data", "x"), ("optim", None), ("model.pretrained", "yes"), ("out_dir", ""),
        ("optim.min_lr", -1), ("optim.power", -2), ("optim.gamma", -0.1), ("optim.warmup_lr", -1),
        ("memory.spill_dir", 5), ("precise_bn", 100),
    ]
    for key, value in yaml_values:
        kind = f"YAML {key}: {value!r}"
        leaf = key.split(".")[-1]
        capped = key == "precise_bn" and value == 100  # more scenes than there are: all of them is right too
        note = " (refused, or capped at the scenes there are)" if capped else ""
        case(c, kind, REFUSE.format(f"the config and {key}") + " before any step" + note + NOTHING,
             lambda d, k=key, v=value: [c, config(d, {k: v})], (leaf, "cfg.yaml"),
             verify=None if capped else absent("run/best.pt"), ok=capped)
    case(c, "YAML data.val: a 3-band scene, 4-band training", REFUSE.format("the validation scene") + " before any step",
         lambda d: [c, config(d, {"data.val": [three_band_scene(d)]})], "s3.zarr", verify=absent("run/best.pt"))
    case(c, "YAML data.val: another class table", REFUSE.format("the validation scene") + " before any step",
         lambda d: [c, config(d, {"data.val": [_other_table_scene(d)]})], "o.zarr", verify=absent("run/best.pt"))
    case(c, "YAML data.train: no labelled pixel", REFUSE.format("the scene") + " before any step",
         lambda d: [c, config(d, {"data.train": [scene_with_gt(d, 255)]})], "s.zarr", verify=absent("run/best.pt"))
    case(c, "YAML data.train: an incomplete store", REFUSE.format("the scene"),
         lambda d: [c, config(d, {"data.train": [_incomplete(scene(d))]})],
         "s.zarr", verify=absent("run/best.pt"))
    case(c, "YAML data.train: a gt chunk missing", REFUSE.format("the scene's chunk"),
         lambda d: [c, config(d, {"data.train": [remove_chunk(scene(d), "labels/gt/0", "0/0")]})], "s.zarr",
         verify=absent("run/best.pt"))
    case(c, "YAML data.train: an image chunk corrupt", REFUSE.format("the scene's chunk"),
         lambda d: [c, config(d, {"data.train": [corrupt_chunk(scene(d))]})], "s.zarr", verify=absent("run/best.pt"))
    case(c, "YAML data.train: two scenes, different class tables", REFUSE.format("the second scene"),
         lambda d: [c, config(d, {"data.train": [str(F.scene), _other_table_scene(d)]})], "o.zarr",
         verify=absent("run/best.pt"))
    case(c, "YAML data.train: a 1x1 scene", REFUSE.format("the scene") + " (too small for the network)",
         lambda d: [c, config(d, {"data.train": [small_scene(d, 1, 1)], "data.val": []})], "small.zarr",
         verify=absent("run/best.pt"))
    case(c, "YAML data.mode sliced, crop_size larger than the scenes", "refused naming data.crop_size, "
         "or works with the crop clipped to the scene", lambda d: [c, config(d, {"data.mode": "sliced",
                                                                                   "data.crop_size": 512})],
         ("crop_size",), ok=True, verify=lambda d: None)
    case(c, "YAML memory.spill_dir is a file", REFUSE.format("memory.spill_dir"),
         lambda d: [c, config(d, {"memory.policy": "disk", "memory.spill_dir": touch(d, "spill")})],
         ("spill_dir", "spill"), verify=absent("run/best.pt"))


def _incomplete(s: str) -> str:
    root_attrs(s, lambda a: a.update(complete=False))
    return s


def _export(dst: Path) -> None:
    from elegantviz.engine.checkpoints import export_model

    export_model(F.ckpt, dst)


def _other_table_scene(d: Path, name: str = "o.zarr") -> str:
    """The base scene with its gt under another class table (three classes)."""
    import numpy as np

    from elegantviz.classes import ClassTable
    from elegantviz.io.store import open_scene

    s = scene(d, name)
    sc = open_scene(s, mode="a")
    table = ClassTable.from_dict({"name": "three", "classes": [{"id": i, "name": n} for i, n in
                                                              enumerate(("a", "b", "c"))]})
    gt = np.asarray(sc.label("gt").compute()) % 3
    sc.add_labels("gt", gt.astype(np.uint8), classes=table, overwrite=True, progress=False)
    root_attrs(s, lambda a: a.update(classes=table.to_dict()))
    return s


def _ck_edit(fn):
    return lambda d: checkpoint(d, fn)


def _drop_weight(ck):
    del ck["model"][next(iter(ck["model"]))]


def _nan_weight(ck):
    import torch

    key = next(k for k, v in ck["model"].items() if v.is_floating_point())
    ck["model"][key] = torch.full_like(ck["model"][key], float("nan"))


def _three_classes(ck):
    t = dict(ck["classes"])
    t["classes"] = t["classes"][:3]
    t["default_pairs"] = []
    ck["classes"] = t


def _other_model(ck):
    ck["config"]["model"]["name"] = "elegantseg-s"
    ck["config"]["model"]["overrides"] = {}


def _wide_weights(ck):
    ck["config"]["model"]["overrides"] = {"dim": 32, "hidden_dim": 32}


def _set(key, value):
    def fn(ck):
        if value is KeyError:
            del ck[key]
        else:
            ck[key] = value
    return fn


PREDICT_CHECKPOINTS = [
    ("does not exist", lambda d: str(d / "nope.pt")),
    ("is a text file", lambda d: touch(d, "bad.pt", "not a checkpoint")),
    ("is empty", lambda d: raw(d, b"", "bad.pt")),
    ("is a folder", lambda d: mkdir(d, "bad.pt")),
    ("truncated", lambda d: truncated(F.ckpt, d, "bad.pt")),
    ("random bytes", lambda d: raw(d, os.urandom(20000), "bad.pt")),
    ("is a list, not a dict", lambda d: checkpoint(d, lambda ck: [1, 2])),
    ("has no model entry", _ck_edit(_set("model", KeyError))),
    ("has no config entry", _ck_edit(_set("config", KeyError))),
    ("has no classes entry", _ck_edit(_set("classes", KeyError))),
    ("has no norm entry", _ck_edit(_set("norm", KeyError))),
    ("has no in_chans entry", _ck_edit(_set("in_chans", KeyError))),
    ("is missing a weight", _ck_edit(_drop_weight)),
    ("holds NaN weights", _ck_edit(_nan_weight)),
    ("class table does not fit its head (3 for 5)", _ck_edit(_three_classes)),
    ("config names another model", _ck_edit(_other_model)),
    ("config overrides another width", _ck_edit(_wide_weights)),
    ("in_chans 3 for 4-band weights", _ck_edit(_set("in_chans", 3))),
    ("norm has 3 bands for 4", _ck_edit(lambda ck: ck.update(norm={"mean": [0.0] * 3, "std": [1.0] * 3}))),
    ("norm std holds zero", _ck_edit(lambda ck: ck.update(norm={"mean": [0.0] * 4, "std": [0.0] * 4}))),
    ("norm is a string", _ck_edit(_set("norm", "x"))),
    ("classes is a string", _ck_edit(_set("classes", "riverworld"))),
    ("config has iters 'x'", _ck_edit(lambda ck: ck["config"].update(iters="x"))),
    ("config model unknown", _ck_edit(lambda ck: ck["config"]["model"].update(name="nosuch"))),
    ("config overrides an unknown argument", _ck_edit(lambda ck: ck["config"]["model"].update(overrides={"nope": 1}))),
    ("bands list has 3 names", _ck_edit(_set("bands", ["r", "g", "b"]))),
]


def predict_cases() -> None:
    c = "predict"
    keep = intact("s.zarr")
    for kind, make in PREDICT_CHECKPOINTS:
        case(c, f"checkpoint {kind}", REFUSE.format("the checkpoint") + "; the scene untouched",
             lambda d, make=make: [c, make(d), scene(d)], ("bad.pt", "nope.pt"), verify=keep)
    case(c, "scene does not exist", REFUSE.format("the scene"), lambda d: [c, str(F.ckpt), "nope.zarr"], "nope.zarr")
    case(c, "scene is a plain folder", REFUSE.format("the folder") + "; its files kept",
         lambda d: (touch(d, "f/a.txt"), [c, str(F.ckpt), "f"])[-1], "f", verify=unchanged("f"))
    case(c, "second of two scenes missing", REFUSE.format("the missing scene") + " before predicting the first",
         lambda d: [c, str(F.ckpt), scene(d), "nope.zarr"], "nope.zarr", verify=no_labels("s.zarr", "pred"))
    case(c, "scene with 3 bands, model of 4", REFUSE.format("the scene"),
         lambda d: [c, str(F.ckpt), three_band_scene(d)], "s3.zarr", verify=no_labels("s3.zarr", "pred"))
    for h, w in ((1, 1), (8, 8), (64, 1), (1, 200)):
        case(c, f"a {h}x{w} scene", "works (labels/pred of the scene's shape) or refused naming the scene; "
             "never a complete labels/pred from a failed run",
             lambda d, h=h, w=w: [c, str(F.ckpt), small_scene(d, h, w)], "small.zarr", ok=True,
             verify=lambda d, h=h, w=w: _pred_ok(d / "small.zarr", (h, w)))
    case(c, "an image chunk missing", REFUSE.format("the chunk") + "; nothing predicted from fill values",
         lambda d: [c, str(F.ckpt), remove_chunk(scene(d))], ("chunk", "s.zarr"), verify=no_labels("s.zarr", "pred"))
    case(c, "an image chunk corrupt", REFUSE.format("the chunk"),
         lambda d: [c, str(F.ckpt), corrupt_chunk(scene(d))], ("chunk", "s.zarr"), verify=no_labels("s.zarr", "pred"))
    case(c, "a gt chunk missing (for labels/error)", REFUSE.format("the chunk") + "; no error map from fill values",
         lambda d: [c, str(F.ckpt), remove_chunk(scene(d), "labels/gt/0", "0/0")], ("chunk", "labels/gt"),
         verify=no_labels("s.zarr", "error"))
    case(c, "an incomplete scene store", REFUSE.format("the scene"),
         lambda d: [c, str(F.ckpt), (s := scene(d)), root_attrs(s, lambda a: a.update(complete=False))][:3], "s.zarr")
    case(c, "scene held by a live writer's lock", REFUSE.format("the scene and the lock") + "; untouched",
         lambda d: [c, str(F.ckpt), lock_held(scene(d))], ("s.zarr",), verify=keep)
    case(c, "scene in a read-only folder", REFUSE.format("the scene"),
         lambda d: [c, str(F.ckpt), scene(Path(mkdir(d, "ro")))], "s.zarr", wrap=("ro", "ro"))
    case(c, "scene on a full disk", REFUSE.format("the scene") + "; gt and image intact",
         lambda d: [c, str(F.ckpt), scene(Path(mkdir(d, "disk")))], "s.zarr", wrap=("full", "disk", 0),
         verify=lambda d: opens("disk/s.zarr", labels=("gt",))(d))
    for name, why in (("", "empty"), ("gt", "the ground truth"), ("hard", "derived"), ("error", "derived"),
                      ("a/b", "a path"), ("../x", "outside the store"), ("_predict", "private"), (".x", "hidden"),
                      ("error_pred", "derived error map"), (" ", "blank")):
        case(c, f"--name {name!r} ({why})", REFUSE.format("--name") + "; labels/ and maps/ untouched",
             lambda d, n=name: [c, str(F.ckpt), scene(d), f"--name={n}"], ("--name", "name"), verify=keep)
    case(c, "--name of labels the user made", REFUSE.format("the labels") + "; they are kept",
         lambda d: [c, str(F.ckpt), (scene(d), _user_labels(d))[1], "--name", "mine"],
         ("labels/mine", "mine"), verify=unchanged("s.zarr"))
    for v in ("0", "7", "abc", "-1", "1.5", "nan"):
        case(c, f"--crop {v}", REFUSE.format("--crop") + NOTHING,
             lambda d, v=v: [c, str(F.ckpt), scene(d), "--mode", "sliced", f"--crop={v}"], "--crop", verify=keep)
    case(c, "--crop 1000000000 (larger than any scene)", "works (windows clipped to the scene) or refused "
         "naming --crop", lambda d: [c, str(F.ckpt), scene(d), "--mode", "sliced", "--crop=1000000000"], "--crop",
         ok=True, verify=lambda d: _pred_ok(d / "s.zarr", (96, 80)), timeout=90)
    for v in ("1.0", "1.5", "-1", "nan", "inf", "abc", "0.9999"):
        case(c, f"--overlap {v}", REFUSE.format("--overlap") + NOTHING,
             lambda d, v=v: [c, str(F.ckpt), scene(d), "--mode", "sliced", "--crop", "16", f"--overlap={v}"],
             "--overlap", verify=keep, timeout=90)
    for v in ("0", "-64", "7", "abc", "1.5", "63", "nan"):
        case(c, f"--tile {v}", REFUSE.format("--tile") + NOTHING,
             lambda d, v=v: [c, str(F.ckpt), scene(d), f"--tile={v}"], "--tile", verify=keep, timeout=90)
    case(c, "--tile 1000000000 (larger than the scene)", "works (one tile) or refused naming --tile",
         lambda d: [c, str(F.ckpt), scene(d), "--tile=1000000000"], "--tile", ok=True,
         verify=lambda d: _pred_ok(d / "s.zarr", (96, 80)), timeout=90)
    case(c, "--tile with --mode sliced", REFUSE.format("--tile") + " (it is for holistic)" + NOTHING,
         lambda d: [c, str(F.ckpt), scene(d), "--mode", "sliced", "--tile", "64"], "--tile", verify=keep)
    case(c, "--crop with --mode holistic", REFUSE.format("--crop") + " (it is for sliced)" + NOTHING,
         lambda d: [c, str(F.ckpt), scene(d), "--crop", "64"], "--crop", verify=keep)
    case(c, "--overlap with --mode holistic", REFUSE.format("--overlap") + " (it is for sliced)" + NOTHING,
         lambda d: [c, str(F.ckpt), scene(d), "--overlap", "0.5"], "--overlap", verify=keep)
    for pair in ("lake:sea", "river", "river:river", "river:pond:x", ":", "river:"):
        case(c, f"--pair {pair!r}", REFUSE.format("--pair") + " before the run" + NOTHING,
             lambda d, p=pair: [c, str(F.ckpt), scene(d), f"--pair={p}"], ("--pair", "pair", pair.split(":")[0] or ":"),
             verify=keep)
    for dev in ("gpu0", "cuda:0", "", "cuda:-1", "tpu", "cpu:x"):
        case(c, f"--device {dev!r}", REFUSE.format("--device") + NOTHING,
             lambda d, dev=dev: [c, str(F.ckpt), scene(d), f"--device={dev}"], ("--device", "device"), verify=keep)
    case(c, "--mode whole", "refused by argparse in one line", lambda d: [c, str(F.ckpt), scene(d), "--mode", "whole"],
         "--mode", verify=keep)
    case(c, "--stdin-cancel without --progress-json", REFUSE.format("--stdin-cancel"),
         lambda d: [c, str(F.ckpt), scene(d), "--stdin-cancel"], "--stdin-cancel", verify=keep)
    case(c, "--progress-json with a missing checkpoint", REFUSE.format("the checkpoint") + " (and a JSON error line)",
         lambda d: [c, "nope.pt", scene(d), "--progress-json"], "nope.pt", verify=keep)


def _user_labels(d: Path) -> str:
    import numpy as np

    from elegantviz.io.store import open_scene

    s = str(d / "s.zarr")
    sc = open_scene(s, mode="a")
    sc.add_labels("mine", np.ones(sc.shape[1:], np.uint8), classes=sc.classes, progress=False)
    return s


def _pred_ok(path: Path, shape) -> str | None:
    """labels/pred, if there, has the scene's shape and opens; absent is fine after a refusal."""
    from elegantviz.io.store import open_scene

    try:
        s = open_scene(str(path))
    except Exception as e:  # noqa: BLE001
        return f"the scene no longer opens ({str(e)[:100]})"
    if "pred" not in s.labels:
        return None
    p = s.label("pred")
    if tuple(p.shape) != tuple(shape):
        return f"labels/pred has shape {p.shape}, expected {shape}"
    try:
        values = np.unique(np.asarray(p.compute()))
    except Exception as e:  # noqa: BLE001
        return f"labels/pred is complete but unreadable ({str(e)[:100]})"
    return None if values.max() < 5 or values.max() == 255 else f"labels/pred holds class {values.max()}"


import numpy as np  # noqa: E402  (used by the checks above, at run time)


def evaluate_cases() -> None:
    c = "evaluate"
    pred = lambda d: scene(d, "p.zarr", F.pred)  # noqa: E731
    keep = intact("p.zarr")
    case(c, "scene has no labels/pred", REFUSE.format("the scene"), lambda d: [c, scene(d)], "s.zarr",
         verify=absent("evaluation"))
    case(c, "scene does not exist", REFUSE.format("the scene"), lambda d: [c, "nope.zarr"], "nope.zarr",
         verify=absent("evaluation"))
    case(c, "second of two scenes missing", REFUSE.format("the missing scene") + " before any report",
         lambda d: [c, pred(d), "nope.zarr"], "nope.zarr", verify=absent("evaluation"))
    case(c, "--pred nosuch", REFUSE.format("the labels"), lambda d: [c, pred(d), "--pred", "nosuch"], "nosuch",
         verify=keep)
    case(c, "--gt nosuch", REFUSE.format("the labels"), lambda d: [c, pred(d), "--gt", "nosuch"], "nosuch", verify=keep)
    for pair in ("lake:sea", "river", "river:pond:x"):
        case(c, f"--pair {pair!r}", REFUSE.format("--pair") + NOTHING, lambda d, p=pair: [c, pred(d), f"--pair={p}"],
             ("--pair", "pair", pair.split(":")[0]), verify=both(keep, absent("evaluation")))
    for conv in ("inria", "deepglobe"):
        case(c, f"--convention {conv} on riverworld", REFUSE.format("--convention") + NOTHING,
             lambda d, v=conv: [c, pred(d), "--convention", v], "--convention", verify=both(keep, absent("evaluation")))
    for opt, values in (("--tolerance", ("-1", "abc", "1.5", "nan", "1000000000")),
                        ("--min-area", ("0", "-3", "abc", "1.5", "nan"))):
        for v in values:
            case(c, f"{opt} {v}", REFUSE.format(opt) + NOTHING, lambda d, o=opt, v=v: [c, pred(d), f"{o}={v}"],
                 opt, verify=both(keep, absent("evaluation")), timeout=90)
    case(c, "--out is a file", REFUSE.format("the file"), lambda d: [c, pred(d), "--out", touch(d, "rep")], "rep",
         verify=unchanged("rep"))
    case(c, "--out holds an earlier report, no --overwrite", REFUSE.format("report.json") + "; the report kept",
         lambda d: [c, pred(d), "--out", str(Path(touch(d, "ev/report.json", "{}")).parent)], "report.json",
         verify=unchanged("ev/report.json"))
    case(c, "--out in a read-only folder", REFUSE.format("the folder"),
         lambda d: (mkdir(d, "ro"), [c, pred(d), "--out", "ro/ev"])[-1], "ro/ev", wrap=("ro", "ro"))
    case(c, "scene in a read-only folder (error map)", REFUSE.format("the scene"),
         lambda d: [c, scene(Path(mkdir(d, "ro")), "p.zarr", F.pred), "--out", "ev"], "p.zarr", wrap=("ro", "ro"))
    case(c, "a gt chunk missing", REFUSE.format("the chunk") + "; no mIoU from fill values",
         lambda d: [c, remove_chunk(pred(d), "labels/gt/0", "0/0")], ("chunk", "labels/gt"),
         verify=absent("evaluation"))
    case(c, "a pred chunk corrupt", REFUSE.format("the chunk"),
         lambda d: [c, corrupt_chunk(pred(d), "labels/pred/0", "0/0")], ("chunk", "labels/pred"),
         verify=absent("evaluation"))
    case(c, "scene held by a live writer's lock", REFUSE.format("the scene and the lock"),
         lambda d: [c, lock_held(pred(d))], "p.zarr", verify=keep)
    case(c, "labels/pred holds a class the table lacks", REFUSE.format("labels/pred") + " (class 7 of 5)",
         lambda d: [c, _pred_with(d, 7)], ("labels/pred", "p.zarr"), verify=absent("evaluation"))


def _pred_with(d: Path, value: int) -> str:
    """A predicted scene whose labels/pred holds ``value`` (beyond its class table) in one corner."""
    from elegantviz.io.store import open_scene

    s = scene(d, "p.zarr", F.pred)
    sc = open_scene(s, mode="a")
    p = np.asarray(sc.label("pred").compute()).copy()
    p[:4, :4] = value
    sc.add_labels("pred", p, classes=sc.label_classes("pred"), overwrite=True, progress=False)
    return s


def export_cases() -> None:
    c = "export"
    pred = lambda d: scene(d, "p.zarr", F.pred)  # noqa: E731
    for kind, make in PREDICT_CHECKPOINTS[:8] + [PREDICT_CHECKPOINTS[13]]:
        case(c, f"checkpoint {kind}", REFUSE.format("the checkpoint") + NOTHING,
             lambda d, make=make: [c, make(d), "out.pt"], ("bad.pt", "nope.pt"), verify=absent("out.pt"))
    case(c, "checkpoint: no output given", REFUSE.format("the output"), lambda d: [c, str(F.ckpt)], "best.pt")
    case(c, "checkpoint: output exists", REFUSE.format("the output") + "; kept",
         lambda d: [c, str(F.ckpt), touch(d, "out.pt")], "out.pt", verify=unchanged("out.pt"))
    case(c, "checkpoint: output in a read-only folder", REFUSE.format("the output"),
         lambda d: (mkdir(d, "ro"), [c, str(F.ckpt), "ro/out.pt"])[-1], "out.pt", wrap=("ro", "ro"))
    case(c, "checkpoint: output on a full disk", REFUSE.format("the output") + "; no partial file",
         lambda d: (mkdir(d, "disk"), [c, str(F.ckpt), "disk/out.pt"])[-1], "out.pt", wrap=("full", "disk", 0),
         verify=absent("disk/out.pt", "disk/out.pt.tmp"))
    case(c, "checkpoint: output's parent is a file", REFUSE.format("the output"),
         lambda d: (touch(d, "f"), [c, str(F.ckpt), "f/out.pt"])[-1], "f/out.pt")
    case(c, "scene: no --out", REFUSE.format("--out"), lambda d: [c, pred(d)], "--out")
    case(c, "scene: --out .png", REFUSE.format("the output"), lambda d: [c, pred(d), "--out", "x.png"], "x.png",
         verify=absent("x.png"))
    case(c, "scene: --out without suffix", REFUSE.format("the output"), lambda d: [c, pred(d), "--out", "x"], "x",
         verify=absent("x"))
    case(c, "scene: --labels nosuch", REFUSE.format("the labels"), lambda d: [c, pred(d), "--labels", "nosuch",
                                                                          "--out", "x.tif"], "nosuch",
         verify=absent("x.tif"))
    case(c, "scene: --classes nosuch", REFUSE.format("--classes") + NOTHING,
         lambda d: [c, pred(d), "--out", "x.gpkg", "--classes", "lake"], ("lake", "--classes"), verify=absent("x.gpkg"))
    case(c, "scene: --classes with a .tif", REFUSE.format("--classes"),
         lambda d: [c, pred(d), "--out", "x.tif", "--classes", "river"], "--classes", verify=absent("x.tif"))
    case(c, "scene: --classes ','", REFUSE.format("--classes") + NOTHING,
         lambda d: [c, pred(d), "--out", "x.gpkg", "--classes", ","], "--classes", verify=absent("x.gpkg"))
    for v in ("-1", "nan", "abc", "inf"):
        case(c, f"scene: --simplify {v}", REFUSE.format("--simplify") + NOTHING,
             lambda d, v=v: [c, pred(d), "--out", "x.gpkg", f"--simplify={v}"], "--simplify", verify=absent("x.gpkg"))
    case(c, "scene: --simplify on a .tif", REFUSE.format("--simplify") + " (polygons only)" + NOTHING,
         lambda d: [c, pred(d), "--out", "x.tif", "--simplify", "2"], "--simplify", verify=absent("x.tif"))
    case(c, "scene: --regions before evaluate", REFUSE.format("the scene"),
         lambda d: [c, scene(d), "--regions", "--out", "r.gpkg"], "s.zarr", verify=absent("r.gpkg"))
    case(c, "scene: --regions with --classes", REFUSE.format("--classes"),
         lambda d: [c, pred(d), "--regions", "--out", "r.gpkg", "--classes", "river"], "--classes",
         verify=absent("r.gpkg"))
    case(c, "scene: --regions with a .tif", REFUSE.format("the output") + " (regions are polygons)",
         lambda d: [c, pred(d), "--regions", "--out", "r.tif"], "r.tif", verify=absent("r.tif"))
    case(c, "scene: regions file is corrupt", REFUSE.format("the regions file"),
         lambda d: (touch(d, "p.errors.json", "{oops"), [c, pred(d), "--regions", "--out", "r.gpkg"])[-1],
         "errors.json", verify=absent("r.gpkg"))
    case(c, "scene: --out exists", REFUSE.format("the output") + "; kept",
         lambda d: [c, pred(d), "--out", touch(d, "x.tif")], "x.tif", verify=unchanged("x.tif"))
    case(c, "scene: --out is a folder named x.gpkg", REFUSE.format("the output"),
         lambda d: [c, pred(d), "--out", mkdir(d, "x.gpkg")], "x.gpkg", verify=unchanged("x.gpkg"))
    case(c, "scene: --out in a read-only folder", REFUSE.format("the output"),
         lambda d: (mkdir(d, "ro"), [c, pred(d), "--out", "ro/x.tif"])[-1], "x.tif", wrap=("ro", "ro"))
    case(c, "scene: --out on a full disk", REFUSE.format("the output") + "; no partial file",
         lambda d: (mkdir(d, "disk"), [c, pred(d), "--out", "disk/x.gpkg"])[-1], "x.gpkg",
         wrap=("full", "disk", 0))
    case(c, "scene: a pred chunk missing", REFUSE.format("the chunk") + "; no GeoTIFF of fill values",
         lambda d: [c, remove_chunk(pred(d), "labels/pred/0", "0/0"), "--out", "x.tif"], ("chunk", "labels/pred"),
         verify=absent("x.tif"))
    case(c, "source is neither a store nor a checkpoint", REFUSE.format("the source"),
         lambda d: [c, mkdir(d, "thing"), "out.pt"], "thing")


def models_cases() -> None:
    c = "models"
    for opt, values in (("--num-classes", ("0", "-1", "abc", "1.5", "256", "1000000000")),
                        ("--in-chans", ("0", "abc", "-3", "1000000000")),
                        ("--size", ("31", "abc", "0", "1000000000", "nan"))):
        for v in values:
            huge = opt == "--in-chans" and v == "1000000000"  # counted on the meta device: no memory
            case(c, f"{opt} {v}", "works (a count needs no memory)" if huge else REFUSE.format(opt),
                 lambda d, o=opt, v=v: [c, f"{o}={v}"], opt, timeout=90, ok=huge)


def demo_cases() -> None:
    c = "demo"
    for opt, values in (("--size", ("0", "abc", "63", "1.5")), ("--iters", ("0", "abc", "-1")),
                        ("--train-scenes", ("0", "abc"))):
        for v in values:
            case(c, f"{opt} {v}", REFUSE.format(opt) + NOTHING, lambda d, o=opt, v=v: [c, "--workdir", "w", f"{o}={v}"],
                 opt, verify=absent("w"))
    case(c, "--workdir is a file", REFUSE.format("the workdir"), lambda d: [c, "--workdir", touch(d, "w")], "w",
         verify=unchanged("w"), timeout=120)
    case(c, "--iters without --train", REFUSE.format("--iters") + " (it trains nothing)" + NOTHING,
         lambda d: [c, "--workdir", "w", "--iters", "5"], "--iters", verify=absent("w"), timeout=120)


def cli_cases() -> None:
    c = "cli"
    case(c, "no command", "refused by argparse in one line", lambda d: [c], ("command", "COMMAND"))
    case(c, "unknown command", "refused by argparse in one line", lambda d: [c, "frobnicate"], "frobnicate")
    case(c, "unknown option", "refused by argparse in one line", lambda d: [c, "info", "x.zarr", "--bogus"], "--bogus")
    case(c, "option missing its value", "refused by argparse in one line",
         lambda d: [c, "predict", str(F.ckpt), "x.zarr", "--tile"], "--tile")


for register_cases in (convert_cases, synth_cases, info_check_cases, train_cases, predict_cases, evaluate_cases,
                       export_cases, models_cases, demo_cases, cli_cases):
    register_cases()


# --- running and classifying ---------------------------------------------------------------------
def command_line(c: Case, d: Path, args: list[str]) -> list[str]:
    cmd = [sys.executable, "-m", "elegantviz", *args]
    if c.wrap is None:
        return cmd
    if c.wrap[0] == "ro":
        script = 'mount --bind "$0" "$0" && mount -o remount,ro,bind "$0" "$0" && exec "$@"'
        return ["unshare", "-m", "sh", "-c", script, str(d / c.wrap[1]), *cmd]
    # a full disk: a tmpfs just big enough for what the folder held, so the next write fails
    target, slack = d / c.wrap[1], c.wrap[2]
    seed = target.with_name(target.name + ".seed")
    shutil.move(target, seed)
    target.mkdir()
    size = sum(p.stat().st_size for p in seed.rglob("*") if p.is_file()) + slack
    size = (size // 4096 + 1 + len(list(seed.rglob("*")))) * 4096
    script = ('mount -t tmpfs -o size="$1" tmpfs "$0" && cp -a "$2"/. "$0"/ && shift 2 && exec "$@"')
    return ["unshare", "-m", "sh", "-c", script, str(target), str(size), str(seed), *cmd]


def classify(c: Case, rc: int | None, err: str, d: Path) -> tuple[str, str]:
    if rc is None:
        return "hang", f"no answer in {c.timeout:.0f} s"
    if "Traceback (most recent call last)" in err:
        last = [l for l in err.strip().splitlines() if l.strip()][-1]
        return "traceback", last[:200]
    problem = c.verify(d) if c.verify else None
    if rc == 0:
        if c.ok and problem is None:
            return "ok", "worked, result checked"
        return "accepted", problem or "exit 0"
    if problem:
        return "accepted", f"refused, but {problem}"
    lines = [l for l in err.splitlines() if l.strip()]
    if rc != 2:
        return "unclear", f"exit {rc}: {' | '.join(lines)[:200]}"
    if len(lines) != 1:
        return "unclear", f"{len(lines)} lines: {' | '.join(lines)[:200]}"
    if c.names and not any(n.lower() in lines[0].lower() for n in c.names):
        return "unclear", f"does not name {' or '.join(c.names)}: {lines[0][:200]}"
    return "clear", lines[0][:300]


def run_case(c: Case, d: Path, env: dict) -> dict:
    d.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    try:
        args = c.build(d)
    except Exception as e:  # noqa: BLE001 - the probe's own bug, reported not hidden
        return {"command": c.command, "kind": c.kind, "outcome": "skipped", "note": f"build failed: {e!r}",
                "correct": c.correct}
    for rel in snapshots(c.verify):
        BEFORE[(d, rel)] = digest(d / rel)
    if args and args[0] in COMMANDS:
        args = [args[0], "-q", *args[1:]] if args[0] not in ("cli",) else args[1:]
    if c.wrap and shutil.which("unshare") is None:
        return {"command": c.command, "kind": c.kind, "outcome": "skipped", "note": "needs unshare",
                "correct": c.correct}
    cmd = command_line(c, d, args)
    try:
        res = subprocess.run(cmd, cwd=d, env=env, capture_output=True, text=True, timeout=c.timeout,
                             stdin=subprocess.DEVNULL)
        rc, err = res.returncode, res.stderr
    except subprocess.TimeoutExpired as e:
        rc, err = None, (e.stderr or b"").decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
    if c.wrap and c.wrap[0] == "full":  # put back what the tmpfs hid, for verify
        target = d / c.wrap[1]
        shutil.rmtree(target, ignore_errors=True)
        shutil.move(target.with_name(target.name + ".seed"), target)
    outcome, note = classify(c, rc, err, d)
    return {"command": c.command, "kind": c.kind, "outcome": outcome, "rc": rc,
            "seconds": round(time.perf_counter() - started, 1), "note": note, "correct": c.correct,
            "argv": " ".join(a.replace(str(d), ".") for a in args)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", help="comma-separated commands, e.g. predict,train")
    ap.add_argument("--match", help="only kinds containing this text")
    ap.add_argument("--jobs", type=int, default=1, help="cases run at once (each on one thread)")
    ap.add_argument("--keep", help="build in this folder and keep it (default: a temporary folder)")
    ap.add_argument("--out", help="results JSON (default benchmarks/results/bad_input_probe.json for a full "
                                  "run, benchmarks/scratch/ for a subset)")
    args = ap.parse_args()
    only = set(args.only.split(",")) if args.only else None
    cases = [c for c in CASES if (only is None or c.command in only) and (not args.match or args.match in c.kind)]
    kinds = [(c.command, c.kind) for c in CASES]
    dupes = {k for k in kinds if kinds.count(k) > 1}
    assert not dupes, f"duplicate kinds: {dupes}"
    subset = bool(only or args.match)
    out = Path(args.out) if args.out else (HERE / "scratch" / "bad_input_probe_subset.json" if subset
                                           else HERE / "results" / "bad_input_probe.json")
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bad-input-"))
    root.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore",
           "ELEGANTVIZ_CHECKPOINT": "none"}
    t0 = time.perf_counter()
    F.build(root / "fixtures")
    print(f"fixtures in {time.perf_counter() - t0:.0f} s; {len(cases)} of {len(CASES)} kinds", flush=True)
    results = [None] * len(cases)

    def one(i: int) -> None:
        results[i] = run_case(cases[i], root / "cases" / f"{i:03d}", env)
        r = results[i]
        print(f"{r['command']:<9} {r['outcome']:<10} {r['kind'][:52]:<52} {r.get('note', '')[:110]}", flush=True)

    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        list(pool.map(one, range(len(cases))))
    counts = {o: sum(r["outcome"] == o for r in results) for o in OUTCOMES}
    by_command = {cmd: {o: n for o in OUTCOMES if (n := sum(r["outcome"] == o for r in results
                                                            if r["command"] == cmd))}
                  for cmd in COMMANDS if any(r["command"] == cmd for r in results)}
    print()
    print(f"{'command':<9} " + " ".join(f"{o:>9}" for o in OUTCOMES))
    for cmd, row in by_command.items():
        print(f"{cmd:<9} " + " ".join(f"{row.get(o, 0):>9}" for o in OUTCOMES))
    print(f"{'all':<9} " + " ".join(f"{counts[o]:>9}" for o in OUTCOMES))
    print(f"\n{len(results)} kinds tried in {time.perf_counter() - t0:.0f} s: " +
          ", ".join(f"{n} {o}" for o, n in counts.items() if n))
    for r in results:
        if r["outcome"] not in ("clear", "ok"):
            print(f"  not clear: [{r['command']}] {r['kind']}: {r['outcome']}: {r.get('note', '')[:160]}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"kinds": len(results), "counts": counts, "by_command": by_command,
                               "seconds": round(time.perf_counter() - t0), "cases": results}, indent=2))
    print(f"wrote {out}")
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
