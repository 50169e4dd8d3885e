"""Chunk manifests: which chunks of each array a finished part wrote.

zarr does not write a chunk that equals the fill value, so an absent chunk file is not by itself
an error; a chunk that was written and is gone since is. When a part (the image pyramid, a
``labels/<name>``, a ``maps/<name>``) is finished, its ``elegantviz`` attributes get a
``manifest``: for each array of the part (``"0"``, ``"1"``, ... relative to the part) the shape,
dtype, chunk shape, fill value, codecs and chunk key encoding it was written with (everything in
its ``zarr.json`` that changes what a read returns) and a bitmap over its chunk grid, 1 where a
chunk file exists, packed 8 chunks a byte, zlib-compressed and base64-encoded. A 20,000 x 20,000
four-band scene in 512 px chunks has 40 x 40 x 4 chunks at level 0: at most 800 bytes raw
(about 1 kB of text), a few dozen characters when every chunk is there.

Reads of a part with a manifest (:func:`checked_dask`) check that a chunk the manifest lists and
which reads as the fill value still exists, that a chunk it does not list still reads as the fill
value (no file appeared there since), and name a chunk that does not decode, instead of handing
out the fill value, someone else's data or a codec's traceback. Stores written before the manifest read as
before (only a chunk that fails to decode is named).
"""

from __future__ import annotations

import base64
import binascii
import itertools
import json
import math
import zlib
from typing import Any

import dask.array as da
import numpy as np
import zarr
from zarr.core.sync import sync

from elegantviz.errors import InputError

MANIFEST = "manifest"  # the entry of a part's elegantviz attributes
METADATA_FILE = "zarr.json"
READ_AS = ("fill_value", "codecs", "chunk_key_encoding")  # zarr.json entries recorded as written, beside shape


# --- chunk keys ---------------------------------------------------------------------------------
def array_prefix(array: zarr.Array) -> str:
    """The array's path from the store's root, '' or ending in '/'."""
    path = array.store_path.path.strip("/")
    return f"{path}/" if path else ""


def chunk_key(array: zarr.Array, index: tuple[int, ...]) -> str:
    """The store key of one chunk, e.g. ``labels/gt/0/c/1/0``."""
    return array_prefix(array) + array.metadata.chunk_key_encoding.encode_chunk_key(tuple(index))


def chunk_index(array: zarr.Array, key: str) -> tuple[int, ...] | None:
    """The chunk index a key (relative to the array) names; None when it is not a chunk key."""
    encoding = array.metadata.chunk_key_encoding
    sep = encoding.separator
    if getattr(encoding, "name", "default") == "default":
        if key == "c":
            return ()
        if not key.startswith("c" + sep):
            return None
        key = key[2:]
    try:
        index = tuple(int(p) for p in key.split(sep))
    except ValueError:
        return None
    return index if all(i >= 0 for i in index) else None


def listed_keys(array: zarr.Array) -> list[str]:
    """Every key under the array (its ``zarr.json`` left out), relative to the array."""
    prefix = array_prefix(array)

    async def collect() -> list[str]:
        return [k async for k in array.store_path.store.list_prefix(prefix)]

    keys = [k[len(prefix):] for k in sync(collect())]
    return sorted(k for k in keys if k and k != METADATA_FILE)


def key_exists(array: zarr.Array, key: str) -> bool:
    return bool(sync(array.store_path.store.exists(key)))


def grid_of(shape, chunks) -> tuple[int, ...]:
    return tuple(math.ceil(s / c) for s, c in zip(shape, chunks))


def chunk_region(index: tuple[int, ...], shape, chunks) -> tuple[slice, ...]:
    return tuple(slice(i * c, min((i + 1) * c, s)) for i, s, c in zip(index, shape, chunks))


# --- the manifest -------------------------------------------------------------------------------
def encode_bits(present: np.ndarray) -> str:
    return base64.b64encode(zlib.compress(np.packbits(present.ravel()).tobytes(), 9)).decode("ascii")


