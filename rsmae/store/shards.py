"""Fast batched reads of tiles from the shard files of a local tile store.

Data loading reads many tiles per call; zarr-python's general read path costs milliseconds per call.
:class:`TileReader` reads the ``images`` array of a :class:`~rsmae.store.TileStore` straight from its
shard files, in the layout :mod:`rsmae.store` writes (checked against the array's ``zarr.json``
before the fast path is used)::

    images/zarr.json               shape (slots, C, T, T); chunk grid (S, C, T, T): one shard = S slots
    images/c/<shard>/0/0/0         one shard file (default chunk key encoding, separator "/")
        chunk 0 .. chunk k         inner chunks (1, C, T, T): bytes (little-endian) + blosc, written
                                   one after the other (consecutive slots are usually contiguous)
        index                      S x (offset, length) uint64 little-endian, offset 2**64-1 where no
                                   chunk was written (the fill value), then a crc32c of the index

A call groups the requested slots by shard, reads each run of chunks that lie close together in a
file with one ``pread`` and Blosc-decodes every chunk straight into its place in one preallocated
``(N, C, T, T)`` array. Shard indices are read once per process and cached. When the layout differs
from the one above (another codec chain, index location, key encoding, a remote store), the reader
says so in one log line and reads through zarr instead: correct, slower.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from numcodecs import blosc
from numcodecs.checksum32 import CRC32C

from rsmae.errors import StoreError

__all__ = ["TileReader", "layout_mismatch"]

_logger = logging.getLogger(__name__)
_MISSING = np.iinfo(np.uint64).max
_ENTRY = 16  # two uint64 per chunk: offset, length
_MAX_FDS = 64


def _named(codec: Any, name: str) -> dict[str, Any] | None:
    """The configuration of ``codec`` if it is a codec dict called ``name``, else ``None``."""
    if isinstance(codec, dict) and codec.get("name") == name:
        return codec.get("configuration") or {}
    return None


def _little_bytes(codec: Any, dtype: np.dtype) -> bool:
    config = _named(codec, "bytes")
    if config is None:
        return False
    return config.get("endian", "little") == "little" or dtype.itemsize == 1


def layout_mismatch(meta: dict[str, Any]) -> str | None:
    """Why the ``images`` array described by ``meta`` (its ``zarr.json``) cannot use the fast path.

    Returns:
        ``None`` when the layout is the one :class:`TileReader` reads directly, else the first
        difference found.
    """
    try:
        dtype = np.dtype(meta["data_type"])
    except (KeyError, TypeError):
        return f"data type {meta.get('data_type')!r} is not a plain numeric type"
    shape = list(meta.get("shape", []))
    grid = meta.get("chunk_grid", {})
    shard = list(grid.get("configuration", {}).get("chunk_shape", []))
    keys = meta.get("chunk_key_encoding", {})
    codecs = meta.get("codecs", [])
    checks = [
        (meta.get("zarr_format") == 3 and len(shape) == 4, "not a 4-d Zarr v3 array"),
        (grid.get("name") == "regular" and len(shard) == 4 and shard[1:] == shape[1:],
         f"shard shape {shard} is not (S, {', '.join(map(str, shape[1:]))})"),
        (keys.get("name") == "default" and keys.get("configuration", {}).get("separator", "/") == "/",
         f"chunk key encoding {keys} is not default with separator '/'"),
        (not meta.get("storage_transformers"), "storage transformers are set"),
        (len(codecs) == 1 and _named(codecs[0], "sharding_indexed") is not None,
         "codecs are not one sharding_indexed codec"),
    ]
    for ok, reason in checks:
        if not ok:
            return reason
    sharding = _named(codecs[0], "sharding_indexed") or {}
    inner, index = sharding.get("codecs", []), sharding.get("index_codecs", [])
    checks = [
        (sharding.get("chunk_shape") == [1, *shape[1:]],
         f"inner chunk shape {sharding.get('chunk_shape')} is not one tile"),
        (sharding.get("index_location", "end") == "end", "the shard index is not at the end"),
        (len(index) == 2 and _little_bytes(index[0], np.dtype("u8"))
         and _named(index[1], "crc32c") is not None,
         "the shard index codecs are not bytes (little-endian) + crc32c"),
        (len(inner) == 2 and _little_bytes(inner[0], dtype) and _named(inner[1], "blosc") is not None,
         "the inner codecs are not bytes (little-endian) + blosc"),
    ]
    for ok, reason in checks:
        if not ok:
            return reason
    return None


class TileReader:
    """Reads tiles ``(C, T, T)`` at any slots of a local store's ``images`` array, many per call.

    Results equal reading through zarr (tests check it); a slot with no chunk written reads as
    the fill value. Open one reader per process (DataLoader workers: after the fork); pickling
    drops the open files and cached indices.

    Args:
        images: The ``images`` array folder of a tile store (``TileStore.path / "images"``).
        max_gap: Chunks of a shard at most this many bytes apart are read with one ``pread``;
            the default 0 joins only contiguous chunks (on a 2-core EPYC, reading 4-64 KiB gaps
            from the page cache cost more than the system calls they save).
    """

    def __init__(self, images: str | Path, *, max_gap: int = 0) -> None:
        self.images = Path(images)
        meta_path = self.images / "zarr.json"
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError) as err:
            raise StoreError(f"{meta_path}: cannot read the array metadata ({err}); "
                             "pass the images folder of a tile store") from err
        self.max_gap = max_gap
        self.shape = tuple(int(n) for n in meta["shape"])
        self.dtype = np.dtype(meta["data_type"]).newbyteorder("<")
        fill = meta.get("fill_value", 0)  # Zarr v3 JSON writes NaN and infinities as strings
        self.fill_value = float(fill) if isinstance(fill, str) else (fill or 0)
        self.reason = layout_mismatch(meta)
        self.fast = self.reason is None
        self.shard_tiles = int(meta["chunk_grid"]["configuration"]["chunk_shape"][0]) if self.fast else 0
        if not self.fast:
            _logger.info("%s: %s; reading tiles through zarr (slower)", meta_path, self.reason)
        self._index: dict[int, np.ndarray | None] = {}
        self._fds: dict[int, int] = {}
        self._zarr: zarr.Array | None = None

    @property
    def tile_shape(self) -> tuple[int, int, int]:
        """``(C, T, T)`` of one tile."""
        return self.shape[1:]  # type: ignore[return-value]

    def empty(self, n: int) -> np.ndarray:
        """An uninitialised ``(n, C, T, T)`` array of the store's dtype."""
        return np.empty((n, *self.tile_shape), dtype=self.dtype)

    def read(self, slots: np.ndarray | list[int], out: np.ndarray | None = None) -> np.ndarray:
        """Tiles at ``slots`` (any order, repeats allowed) as ``(N, C, T, T)``.

        Args:
            slots: Slot numbers.
            out: Array to fill (C-contiguous, the store's dtype, first dimension ``N``); a new one
                when ``None``.
        """
        slots = np.asarray(slots, dtype=np.int64).reshape(-1)
        if out is None:
            out = self.empty(len(slots))
        if out.shape != (len(slots), *self.tile_shape) or not out.flags.c_contiguous:
            raise ValueError(f"out must be C-contiguous {(len(slots), *self.tile_shape)}, "
                             f"got {out.shape}")
        if len(slots) == 0:
            return out
        if len(slots) and (slots.min() < 0 or slots.max() >= self.shape[0]):
            raise IndexError(f"{self.images}: slots must be in [0, {self.shape[0]})")
        if not self.fast:
            return self._read_zarr(slots, out)
        order = np.argsort(slots, kind="stable")
        shards = slots[order] // self.shard_tiles
        cuts = np.flatnonzero(np.diff(shards)) + 1
        for group in np.split(order, cuts):
            shard = int(slots[group[0]]) // self.shard_tiles
            self._read_shard(shard, slots[group] - shard * self.shard_tiles, group, out)
        return out

    def _read_zarr(self, slots: np.ndarray, out: np.ndarray) -> np.ndarray:
        if self._zarr is None:
            self._zarr = zarr.open_array(self.images, mode="r")
        unique, inverse = np.unique(slots, return_inverse=True)
        out[:] = self._zarr.get_orthogonal_selection((unique,))[inverse]
        return out

    def _read_shard(self, shard: int, pos: np.ndarray, dest: np.ndarray, out: np.ndarray) -> None:
        """Decode the chunks at positions ``pos`` of one shard into ``out[dest]``."""
        index = self._shard_index(shard)
        if index is None:
            out[dest] = self.fill_value
            return
        offsets, lengths = index[pos, 0], index[pos, 1]
        present = offsets != _MISSING
        if not present.all():
            out[dest[~present]] = self.fill_value
            offsets, lengths, dest = offsets[present], lengths[present], dest[present]
            if not len(dest):
                return
        order = np.argsort(offsets, kind="stable")
        starts = offsets[order].astype(np.int64)
        ends = starts + lengths[order].astype(np.int64)
        reach = np.maximum.accumulate(ends)
        cuts = (np.flatnonzero(starts[1:] > reach[:-1] + self.max_gap) + 1).tolist()
        fd = self._fd(shard)
        starts_l, ends_l, dest_l = starts.tolist(), ends.tolist(), dest[order].tolist()
        for a, b in zip([0, *cuts], [*cuts, len(starts_l)], strict=True):
            base = starts_l[a]
            run = memoryview(os.pread(fd, int(reach[b - 1]) - base, base))
            for i in range(a, b):
                blosc.decompress(run[starts_l[i] - base : ends_l[i] - base], out[dest_l[i]])

    def _shard_path(self, shard: int) -> Path:
        return self.images / "c" / str(shard) / "0" / "0" / "0"

    def _fd(self, shard: int) -> int:
        fd = self._fds.get(shard)
        if fd is None:
            if len(self._fds) >= _MAX_FDS:
                self.close()
            fd = self._fds[shard] = os.open(self._shard_path(shard), os.O_RDONLY)
        return fd

    def _shard_index(self, shard: int) -> np.ndarray | None:
        """``(S, 2)`` offsets and lengths of a shard's chunks; ``None`` if the shard was never written."""
        if shard in self._index:
            return self._index[shard]
        try:
            fd = self._fd(shard)
        except FileNotFoundError:
            self._index[shard] = None
            return None
        size = os.fstat(fd).st_size
        n = self.shard_tiles * _ENTRY
        raw = os.pread(fd, n + 4, size - n - 4) if size >= n + 4 else b""
        if len(raw) != n + 4 or CRC32C.checksum(raw[:n]) != int.from_bytes(raw[n:], "little"):
            raise StoreError(f"{self._shard_path(shard)}: the shard index is damaged (checksum "
                             "mismatch or truncated file); re-tile the scenes of this shard")
        index = np.frombuffer(raw[:n], dtype="<u8").reshape(-1, 2)
        self._index[shard] = index
        return index

    def close(self) -> None:
        """Close open shard files (the cached indices stay)."""
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_index": {}, "_fds": {}, "_zarr": None}

    def __del__(self) -> None:
        if getattr(self, "_fds", None):
            self.close()
