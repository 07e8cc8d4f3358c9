"""The scene table of a tile store: one row per scene, one Zarr array per column.

Layout (group ``scenes`` of a tile store of format 2)::

    STORE.zarr/scenes/
      id          (scenes,) string     scene id (``parent/name``), unique
      sensor      (scenes,) string     registry sensor name the scene was read as
      date        (scenes,) string     acquisition date ``YYYY-MM-DD``, "" when unknown
      label       (scenes,) string     class name, "" when none
      split       (scenes,) string     ``train``/``val``/``test``, "" when none
      crs         (scenes,) int32      row of ``crs_values`` holding the scene's CRS
      crs_values  (crs,) string        distinct CRS (WKT, "" without georeferencing), first use first
      transform   (scenes, 6) float64  affine transform of the scene grid (GDAL order a, b, c, d, e, f)
      width, height (scenes,) int64    grid size in pixels
      nodata      (scenes,) float64    nodata value, NaN when none
      file_end    (scenes,) int64      end of the scene's files in ``files`` (cumulative count)
      files       (files,) string      source files of every scene, in scene order
      n_tiles     (scenes,) int64      tiles kept per scene (written when the run finishes)
      product_level (scenes,) string   Sentinel-2 ``L1C``/``L2A`` from the product, "" when unknown
      baseline    (scenes,) string     processing baseline (``04.00``), "" when unknown
      offset      (scenes,) float64    radiometric offset applied on read (``-1000`` for baseline
                                       >= 04.00, 0 when none; NaN when the bands differ)

Stores written before ``product_level``, ``baseline`` and ``offset`` existed lack those arrays:
they read as "", "" and 0, and the arrays are created (earlier rows filled so) on the next append.
A row whose ``id`` is "" belongs to a scene a run registered but skipped (unreadable band, no
kept tile): it holds no tile, and the store's ``skipped`` table names it (``skipped.py``).

Rows are appended: a run resizes the columns and writes only its new rows. The store's
``n_scenes`` attribute counts the valid rows; rows past it (a registration killed before that
attribute was written) are overwritten by the next run. Readers get columns as NumPy arrays
(strings as NumPy ``StringDType``), never one Python dict per scene.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import zarr

__all__ = ["COLUMNS", "SceneTable", "columns_from_records"]

_CHUNK = 16384
# column -> (dtype, fill, trailing shape); "crs" and "files" are stored indirectly
_ARRAYS: dict[str, tuple[Any, Any, tuple[int, ...]]] = {
    "id": (str, "", ()), "sensor": (str, "", ()), "date": (str, "", ()), "label": (str, "", ()),
    "split": (str, "", ()), "crs": ("int32", -1, ()), "transform": ("float64", 0.0, (6,)),
    "width": ("int64", 0, ()), "height": ("int64", 0, ()), "nodata": ("float64", np.nan, ()),
    "file_end": ("int64", 0, ()), "n_tiles": ("int64", 0, ()),
    "product_level": (str, "", ()), "baseline": (str, "", ()), "offset": ("float64", 0.0, ()),
}
_ADDED = ("product_level", "baseline", "offset")  # absent from the first format-2 stores
COLUMNS = ("id", "sensor", "date", "label", "split", "crs", "transform", "width", "height",
           "nodata", "files", "n_tiles", "product_level", "baseline", "offset")
"""Columns :meth:`SceneTable.read` returns (``crs`` decoded to strings, ``files`` as tuples)."""


def columns_from_records(records: Sequence[dict[str, Any]]) -> dict[str, np.ndarray]:
    """Columns of scene records as dicts (the JSON form of store format 1), as :meth:`read` gives."""
    def text(key: str) -> np.ndarray:
        return np.array([r.get(key) or "" for r in records], dtype=np.dtypes.StringDType())

    grids = [r["grid"] for r in records]
    return {
        "id": text("id"), "sensor": text("sensor"), "date": text("date"), "label": text("label"),
        "split": text("split"),
        "crs": np.array([g["crs"] or "" for g in grids], dtype=object),
        "transform": np.array([g["transform"] for g in grids], dtype=np.float64).reshape(-1, 6),
        "width": np.array([g["width"] for g in grids], dtype=np.int64),
        "height": np.array([g["height"] for g in grids], dtype=np.int64),
        "nodata": np.array([np.nan if r.get("nodata") is None else r["nodata"] for r in records],
                           dtype=np.float64),
        "files": _tuples([tuple(r["files"]) for r in records]),
        "n_tiles": np.zeros(len(records), dtype=np.int64),
        "product_level": text("product_level"), "baseline": text("baseline"),
        "offset": np.zeros(len(records), dtype=np.float64),
    }


def _tuples(items: list[tuple[str, ...]]) -> np.ndarray:
    out = np.empty(len(items), dtype=object)
    out[:] = items
    return out


class SceneTable:
    """Reads and appends the columns of the ``scenes`` group (see the module docstring)."""

    def __init__(self, group: zarr.Group) -> None:
        self._group = group
        self._arrays: dict[str, zarr.Array] = {}

    @classmethod
    def create(cls, parent: zarr.Group) -> SceneTable:
        """Create the empty ``scenes`` group under ``parent``."""
        group = parent.create_group("scenes")
        for name, (dtype, fill, tail) in _ARRAYS.items():
            group.create_array(name, shape=(0, *tail), chunks=(_CHUNK, *tail), dtype=dtype,
                               fill_value=fill)
        for name in ("crs_values", "files"):
            group.create_array(name, shape=(0,), chunks=(_CHUNK,), dtype=str, fill_value="")
        return cls(group)

    def _array(self, name: str) -> zarr.Array:
        if name not in self._arrays:
            self._arrays[name] = self._group[name]
        return self._arrays[name]

    def _has(self, name: str) -> bool:
        return name in self._arrays or name in self._group

    def _fill(self, name: str, n: int) -> np.ndarray:
        """Column ``name`` of ``n`` rows at its fill value (a column an older store lacks)."""
        dtype, fill, tail = _ARRAYS[name]
        if dtype is str:
            return np.full((n, *tail), fill, dtype=np.dtypes.StringDType())
        return np.full((n, *tail), fill, dtype=dtype)

    def _added_array(self, name: str, rows: int) -> zarr.Array:
        """A column of :data:`_ADDED`, created with ``rows`` filled rows when the store lacks it."""
        if not self._has(name):
            dtype, fill, tail = _ARRAYS[name]
            arr = self._group.create_array(name, shape=(rows, *tail), chunks=(_CHUNK, *tail),
                                           dtype=dtype, fill_value=fill)
            if rows:
                arr[:] = self._fill(name, rows)
            self._arrays[name] = arr
        return self._array(name)

    def read(self, columns: Sequence[str] | None, start: int, stop: int) -> dict[str, np.ndarray]:
        """Columns of rows ``start:stop``.

        Args:
            columns: Names from :data:`COLUMNS` (default: all).
            start: First row.
            stop: End row (the number of valid rows at most).

        Returns:
            ``{name: array}``: strings as ``StringDType`` arrays, ``crs`` as an object array of
            strings (one object per distinct CRS), ``files`` as an object array of tuples.
        """
        out = {}
        for name in columns or COLUMNS:
            if name == "crs":
                values = np.array(self._array("crs_values")[:].tolist() + [""], dtype=object)
                out[name] = values[self._array("crs")[start:stop]]
            elif name == "files":
                out[name] = self._files(start, stop)
            elif name in _ADDED and not self._has(name):
                out[name] = self._fill(name, max(stop - start, 0))
            elif name in _ARRAYS and name != "file_end":
                out[name] = self._array(name)[start:stop]
            else:
                raise KeyError(f"no scene column {name!r}; columns are {', '.join(COLUMNS)}")
        return out

    def _files(self, start: int, stop: int) -> np.ndarray:
        ends = self._array("file_end")[max(start - 1, 0) : stop]
        first = int(ends[0]) if start > 0 and len(ends) else 0
        ends = ends[1:] if start > 0 else ends
        flat = self._array("files")[first : int(ends[-1])].tolist() if len(ends) else []
        bounds = np.concatenate([[0], ends - first]).tolist()
        return _tuples([tuple(flat[a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)])

    def write(self, first: int, rows: dict[str, Any]) -> int:
        """Write rows at ``first`` (resizing every column to end there); returns the row count.

        Args:
            first: Row of the first new scene (the number of valid rows).
            rows: Every column of :data:`COLUMNS` but ``n_tiles``; ``crs`` as strings and
                ``files`` as sequences of paths, one per scene. Columns of :data:`_ADDED` may
                be left out (written at their fill value).
        """
        k = len(rows["id"])
        stop = first + k
        prev_end = int(self._array("file_end")[first - 1]) if first else 0
        counts = np.array([len(f) for f in rows["files"]], dtype=np.int64)
        ends = prev_end + np.cumsum(counts)
        values = {**{n: rows[n] for n in _ARRAYS if n in rows and n != "crs"},
                  "crs": self._crs_codes(rows["crs"]), "file_end": ends,
                  "n_tiles": np.zeros(k, dtype=np.int64)}
        for name in _ADDED:
            values.setdefault(name, self._fill(name, k))
        for name, column in values.items():
            arr = self._added_array(name, first) if name in _ADDED else self._array(name)
            arr.resize((stop, *arr.shape[1:]))
            if k:
                arr[first:stop] = np.asarray(column)
        flat = [str(f) for files in rows["files"] for f in files]
        arr = self._array("files")
        arr.resize((prev_end + len(flat),))
        if flat:
            arr[prev_end:] = np.array(flat, dtype=np.dtypes.StringDType())
        return k

    def _crs_codes(self, crs: Sequence[str]) -> np.ndarray:
        """Codes of ``crs`` in ``crs_values``, appending CRSs seen for the first time."""
        arr = self._array("crs_values")
        known = arr[:].tolist()
        code = {v: i for i, v in enumerate(known)}
        new = [c for c in dict.fromkeys(crs) if c not in code]
        if new:
            arr.resize((len(known) + len(new),))
            arr[len(known):] = np.array(new, dtype=np.dtypes.StringDType())
            code.update({c: len(known) + i for i, c in enumerate(new)})
        return np.array([code[c] for c in crs], dtype=np.int32)

    def write_tiles(self, first: int, counts: np.ndarray) -> None:
        """Write the tiles kept per scene for rows ``first:first + len(counts)``."""
        if len(counts):
            self._array("n_tiles")[first : first + len(counts)] = counts.astype(np.int64)

    def clear_ids(self, rows: Sequence[int]) -> None:
        """Set the ``id`` of ``rows`` to "" (scenes a run registered but skipped)."""
        arr = self._array("id")
        for row in rows:
            arr[int(row)] = ""

    def truncate(self, n: int) -> None:
        """Keep the first ``n`` rows (and their files)."""
        end = int(self._array("file_end")[n - 1]) if n else 0
        for name, (_, _, tail) in _ARRAYS.items():
            if self._has(name):
                self._array(name).resize((n, *tail))
        self._array("files").resize((end,))
