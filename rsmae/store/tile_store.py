"""The tile store: every read and write of the Zarr layout (``layout.py``) goes through :class:`TileStore`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import zarr

import rsmae.store.skipped as skipped_table
from rsmae.errors import StoreConfigError, StoreError, StoreIncompleteError, StoreRunChangedError
from rsmae.files import remove_tree
from rsmae.store.layout import FORMAT_VERSION, READABLE, SLOT_ARRAYS, create_aside
from rsmae.store.scene_table import SceneTable, columns_from_records
from rsmae.store.skipped import SkippedTableMixin

if TYPE_CHECKING:
    from rsmae.store.shards import TileReader

__all__ = ["TileStore", "remove_store"]


class TileStore(SkippedTableMixin):
    """A tile store on disk.

    Use :meth:`create` to make one and :meth:`open` to open one; all reads and writes of the
    layout go through this class (the ``skipped`` table's through :class:`SkippedTableMixin`).
    """

    def __init__(self, path: str | Path, group: zarr.Group | None, *,
                 shard_tiles: int | None = None) -> None:
        self.path = Path(path)
        self._group = group
        self._arrays: dict[str, zarr.Array] = {}
        self._shard_tiles = shard_tiles
        self._table: SceneTable | None = None

    # ---------------------------------------------------------------- creation and opening
    @classmethod
    def create(cls, path: str | Path, *, config: dict[str, Any], bands: Sequence[dict[str, Any]], dtype: str,
               shard_tiles: int, codec: str = "lz4", attrs: dict[str, Any] | None = None) -> TileStore:
        """Create an empty store (no slots yet) at ``path``.

        Args:
            path: Directory to create; must not exist.
            config: Tiling configuration; a later run must match it.
            bands: Band metadata dicts (``name``, ``wavelength_nm``, ``gsd_m``) in store order.
            dtype: Pixel dtype (kept from the source).
            shard_tiles: Tiles per shard (and per unit of work).
            codec: Tile compression, a key of :data:`~rsmae.store.layout.CODECS`.
            attrs: Extra root attributes (version, command line).
        """
        path = Path(path)
        create_aside(path, bands=bands, dtype=dtype, tile=int(config["tile_size"]), shard_tiles=shard_tiles,
                     codec=codec, attrs={"rsmae_format": FORMAT_VERSION, "complete": False, "config": config,
                                         "bands": list(bands), "dtype": dtype, "shard_tiles": shard_tiles,
                                         "n_scenes": 0, "n_batches": 0, "n_units": 0, "tiles": 0,
                                         **(attrs or {})})
        return cls(path, zarr.open_group(path, mode="r+", zarr_format=3))

    @classmethod
    def writer(cls, path: str | Path, *, shard_tiles: int) -> TileStore:
        """The arrays a unit of work writes, opened one by one (the root group is not read)."""
        return cls(path, None, shard_tiles=shard_tiles)

    @classmethod
    def open(cls, path: str | Path, *, mode: str = "r", require_complete: bool = True) -> TileStore:
        """Open an existing store.

        Raises:
            StoreError: if ``path`` is missing or not a tile store.
            StoreIncompleteError: if ``require_complete`` and the store was never finalised.
        """
        path = Path(path)
        if not path.exists():
            raise StoreError(f"{path}: no tile store there; make one with pipelines/tile.py")
        if not (path / "zarr.json").is_file():
            raise StoreError(f"{path}: not a Zarr store (no zarr.json); pass a tile store path")
        try:
            group = zarr.open_group(path, mode=mode, zarr_format=3)
        except Exception as err:  # zarr raises several types for damaged metadata
            raise StoreError(f"{path}: cannot open as a Zarr v3 group ({err})") from err
        found = group.attrs.get("rsmae_format")
        if found not in READABLE:
            raise StoreError(
                f"{path}: not an rsmae tile store of format {FORMAT_VERSION} (found {found!r}); "
                "tile the scenes again with pipelines/tile.py"
            )
        if found != FORMAT_VERSION and mode != "r":
            raise StoreConfigError(
                f"{path}: written by an older rsmae (store format {found}, scene records in JSON) "
                "and read-only here; tile the scenes again into a new store, or pass --overwrite"
            )
        store = cls(path, group)
        if require_complete and not store.complete:
            raise StoreIncompleteError(
                f"{path}: the tiling run that writes this store has not finished; rerun the same "
                "pipelines/tile.py command to complete it"
            )
        return store

    # ---------------------------------------------------------------- attributes
    @property
    def attrs(self) -> dict[str, Any]:
        """All root attributes (a copy)."""
        return self._group.attrs.asdict()

    @property
    def complete(self) -> bool:
        """True once the store has been finalised."""
        return bool(self._group.attrs.get("complete", False))

    @property
    def config(self) -> dict[str, Any]:
        """The tiling configuration the store was made with."""
        return dict(self._group.attrs["config"])

    @property
    def band_names(self) -> list[str]:
        """Band names in store order."""
        return [b["name"] for b in self._group.attrs["bands"]]

    @property
    def shard_tiles(self) -> int:
        """Tiles per shard and per unit of work."""
        if self._shard_tiles is None:
            self._shard_tiles = int(self._group.attrs["shard_tiles"])
        return self._shard_tiles

    @property
    def format(self) -> int:
        """Store format version (1: scene records as JSON, read-only; 2: the scene table)."""
        return int(self._group.attrs["rsmae_format"])

    @property
    def n_scenes(self) -> int:
        """Scenes registered in the store."""
        if self.format == 1:
            return len(self._group.attrs["scenes"])
        return int(self._group.attrs["n_scenes"])

    def update_attrs(self, **values: Any) -> None:
        """Write root attributes in one metadata write (the commit points of a run rely on it).

        ``zarr.Group.attrs.update`` would write the metadata once per key (``MutableMapping``):
        a kill between two keys would leave half a commit.
        """
        self._group.update_attributes(values)

    def check_config(self, config: dict[str, Any]) -> None:
        """Raise :class:`StoreConfigError` unless ``config`` equals the stored one."""
        stored = self.config
        diff = sorted(k for k in set(stored) | set(config) if stored.get(k) != config.get(k))
        if diff:
            details = "; ".join(f"{k}: store {stored.get(k)!r}, now {config.get(k)!r}"
                                for k in diff)
            raise StoreConfigError(
                f"{self.path}: made with another configuration ({details}); use the same "
                "options, another --out, or --overwrite to replace it"
            )

    # ---------------------------------------------------------------- arrays
    def array(self, name: str) -> zarr.Array:
        """One array of the layout by name (opened once, then cached)."""
        if name not in self._arrays:
            if self._group is None:
                self._arrays[name] = zarr.open_array(self.path / name, mode="r+", zarr_format=3)
            else:
                self._arrays[name] = self._group[name]
        return self._arrays[name]

    # ---------------------------------------------------------------- scenes
    def scenes(self, columns: Sequence[str] | None = None, *, start: int = 0,
               stop: int | None = None) -> dict[str, np.ndarray]:
        """Columns of the scene table (see ``scene_table.py``), rows ``start:stop``.

        Args:
            columns: Names among ``id``, ``sensor``, ``date``, ``label``, ``split``, ``crs``,
                ``transform``, ``width``, ``height``, ``nodata``, ``files``, ``n_tiles``,
                ``product_level``, ``baseline``, ``offset`` (default: all). Read only what
                you need: each is one array read.
            start: First scene.
            stop: End scene (default: every registered scene).

        Returns:
            ``{name: array}`` in scene order; strings are "" where unknown, ``nodata`` NaN
            where none, ``files`` an object array of tuples of paths.
        """
        stop = self.n_scenes if stop is None else min(stop, self.n_scenes)
        if self.format == 1:
            cols = columns_from_records(self._group.attrs["scenes"][start:stop])
            if "n_tiles" in (columns or cols):
                per = self._group.attrs.get("tiles_per_scene") or [0] * self.n_scenes
                cols["n_tiles"] = np.asarray(per[start:stop], dtype=np.int64)
            return {k: cols[k] for k in columns or cols}
        return self._scene_table().read(columns, start, stop)

    def _scene_table(self) -> SceneTable:
        if self._table is None:
            self._table = SceneTable(self._group["scenes"])
        return self._table

    def write_scenes(self, first: int, rows: dict[str, Any]) -> int:
        """Write scene rows at ``first`` (see :meth:`SceneTable.write`); ``n_scenes`` is the caller's."""
        return self._scene_table().write(first, rows)

    def write_scene_tiles(self, first: int, counts: np.ndarray) -> None:
        """Record the tiles kept per scene for scenes ``first:first + len(counts)``."""
        self._scene_table().write_tiles(first, counts)

    def batches(self) -> np.ndarray:
        """``(runs, 4)`` scenes ``first, last`` and units ``start, stop`` each run registered."""
        if self.format == 1:
            return np.asarray(self._group.attrs["batches"], dtype=np.int64).reshape(-1, 4)
        return self.array("batches")[: int(self._group.attrs["n_batches"])]

    def write_batch(self, i: int, batch: Sequence[int]) -> None:
        """Write batch ``i`` (resizing the batch array to end there)."""
        arr = self.array("batches")
        arr.resize((i + 1, 4))
        arr[i] = np.asarray(batch, dtype=np.int64)

    def truncate(self, n_scenes: int, n_batches: int) -> None:
        """Drop scenes and batches past the given counts (undoing an unfinished run)."""
        self._scene_table().truncate(n_scenes)
        self.array("batches").resize((n_batches, 4))

    # ---------------------------------------------------------------- statistics
    def stats_totals(self, buffer: int) -> tuple[np.ndarray, np.ndarray]:
        """Running histogram ``(C, bins)`` and moments ``(C, 3)`` kept in ``buffer`` (0 or 1)."""
        return self.array("stats_hist")[buffer], self.array("stats_moments")[buffer]

    def write_stats_totals(self, buffer: int, hist: np.ndarray, moments: np.ndarray) -> None:
        """Write running totals into ``buffer``; the other one keeps the committed totals."""
        self.array("stats_hist")[buffer] = hist
        self.array("stats_moments")[buffer] = moments

    def unit_stats(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Sums over units ``start:stop`` of histograms, moments (in unit order) and counts."""
        hist = np.zeros(self.array("unit_hist").shape[1:], dtype=np.int64)
        moments = np.zeros(self.array("unit_moments").shape[1:], dtype=np.float64)
        for unit in range(start, stop):  # fixed order: independent of the worker count
            hist += self.array("unit_hist")[unit]
            moments += self.array("unit_moments")[unit]
        counts = self.array("unit_count")[start:stop].sum(axis=0) if stop > start else np.zeros(2)
        return hist, moments, counts.astype(np.int64)

    def resize_units(self, n_units: int) -> None:
        """Grow (or shrink) every array to hold ``n_units`` units of ``shard_tiles`` slots."""
        skipped_table.create_unit_skip(self._group)  # a store made before skipped scenes were recorded
        self.array("unit_skip").resize((n_units,))
        slots = n_units * self.shard_tiles
        images = self.array("images")
        images.resize((slots, *images.shape[1:]))
        for name in SLOT_ARRAYS:
            self.array(name).resize((slots,))
        self.array("transform").resize((slots, 6))
        for name in ("unit_done", "unit_count", "unit_hist", "unit_moments"):
            arr = self.array(name)
            arr.resize((n_units, *arr.shape[1:]))

    def units_allocated(self) -> int:
        """Units the per-unit arrays hold (more than ``n_units`` after a killed registration)."""
        return int(self.array("unit_done").shape[0])

    def clear_scene_ids(self, rows: Sequence[int]) -> None:
        """Mark scene-table rows as skipped scenes (their ``id`` becomes "")."""
        self._scene_table().clear_ids(rows)

    def units_done(self, start: int = 0) -> np.ndarray:
        """Boolean array: which units ``start:`` are fully written (index 0 is unit ``start``)."""
        return self.array("unit_done")[start:].astype(bool)

    def write_unit(
        self,
        unit: int,
        tiles: np.ndarray,
        meta: dict[str, np.ndarray],
        counts: tuple[int, int],
        hist: np.ndarray,
        moments: np.ndarray,
        *,
        skipped: dict[int, str] | None = None,
        run_id: str = "",
    ) -> None:
        """Write one unit's tiles, slot metadata and statistics; mark it done last.

        Args:
            unit: Unit index (owns shard ``unit``).
            tiles: ``(k, C, T, T)`` kept tiles, ``k <= shard_tiles``.
            meta: ``scene``, ``row``, ``col``, ``valid`` arrays of length ``k`` and ``transform``
                ``(k, 6)``.
            counts: Tiles kept and dropped.
            hist: ``(C, bins)`` histogram of valid pixels.
            moments: ``(C, 3)`` count, sum, sum of squares of valid pixels.
            skipped: Scenes the unit left out (index -> reason).
            run_id: The run the unit belongs to: checked against the store's before anything is
                written and again before the unit is marked done, so a task of a run that was
                rolled back or taken over (still running on a Dask cluster) writes nothing.

        Raises:
            StoreRunChangedError: the store now belongs to another run.
        """
        self.check_run(run_id, unit)
        start = unit * self.shard_tiles
        k = len(tiles)
        if k:
            self.array("images")[start : start + k] = tiles
        for name, (dt, fill) in SLOT_ARRAYS.items():
            column = np.full(self.shard_tiles, fill, dtype=dt)
            column[:k] = meta[name]
            self.array(name)[start : start + self.shard_tiles] = column
        transforms = np.zeros((self.shard_tiles, 6), dtype=np.float64)
        transforms[:k] = np.asarray(meta["transform"], dtype=np.float64).reshape(k, 6)
        self.array("transform")[start : start + self.shard_tiles] = transforms
        self.array("unit_count")[unit] = np.asarray(counts, dtype=np.int64)
        self.array("unit_hist")[unit] = hist
        self.array("unit_moments")[unit] = moments
        self.array("unit_skip")[unit] = skipped_table.unit_skip_record(skipped)
        self.check_run(run_id, unit)
        self.array("unit_done")[unit] = 1

    def check_run(self, run_id: str, unit: int = -1) -> None:
        """Raise :class:`StoreRunChangedError` unless the store's ``run_id`` is ``run_id`` ("": no check)."""
        found = zarr.open_group(self.path, mode="r", zarr_format=3).attrs.get("run_id") if run_id else ""
        if found != run_id:
            raise StoreRunChangedError(f"{self.path}: unit {unit} belongs to run {run_id}, but run {found} "
                                       "now owns the store (the first was rolled back or taken over); "
                                       "nothing was written")

    def slot_table(self) -> dict[str, np.ndarray]:
        """Per-slot metadata arrays (``scene``, ``row``, ``col``, ``valid``) in memory."""
        return {name: self.array(name)[:] for name in SLOT_ARRAYS}

    def georef(self, slot: int) -> dict[str, Any]:
        """Georeferencing of the tile at ``slot``: scene id, window, transform, CRS, date."""
        scene = int(self.array("scene")[slot])
        if scene < 0:
            raise StoreError(f"{self.path}: slot {slot} holds no tile")
        record = self.scenes(["id", "crs", "date"], start=scene, stop=scene + 1)
        row, col = int(self.array("row")[slot]), int(self.array("col")[slot])
        size = int(self.config["tile_size"])
        return {"scene": str(record["id"][0]), "window": (row, col, size, size),
                "transform": tuple(float(v) for v in self.array("transform")[slot]),
                "crs": str(record["crs"][0]), "date": str(record["date"][0]) or None}

    def write_index(self, slots: np.ndarray, *, start: int = 0) -> None:
        """Write the slots that hold tiles, in order, from position ``start`` (earlier ones kept)."""
        slots = np.asarray(slots, dtype=np.int64)
        values = {"index": slots}
        if self.format > 1:
            for name in ("scene", "row", "col"):
                values[f"index_{name}"] = (self.array(name).get_orthogonal_selection((slots,))
                                           if len(slots) else np.zeros(0, np.int32))
        for name, column in values.items():
            arr = self.array(name)
            arr.resize((start + len(slots),))
            if len(slots):
                arr[start:] = column

    def index(self) -> np.ndarray:
        """Slots that hold tiles, in order."""
        return self.array("index")[:]

    def tile_table(self) -> dict[str, np.ndarray]:
        """``slot``, ``scene``, ``row``, ``col`` of every tile, in index order (a few reads)."""
        slots = self.index()
        if self.format == 1:
            table = self.slot_table()
            return {"slot": slots, **{k: table[k][slots] for k in ("scene", "row", "col")}}
        return {"slot": slots, **{k: self.array(f"index_{k}")[:] for k in ("scene", "row", "col")}}

    def read_tiles(self, slots: np.ndarray) -> np.ndarray:
        """Read tiles at the given slots (any order) through zarr: ``(k, C, T, T)``."""
        slots = np.asarray(slots, dtype=np.int64)
        if len(slots) == 0:
            shape = self.array("images").shape[1:]
            return np.zeros((0, *shape), dtype=self.array("images").dtype)
        return self.array("images").get_orthogonal_selection((slots,))

    def tile_reader(self) -> TileReader:
        """The fast reader of tiles for data loading (:class:`rsmae.store.shards.TileReader`)."""
        from rsmae.store.shards import TileReader  # the reader checks this store's layout itself

        return TileReader(self.path / "images")

    def nbytes_stored(self) -> int:
        """Bytes on disk under the store directory."""
        return sum(p.stat().st_size for p in self.path.rglob("*") if p.is_file())


def remove_store(path: str | Path) -> None:
    """Delete a store directory (``--overwrite``, a rolled-back first run): renamed aside first.

    A kill during the deletion leaves no half-deleted store under the real name.
    """
    remove_tree(path)

