"""Tiling: scenes -> tile store. Resumable, atomic, parallel, independent of the worker count."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import rsmae
from rsmae.bands import Sensor, get_layout, get_sensor
from rsmae.errors import RsmaeError, StoreConfigError, StoreError, TilingError
from rsmae.store import CODECS, TileStore, remove_store
from rsmae.tiling.finalise import RunContext, finalise, rollback, unit_tasks
from rsmae.tiling.grid import Grid, gdal_env, scene_grid
from rsmae.tiling.lock import store_lock
from rsmae.tiling.products import check_product_levels
from rsmae.tiling.register import create_store, register
from rsmae.tiling.scenes import Scene, discover_scenes
from rsmae.tiling.skips import (
    SkippedScene,
    commit_skipped,
    files_stamp,
    no_scene_error,
    repair_skipped_rows,
    skipped_update,
    still_skipped,
)
from rsmae.tiling.units import UnitResult

__all__ = ["SkippedScene", "TileConfig", "TileSummary", "tile_scenes"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TileConfig:
    """Options of a tiling run (the CLI flags of ``pipelines/tile.py``).

    Attributes:
        tile_size: Tile side in pixels.
        stride: Step between windows (default: ``tile_size``, no overlap).
        sensor: Registry sensor name.
        bands: Bands to keep, by name (default: every band of the sensor).
        band_order: Band order inside multi-band files: a layout name or comma-separated names.
        resolution: Target pixel size in metres (default: the finest band's grid).
        max_nodata: Largest fraction of nodata/NaN pixels a kept tile may have.
        nodata: Value marking nodata when files declare none (all bands equal to it).
        shard_tiles: Tiles per shard file.
        codec: Tile compression: ``lz4`` (fast) or ``zstd`` (smaller).
        label_from_dir: Take each scene's class label from its parent folder.
        mix_product_levels: Accept Sentinel-2 L1C and L2A scenes in one store.
        strict: All or nothing: a scene that fails (unreadable, wrong bands, no kept tile) fails
            the run and rolls it back, instead of being skipped and recorded.
        allow_vrt_outside: Accept ``.vrt`` inputs reading files outside their folder or URLs.
    """

    tile_size: int = 128
    stride: int | None = None
    sensor: str = "s2-l1c"
    bands: tuple[str, ...] | None = None
    band_order: str | None = None
    resolution: float | None = None
    max_nodata: float = 0.1
    nodata: float | None = 0.0
    shard_tiles: int = 64
    codec: str = "lz4"
    label_from_dir: bool = False
    mix_product_levels: bool = False
    strict: bool = False
    allow_vrt_outside: bool = False

    def validate(self) -> None:
        """Raise :class:`TilingError` on impossible numbers."""
        checks = [
            (self.tile_size > 0, f"--tile-size must be > 0, got {self.tile_size}"),
            (self.stride is None or self.stride > 0, f"--stride must be > 0, got {self.stride}"),
            (0.0 <= self.max_nodata <= 1.0, f"--max-nodata must be in [0, 1], got {self.max_nodata}"),
            (self.shard_tiles > 0, f"--shard-tiles must be > 0, got {self.shard_tiles}"),
            (self.codec in CODECS, f"--codec must be one of {', '.join(CODECS)}, got {self.codec}"),
            (self.resolution is None or self.resolution > 0,
             f"--resolution must be > 0, got {self.resolution}"),
        ]
        for ok, message in checks:
            if not ok:
                raise TilingError(message)

    def band_names(self) -> tuple[str, ...]:
        """Canonical names of the bands to keep."""
        sensor = get_sensor(self.sensor)
        return sensor.resolve(self.bands) if self.bands else sensor.names

    def store_config(self) -> dict[str, Any]:
        """The part of the configuration a store must keep across runs.

        The band order of multi-band files is (``None``: each file's descriptions). The sensor is
        not part of it: scenes of several sensors or product levels (Sentinel-2
        L1C and L2A) share a store when the same bands are selected by name; each scene records
        its sensor.
        """
        sensor = get_sensor(self.sensor)
        order = (None if self.band_order is None else list(get_layout(self.band_order, sensor))
                 if isinstance(self.band_order, str) else list(sensor.resolve(self.band_order)))
        return {"tile_size": self.tile_size, "stride": self.stride or self.tile_size,
                "bands": list(self.band_names()), "band_order": order,
                "resolution": self.resolution, "max_nodata": self.max_nodata,
                "nodata": self.nodata, "shard_tiles": self.shard_tiles, "codec": self.codec}


@dataclass
class TileSummary:
    """What a tiling run did; ``skipped``: the scenes it left out (none when strict)."""

    store: str
    scenes: int
    new_scenes: int
    units_run: int
    tiles_kept: int
    tiles_dropped: int
    bytes_written: int
    seconds: float
    stats: dict[str, dict[str, float]] = field(default_factory=dict)
    skipped: list[SkippedScene] = field(default_factory=list)


@dataclass(frozen=True)
class _Planned:
    scene: Scene
    grid: Grid
    dtype: str
    nodata: float | None


def _plan_scenes(
    scenes: Sequence[Scene], config: TileConfig
) -> tuple[list[_Planned], list[tuple[Scene, RsmaeError]]]:
    """Grids of the scenes; scenes whose files fail are returned apart (raised when strict)."""
    sensor = get_sensor(config.sensor)
    planned, failed = [], []
    with gdal_env():
        for scene in scenes:
            try:
                planned.append(_plan_one(scene, sensor, config))
            except RsmaeError as err:
                if config.strict:
                    raise
                failed.append((scene, err))
    dtypes = sorted({p.dtype for p in planned})
    if len(dtypes) > 1:
        raise TilingError(f"scenes mix dtypes {dtypes}; tile them into separate stores")
    plain = [p.scene.files[0] for p in planned if not p.grid.crs]
    if plain:
        log.warning("%d scene(s) have no georeferencing (e.g. %s): their tiles keep pixel "
                    "coordinates (identity transform, no CRS)", len(plain), plain[0])
    return planned, failed


def _plan_one(scene: Scene, sensor: Sensor, config: TileConfig) -> _Planned:
    grid, dtype, declared = scene_grid(scene, sensor, config.resolution)
    if grid.width < config.tile_size or grid.height < config.tile_size:
        raise TilingError(
            f"{scene.files[0]}: scene {scene.scene_id} is {grid.width}x{grid.height} px on "
            f"its grid, smaller than one {config.tile_size}-px tile; use a smaller "
            "--tile-size or leave it out"
        )
    return _Planned(scene, grid, dtype, declared if declared is not None else config.nodata)


def _check_out(path: Path) -> None:
    if path.exists() and not path.is_dir():
        raise StoreError(f"{path}: exists and is a file, not a Zarr store; choose another --out")
    if path.is_dir() and any(path.iterdir()) and not (path / "zarr.json").is_file():
        raise StoreError(f"{path}: exists and is not a Zarr store; choose another --out")
    parent = path.parent if not path.exists() else path
    while not parent.exists():
        parent = parent.parent
    if not os.access(parent, os.W_OK):
        raise StoreError(f"{path}: not writable ({parent} denies writing); choose another --out")


def tile_scenes(
    inputs: Sequence[str],
    out: str | Path,
    config: TileConfig,
    *,
    workers: int = 1,
    dask: str | bool | None = None,
    overwrite: bool = False,
    command: str = "",
    on_unit: Callable[[UnitResult, int], None] | None = None,
    break_lock: bool = False,
) -> TileSummary:
    """Tile scenes into a store; resume or append when it exists.

    Every input is found and checked before the store is touched. Units already written are
    skipped, so re-running a killed command finishes the job; a finished store with no new scenes
    is left as it is. A scene whose files fail (or that keeps no tile) is skipped: the others are
    committed, the skipped ones listed in :attr:`TileSummary.skipped` and in the store's
    ``skipped`` table, and a later run retries them. With ``config.strict``, or when no scene at
    all could be tiled, the error is raised and the store rolled back to its last finished state
    (or removed if it never had one). The store is locked for the run (``<out>.lock``).

    Args:
        inputs: Files, folders or globs.
        out: Store path.
        config: Tiling options.
        workers: Local worker processes (or local Dask workers).
        dask: ``True`` for a Dask LocalCluster, or a scheduler address.
        overwrite: Replace an existing store made with another configuration.
        command: Command line recorded in the store.
        on_unit: Progress callback ``(result, total_units)``.
        break_lock: Take the store lock over even when another host holds it.

    Raises:
        StoreLockedError: another run holds the store lock.
    """
    started = time.perf_counter()
    config.validate()
    out = Path(out)
    scenes = discover_scenes(inputs, get_sensor(config.sensor), config.band_names(),
                             band_order=config.band_order, label_from_dir=config.label_from_dir,
                             mix_product_levels=config.mix_product_levels,
                             allow_vrt_outside=config.allow_vrt_outside,
                             known_files=frozenset() if overwrite else _known_files(out))
    _check_out(out)
    run = RunContext(scenes, config, workers, dask, on_unit)
    with store_lock(out, break_lock=break_lock):
        return _tile_locked(run, out, overwrite, command, started)


def _tile_locked(run: RunContext, out: Path, overwrite: bool, command: str,
                 started: float) -> TileSummary:
    existing = _repaired(out) if not overwrite else None
    known = _known_ids(existing)
    held = still_skipped(existing, [s for s in run.inputs if s.scene_id not in known])
    fresh = [s for s in run.inputs if s.scene_id not in known | {h.scene_id for h in held}]
    run.tried = {s.scene_id for s in fresh}
    run.stamps = {s.scene_id: files_stamp(s.files) for s in fresh}  # before reading them
    planned, failed = _plan_scenes(fresh, run.config)
    run.unplanned = [SkippedScene(s.scene_id, s.files[0], str(e)) for s, e in failed]
    if overwrite and (out / "zarr.json").is_file():
        TileStore.open(out, require_complete=False)  # refuse to delete what is not a tile store
        remove_store(out)
    if not planned and not (out / "zarr.json").is_file():  # every scene failed: no store
        raise failed[0][1] if len(failed) == 1 else no_scene_error([str(e) for _, e in failed])
    store, snapshot, new = _open_orcreate_store(out, planned, run.config, command)
    # the batch this run works on: its own new one, or the unfinished one it resumes
    run.batch = int(store.attrs["n_batches"]) - (0 if store.complete and not new else 1)
    start = int(snapshot["n_units"]) if snapshot else 0
    tasks = unit_tasks(store, run, start=start)
    if tasks or not store.complete:  # this run owns the store: tasks of older runs write nothing
        store.update_attrs(run_id=run.run_id)
    if store.complete and not tasks:  # finished, nothing new: write nothing but skipped scenes
        update = skipped_update(store, {}, run.unplanned, run.tried, run.batch, run.stamps)
        commit_skipped(store, update)
        return _summary(store, out, 0, 0, started, update.now + held)
    try:
        run.execute(tasks)
        skipped = finalise(store, snapshot, run)
    except RsmaeError:  # bad input: undo; an interrupt keeps the progress for a resume
        rollback(store, snapshot)
        raise
    return _summary(store, out, new, len(tasks), started, skipped + held)


def _repaired(out: Path) -> TileStore | None:
    """The existing store (``None`` if none), with what a run killed after its commit left undone."""
    if not (out / "zarr.json").is_file():
        return None
    store = TileStore.open(out, mode="r+", require_complete=False)
    if store.format >= 2:
        repair_skipped_rows(store)
    return store


def _known_ids(store: TileStore | None) -> set[str]:
    """Ids of the scenes an existing store holds (only new scenes are read and planned)."""
    return set() if store is None else set(store.scenes(["id"])["id"].tolist()) - {""}


def _known_files(out: Path) -> frozenset[str]:
    """Files of the single-file scenes a store holds as finished, left out of discovery.

    Only the scenes of the last finished state count: the scenes of an unfinished run must be
    parsed again, since its units are resumed from them. Read before the lock: only an
    optimisation; the ids read under the lock decide what is new.
    """
    if not (out / "zarr.json").is_file():
        return frozenset()
    try:
        store = TileStore.open(out, require_complete=False)
        committed = store.attrs.get("committed") or {}
        table = store.scenes(["id", "files"], stop=int(committed.get("n_scenes", 0)))
    except RsmaeError:  # not a store, or an old one: discovery parses every input as before
        return frozenset()
    skipped = set(store.skipped()["id"].tolist())  # a row a killed commit left its id
    return frozenset(f[0] for i, f in zip(table["id"].tolist(), table["files"], strict=True)
                     if i and i not in skipped and len(f) == 1)


def _summary(store: TileStore, out: Path, new: int, units_run: int, started: float,
             skipped: list[SkippedScene]) -> TileSummary:
    attrs = store.attrs
    return TileSummary(str(out), int(attrs["n_scenes"]), new, units_run, int(attrs["tiles"]),
                       int(attrs["dropped"]), store.nbytes_stored(), time.perf_counter() - started,
                       attrs["stats"], skipped)


def _open_orcreate_store(
    out: Path, planned: list[_Planned], config: TileConfig, command: str
) -> tuple[TileStore, dict[str, Any] | None, int]:
    """Open (checking config and inputs) or create the store; register new scenes."""
    wanted = config.store_config()
    if (out / "zarr.json").is_file():
        store = TileStore.open(out, mode="r+", require_complete=False)
        order = wanted.pop("band_order")
        store.check_config({**wanted, "band_order": _merged_order(store.config, order)})
        if order is not None and planned and store.config.get("band_order") is None:
            store.update_attrs(config={**store.config, "band_order": order})  # the first explicit one
        if planned and store.attrs["dtype"] != planned[0].dtype:
            raise StoreConfigError(f"{out}: holds {store.attrs['dtype']} pixels, the inputs "
                                   f"are {planned[0].dtype}; use another --out")
        _check_levels(store, planned, config, out)
    else:
        sensor = get_sensor(config.sensor)
        bands = [{"name": b.name, "wavelength_nm": b.wavelength_nm, "gsd_m": b.gsd_m}
                 for b in (sensor.band(n) for n in config.band_names())]
        store = create_store(out, config=wanted, bands=bands, dtype=planned[0].dtype,
                        shard_tiles=config.shard_tiles, codec=config.codec,
                        attrs={"sensor": config.sensor, "rsmae_version": rsmae.__version__,
                               "command": command, "committed": None})
    snapshot = store.attrs.get("committed")
    return store, snapshot, register(store, planned, config)


def _merged_order(stored: dict[str, Any], order: list[str] | None) -> list[str] | None:
    """The band order to compare with the store's: only two explicit orders can disagree.

    ``None`` (no ``--band-order``: band folders, or files that name their bands) fits any store; an
    explicit order fits a store that has none yet (it is recorded) or the same one. Stores made
    before the order was recorded have no key: nothing is compared.
    """
    if "band_order" not in stored:
        return None
    return stored["band_order"] if order is None or stored["band_order"] is None else order


def _check_levels(store: TileStore, planned: list[_Planned], config: TileConfig, out: Path) -> None:
    """Refuse new scenes of another Sentinel-2 product level than the stored ones."""
    if not planned:
        return
    stored = store.scenes(["id", "product_level"])
    levels: dict[str, str | None] = {}
    for level in sorted(set(stored["product_level"].tolist()) - {""}):
        levels[str(stored["id"][stored["product_level"] == level][0])] = level
    levels.update({p.scene.scene_id: p.scene.product_level for p in planned})
    check_product_levels(levels, allow_mixed=config.mix_product_levels,
                         where=f"{out} and the new inputs")


def summary_dict(summary: TileSummary) -> dict[str, Any]:
    """JSON-ready summary."""
    return asdict(summary)
