"""Units of work: planning windows into shard-sized units, and running one unit.

A unit is ``shard_tiles`` consecutive windows (row-major, scenes in id order); it owns one shard
of the store. Running a unit reads its windows, drops tiles with too much nodata, writes the kept
tiles compacted at the start of its shard, and records its statistics. It is a plain function of
picklable arguments, so local processes and Dask workers run it the same way.

A scene whose files fail while a unit reads it (a damaged block, a truncated file) is left out of
that unit and recorded with the unit (``unit_skip``) instead of failing the run, unless the task
is ``strict``; the run then re-runs the other units holding tiles of that scene without it
(``skip``), so a skipped scene leaves no tile and no pixel in the statistics.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np
from rasterio.errors import RasterioError

from rsmae.errors import RsmaeError
from rsmae.store import TileStore, hist_bins
from rsmae.tiling.grid import Grid, SceneReader, gdal_env
from rsmae.tiling.scenes import Scene
from rsmae.tiling.stats import accumulate

__all__ = ["UnitResult", "UnitTask", "plan_units", "run_unit", "valid_mask", "windows"]


@dataclass(frozen=True)
class UnitTask:
    """Everything a worker needs to write one unit: it never reads the store's attributes.

    Attributes:
        store: Store path.
        unit: Unit index (owns shard ``unit``).
        windows: ``(scene index, row, col)`` of each window, in order.
        scenes: Scene index -> scene, grid and nodata value (``None`` or NaN: none).
        dtype: Pixel dtype of the store.
        tile_size: Tile side in pixels.
        max_nodata: Largest nodata fraction of a kept tile.
        n_bands: Bands of the store.
        shard_tiles: Tiles per shard (and unit).
        strict: Raise on a scene that fails to read instead of leaving it out.
        skip: Scene index -> reason, for scenes to leave out without reading (skipped by
            another unit).
        run_id: The run this task belongs to (the store refuses a task of an older run).
    """

    store: str
    unit: int
    windows: tuple[tuple[int, int, int], ...]
    scenes: dict[int, tuple[Scene, Grid, float | None]]
    dtype: str
    tile_size: int
    max_nodata: float
    n_bands: int
    shard_tiles: int
    strict: bool = False
    skip: dict[int, str] = field(default_factory=dict)
    run_id: str = ""


@dataclass(frozen=True)
class UnitResult:
    """What a unit kept and dropped, and the scenes it left out (index -> reason)."""

    unit: int
    kept: int
    dropped: int
    skipped: dict[int, str] = field(default_factory=dict)


def windows(grid: Grid, tile_size: int, stride: int) -> list[tuple[int, int]]:
    """Top-left (row, col) of every full window on ``grid``, row-major."""
    rows = range(0, grid.height - tile_size + 1, stride)
    cols = range(0, grid.width - tile_size + 1, stride)
    return [(r, c) for r in rows for c in cols]


def plan_units(
    scene_windows: list[tuple[int, list[tuple[int, int]]]], shard_tiles: int
) -> list[tuple[tuple[int, int, int], ...]]:
    """Cut the windows of consecutive scenes into units of ``shard_tiles`` windows."""
    flat = [(s, r, c) for s, wins in scene_windows for r, c in wins]
    return [tuple(flat[i : i + shard_tiles]) for i in range(0, len(flat), shard_tiles)]


def valid_mask(tile: np.ndarray, nodata: float | None) -> np.ndarray:
    """``(T, T)`` True where a pixel is valid: no band NaN and not every band equal to nodata."""
    ok = np.ones(tile.shape[1:], dtype=bool)
    if tile.dtype.kind == "f":
        ok &= ~np.isnan(tile).any(axis=0)
    if nodata is not None and not np.isnan(nodata):
        ok &= ~(tile == np.asarray(nodata, dtype=tile.dtype)).all(axis=0)
    return ok


def run_unit(task: UnitTask) -> UnitResult:
    """Read, filter and write one unit; returns its counts. Safe to run twice."""
    skipped = dict(task.skip)
    with gdal_env():
        tiles, masks, meta, dropped = _read_unit(task, skipped)
    store = TileStore.writer(task.store, shard_tiles=task.shard_tiles)
    n_bands = task.n_bands
    bins = hist_bins(task.dtype)
    hist = np.zeros((n_bands, bins), dtype=np.int64)
    moments = np.zeros((n_bands, 3), dtype=np.float64)
    t = task.tile_size
    stack = np.stack(tiles) if tiles else np.zeros((0, n_bands, t, t), dtype=task.dtype)
    if tiles:
        accumulate(stack, np.stack(masks), bins, hist, moments)
    arrays = {k: np.asarray(v) for k, v in meta.items()}
    store.write_unit(task.unit, stack, arrays, (len(tiles), dropped), hist, moments,
                     skipped=skipped, run_id=task.run_id)
    return UnitResult(task.unit, len(tiles), dropped, skipped)


def _read_unit(
    task: UnitTask, skipped: dict[int, str]
) -> tuple[list[np.ndarray], list[np.ndarray], dict[str, list], int]:
    """Read the unit's windows; keep tiles with little enough nodata.

    Scenes in ``skipped`` are not read; a scene that fails to read is added to it (its tiles of
    this unit discarded) unless the task is strict.
    """
    tiles: list[np.ndarray] = []
    masks: list[np.ndarray] = []
    meta: dict[str, list] = {"scene": [], "row": [], "col": [], "valid": [], "transform": []}
    dropped = 0
    for scene_idx, group in itertools.groupby(task.windows, key=lambda w: w[0]):
        if scene_idx in skipped:
            continue
        out: tuple[list, list, dict[str, list]] = ([], [], {k: [] for k in meta})
        try:
            dropped_here = _read_scene(task, scene_idx, list(group), out)
        except (RsmaeError, RasterioError) as err:
            if task.strict:
                raise
            skipped[scene_idx] = str(err)
            continue
        dropped += dropped_here
        tiles += out[0]
        masks += out[1]
        for key in meta:
            meta[key] += out[2][key]
    return tiles, masks, meta, dropped


def _read_scene(task: UnitTask, scene_idx: int, group: list[tuple[int, int, int]],
                out: tuple[list, list, dict[str, list]]) -> int:
    """Read one scene's windows of the unit into ``out`` (tiles, masks, meta); returns drops."""
    t = task.tile_size
    tiles, masks, meta = out
    dropped = 0
    scene, grid, nodata = task.scenes[scene_idx]
    with SceneReader(scene, grid, task.dtype, nodata=nodata) as reader:
        for row, cells in itertools.groupby(group, key=lambda w: w[1]):
            cols = [c for _, _, c in cells]
            left = cols[0]
            strip = reader.read(row, left, t, cols[-1] + t - left)
            for col in cols:
                tile = strip[:, :, col - left : col - left + t]
                ok = valid_mask(tile, nodata)
                frac = float(ok.mean())
                if 1.0 - frac > task.max_nodata:
                    dropped += 1
                    continue
                tiles.append(tile)
                masks.append(ok)
                a, b, c, d, e, f = grid.transform
                shifted = (a, b, c + a * col + b * row, d, e, f + d * col + e * row)
                for key, value in zip(meta, (scene_idx, row, col, frac, shifted), strict=True):
                    meta[key].append(value)
    return dropped