def decode_bits(text: str, grid: tuple[int, ...]) -> np.ndarray:
    """The bitmap ``encode_bits`` wrote; ValueError when the text is not one for this grid."""
    try:
        raw = np.frombuffer(zlib.decompress(base64.b64decode(text, validate=True)), np.uint8)
    except (binascii.Error, zlib.error, TypeError) as e:
        raise ValueError(f"its chunk bitmap does not decode ({type(e).__name__})") from None
    n = int(np.prod(grid, dtype=np.int64))
    if raw.size != -(-n // 8):
        raise ValueError(f"its chunk bitmap holds {raw.size * 8} bits for {n} chunks")
    return np.unpackbits(raw)[:n].astype(bool).reshape(grid)


def read_as(array: zarr.Array) -> dict:
    """The entries of READ_AS in the array's metadata, as JSON values (NaN fill as "NaN")."""
    meta = array.metadata.to_dict()
    return {k: json.loads(json.dumps(meta.get(k), default=str)) for k in READ_AS}


def array_record(array: zarr.Array) -> dict:
    """What an array was written as, and which of its chunks exist (listed from the store)."""
    grid = tuple(array.cdata_shape)
    present = np.zeros(grid, bool)
    for key in listed_keys(array):
        index = chunk_index(array, key)
        if index is not None and len(index) == len(grid) and all(i < g for i, g in zip(index, grid)):
            present[index] = True
    return {"shape": list(array.shape), "dtype": str(array.dtype), "chunks": list(array.chunks), **read_as(array),
            "written": int(present.sum()), "present": encode_bits(present)}


def part_manifest(root: zarr.Group, prefix: str, n_levels: int) -> dict:
    """The manifest of a finished part: the record of each of its levels ``prefix/0..n-1``."""
    return {str(k): array_record(root[f"{prefix}/{k}" if prefix else str(k)]) for k in range(n_levels)}


def present_chunks(record: dict) -> np.ndarray:
    """The bitmap of a manifest record, over the grid it was written with."""
    return decode_bits(record["present"], grid_of(record["shape"], record["chunks"]))


def record_problem(record: object) -> str | None:
    """What makes a manifest record unusable (a wrong type, a bitmap that does not fit), or None."""
    if not isinstance(record, dict):
        return f"is {type(record).__name__}, not a record"
    shape, chunks = record.get("shape"), record.get("chunks")
    for key, value in (("shape", shape), ("chunks", chunks)):
        if not (isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0
                                                for v in value)):
            return f"has {key} {value!r}, not a list of sizes"
    if len(shape) != len(chunks) or 0 in chunks:
        return f"has chunks {chunks} for shape {shape}"
    if not isinstance(record.get("dtype"), str):
        return f"has dtype {record.get('dtype')!r}"
    written = record.get("written")
    try:
        count = int(decode_bits(record.get("present"), grid_of(shape, chunks)).sum())  # type: ignore[arg-type]
    except ValueError as e:
        return str(e)
    if written is not None and written != count:
        return f"says {written!r} chunks were written, its bitmap {count}"
    return None


def metadata_mismatch(array: zarr.Array, record: dict) -> str | None:
    """How the array's ``zarr.json`` disagrees with what was written, or None. Stores written
    before fill value and codecs were recorded are compared on shape, dtype and chunks."""
    said = {"shape": list(array.shape), "dtype": str(array.dtype), "chunks": list(array.chunks)}
    wrong = [k for k in said if said[k] != record.get(k)]
    if not wrong:  # a dtype edit changes the codecs too: name the cause alone
        said.update({k: v for k, v in read_as(array).items() if k in record})
        wrong = [k for k in said if said[k] != record.get(k)]
    text = "; ".join(f"{k} {json.dumps(said[k])}, written as {json.dumps(record.get(k))}" for k in wrong)
    return text.replace('"', "") if wrong else None


def damaged(url: str, what: str, problem: str, detail: str = "") -> InputError:
    """The one-line error of a damaged store, e.g. ``s.zarr: labels/gt/0/c/1/0 is missing (...)``."""
    why = f"{detail}; " if detail else ""
    return InputError(f"{url}: {what} {problem} ({why}the store is damaged; `elegantviz check {url}` lists every problem)")


def short_error(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__


# --- checked reads ------------------------------------------------------------------------------
class CheckedArray:
    """A zarr array as dask reads it (``shape``, ``dtype``, ``ndim``, ``__getitem__``), with a check
    per block read: a chunk the manifest lists must still exist, and a chunk that fails to
    decode is named. ``present`` None (a store without a manifest) skips the first check."""

    def __init__(self, array: zarr.Array, url: str, image: bool, present: np.ndarray | None):
        self.array, self.url, self.image, self.present = array, url, image, present
        self.shape, self.dtype, self.ndim, self.chunks = array.shape, array.dtype, array.ndim, array.chunks

    def __dask_tokenize__(self):
        bits = None if self.present is None else encode_bits(self.present)
        return ("elegantviz-checked", self.url, array_prefix(self.array), self.shape, str(self.dtype), self.chunks,
                bits)

    def what(self, index: tuple[int, ...]) -> str:
        key = chunk_key(self.array, index)
        return f"image chunk {key}" if self.image else key

    def chunk_indices(self, region: tuple) -> list[tuple[int, ...]]:
        region = tuple(region) + (slice(None),) * (self.ndim - len(tuple(region)))
        ranges = []
        for sel, n, c in zip(region, self.shape, self.chunks):
            start, stop, _ = sel.indices(n) if isinstance(sel, slice) else (int(sel), int(sel) + 1, 1)
            ranges.append(range(start // c, max(start // c, math.ceil(stop / c))))
        return list(itertools.product(*ranges))

    def __getitem__(self, region: Any) -> np.ndarray:
        region = region if isinstance(region, tuple) else (region,)
        indices = self.chunk_indices(region)
        try:
            out = self.array[region]
        except Exception as exc:  # name the chunk that does not decode
            for index in indices:
                try:
                    self.array[chunk_region(index, self.shape, self.chunks)]
                except Exception as bad:
                    raise damaged(self.url, self.what(index), "is corrupt", short_error(bad)) from None
            raise exc
        if self.present is not None:
            self.check_fill_chunks(region, indices, out)
        return out

    def check_fill_chunks(self, region: tuple, indices: list[tuple[int, ...]], out: np.ndarray) -> None:
        """A missing chunk reads as the fill value, and zarr does not write all-fill chunks, so only
        the chunks that read as fill alone need asking whether the store still has them: no
        request per chunk on the hot path (a viewer's tiles), one per all-fill chunk. A chunk the
        part never wrote must read as fill: anything else is a file that appeared since."""
        region = tuple(region) + (slice(None),) * (self.ndim - len(region))
        starts = [sel.indices(n)[0] if isinstance(sel, slice) else int(sel) for sel, n in zip(region, self.shape)]
        fill = self.array.fill_value
        nan_fill = np.issubdtype(np.asarray(fill).dtype, np.floating) and bool(np.isnan(fill))
        for index in indices:
            local = tuple(slice(max(0, r.start - o), max(0, r.stop - o))
                          for r, o in zip(chunk_region(index, self.shape, self.chunks), starts))
            part = out[local] if out.ndim == len(local) else out
            is_fill = np.isnan(part).all() if nan_fill else (part == fill).all()
            if not self.present[index] and not is_fill:
                raise damaged(self.url, self.what(index), "holds data its part never wrote (a chunk file that "
                                                          "appeared after the part was finished)")
            if self.present[index] and is_fill and not key_exists(self.array, chunk_key(self.array, index)):
                raise damaged(self.url, self.what(index), "is missing")


def checked_dask(array: zarr.Array, url: str, record: dict | None, image: bool = False,
                 chunks: tuple[int, ...] | None = None, inline_array: bool = False) -> da.Array:
    """A lazy dask array over a finished part's array, checked on every block read (see
    :class:`CheckedArray`); refused at once when its ``zarr.json`` disagrees with the manifest."""
    present = None
    if record is not None:
        wrong = metadata_mismatch(array, record)
        if wrong:
            what = f"image {array_prefix(array)}{METADATA_FILE}" if image else f"{array_prefix(array)}{METADATA_FILE}"
            raise damaged(url, what, f"disagrees with the manifest: it says {wrong}")
        present = present_chunks(record)
    source = CheckedArray(array, url, image, present)
    return da.from_array(source, chunks=chunks or array.chunks, asarray=False, fancy=False,
                         inline_array=inline_array, meta=np.empty((0,) * array.ndim, array.dtype))

