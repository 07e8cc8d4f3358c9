"""The end of a tiling run: unit tasks from the stored plan, skipped scenes, commit, rollback.

:func:`finalise` turns the units a run wrote into a finished state: scenes that failed are left
out (units holding tiles of them re-run without them), scenes that kept no tile are skipped, the
tile index, per-scene counts and merged statistics are written, and the counts are committed.
:func:`rollback` undoes an unfinished run.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from rsmae.errors import StoreConfigError, TilingError
from rsmae.store import TileStore, remove_store
from rsmae.tiling.executor import execute
from rsmae.tiling.grid import Grid
from rsmae.tiling.scenes import Scene
from rsmae.tiling.skips import (
    SkippedScene,
    commit_skipped,
    empty_reason,
    no_scene_error,
    skipped_update,
    units_holding,
)
from rsmae.tiling.stats import summarise
from rsmae.tiling.units import UnitResult, UnitTask, plan_units, windows

if TYPE_CHECKING:
    from rsmae.tiling.run import TileConfig

__all__ = ["RunContext", "finalise", "rollback", "unit_tasks"]

log = logging.getLogger(__name__)


@dataclass
class RunContext:
    """What a run works on: its inputs, options and executor, passed between its steps."""

    inputs: list[Scene]
    config: TileConfig
    workers: int
    dask: str | bool | None
    on_unit: Callable[[UnitResult, int], None] | None
    tried: set[str] = field(default_factory=set)
    stamps: dict[str, str] = field(default_factory=dict)
    unplanned: list[SkippedScene] = field(default_factory=list)
    batch: int = 0
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex)

    def execute(self, tasks: list[UnitTask]) -> None:
        """Run units with progress."""
        execute(tasks, workers=self.workers, dask=self.dask,
                on_result=lambda r: self.on_unit and self.on_unit(r, len(tasks)))


def unit_tasks(store: TileStore, run: RunContext, *, start: int, units: set[int] | None = None,
                skip: dict[int, str] | None = None) -> list[UnitTask]:
    """Tasks for the units not yet written (or for ``units``), from unit ``start`` on.

    The plan is rebuilt from the stored batches; only batches with a wanted unit are read from
    the scene table; grids come from it. Units before ``start`` (the last finished state) are
    done: their flags are not read. Scenes in ``skip`` are left out of the tasks unread.
    """
    by_id = {s.scene_id: s for s in run.inputs}
    done = store.units_done(start)
    skip = skip or {}
    attrs, config = store.attrs, run.config
    stride, n_bands = attrs["config"]["stride"], len(attrs["bands"])
    tasks = []
    for first, last, unit_start, unit_stop in store.batches().tolist():
        wanted = {u for u in range(max(unit_start, start), unit_stop)
                  if (u in units if units is not None else not done[u - start])}
        if not wanted:
            continue
        cols = store.scenes(["id", "crs", "transform", "width", "height", "nodata"],
                            start=first, stop=last)
        grids = {first + i: Grid(crs, tuple(t), w, h) for i, (crs, t, w, h) in enumerate(zip(
            cols["crs"], cols["transform"].tolist(), cols["width"].tolist(),
            cols["height"].tolist(), strict=True))}
        ids, nodata = cols["id"].tolist(), cols["nodata"].tolist()
        scene_windows = [(i, windows(g, config.tile_size, stride)) for i, g in grids.items()]
        for offset, unit_windows in enumerate(plan_units(scene_windows, store.shard_tiles)):
            unit = unit_start + offset
            if unit not in wanted:
                continue
            indexes = sorted({w[0] for w in unit_windows})
            scenes = {}
            for idx in (i for i in indexes if i not in skip):
                if ids[idx - first] not in by_id:
                    raise StoreConfigError(
                        f"{store.path}: scene {ids[idx - first]} of an unfinished run is not "
                        "among the inputs; rerun the same command to finish it, or pass --overwrite")
                scenes[idx] = (by_id[ids[idx - first]], grids[idx], nodata[idx - first])
            tasks.append(UnitTask(str(store.path), unit, unit_windows, scenes, attrs["dtype"],
                                  config.tile_size, config.max_nodata, n_bands, store.shard_tiles,
                                  config.strict, {i: skip[i] for i in indexes if i in skip},
                                  run.run_id))
    return tasks


_EMPTY = {"n_scenes": 0, "n_batches": 0, "n_units": 0, "tiles": 0, "dropped": 0,
          "stats_buffer": 1, "classes": []}


def _skip_failed(store: TileStore, start: int, stop: int, run: RunContext) -> dict[int, str]:
    """Scenes units ``start:stop`` left out; units holding tiles of them are re-run without."""
    failed = store.unit_skips(start, stop)
    for _ in range(3):  # a re-run may find another scene failing (the files changed meanwhile)
        units = units_holding(store, failed, start, stop)
        if not units:
            break
        run.execute(unit_tasks(store, run, start=start, units=units, skip=failed))
        failed = store.unit_skips(start, stop)
    return failed


def finalise(store: TileStore, snapshot: dict[str, Any] | None, run: RunContext) -> list[SkippedScene]:
    """Index, statistics, per-scene checks of the units added since ``snapshot``; mark complete.

    Only the new units are read: their statistics are added to the running totals of the last
    finished state (kept in one buffer; the sum goes to the other, so a finalise killed half-way
    is redone from the same totals). Scenes that failed or kept no tile are skipped (raised when
    strict, or when no scene would be left). Returns the skipped scenes.
    """
    attrs = store.attrs
    base = snapshot or _EMPTY
    first, st = base["n_scenes"], store.shard_tiles
    failed = _skip_failed(store, base["n_units"], attrs["n_units"], run)
    scene = store.array("scene")[base["n_units"] * st : attrs["n_units"] * st]
    kept = np.nonzero(scene >= 0)[0]
    per_scene = np.bincount(scene[kept] - first, minlength=attrs["n_scenes"] - first)
    empty = _empty_scenes(store, first, per_scene, failed, run.config)
    failed = {**failed, **empty}
    if snapshot is None and len(failed) == attrs["n_scenes"]:
        raise no_scene_error([failed[i] for i in sorted(failed)] + [s.reason for s in run.unplanned])
    hist, moments, counts = store.unit_stats(base["n_units"], attrs["n_units"])
    if snapshot is not None:
        old_hist, old_moments = store.stats_totals(base["stats_buffer"])
        hist, moments = old_hist + hist, old_moments + moments
    buffer = 1 - base["stats_buffer"]
    store.write_stats_totals(buffer, hist, moments)
    stats = dict(zip(store.band_names, summarise(hist, moments, attrs["dtype"]), strict=True))
    store.write_index(kept + base["n_units"] * st, start=base["tiles"])
    store.write_scene_tiles(first, per_scene)
    labels = store.scenes(["label"], start=first)["label"]
    good = np.ones(len(labels), dtype=bool)
    good[[i - first for i in failed]] = False
    committed = {"n_scenes": attrs["n_scenes"], "n_batches": attrs["n_batches"],
                 "n_units": attrs["n_units"], "tiles": base["tiles"] + len(kept),
                 "dropped": base["dropped"] + int(counts[1]), "stats_buffer": buffer,
                 "stats": stats, "classes": sorted(set(base["classes"]) |
                                                   set(np.unique(labels[good]).tolist()) - {""})}
    update = skipped_update(store, failed, run.unplanned, run.tried, run.batch, run.stamps)
    commit_skipped(store, update, **committed, committed=committed, complete=True)
    return update.now


def _empty_scenes(store: TileStore, first: int, per_scene: np.ndarray, failed: dict[int, str],
                  config: TileConfig) -> dict[int, str]:
    """New scenes (not already failed) that kept no tile -> reason; raised when strict."""
    empty = [first + int(i) for i in np.nonzero(per_scene == 0)[0] if first + int(i) not in failed]
    if not empty:
        return {}
    reasons = {i: empty_reason(store.scenes(["files"], start=i, stop=i + 1)["files"][0][0],
                               config.max_nodata) for i in empty}
    if config.strict:
        raise TilingError(reasons[empty[0]] if len(empty) == 1 else
                          f"{len(empty)} scenes kept no tile, e.g. {reasons[empty[0]]}")
    return reasons


def rollback(store: TileStore, snapshot: dict[str, Any] | None) -> None:
    """Undo an unfinished run: back to the last finished state, or remove the store."""
    store.update_attrs(run_id=uuid.uuid4().hex)  # tasks of the failed run still running write nothing
    if snapshot is None:
        log.warning("removing %s: the run did not finish and no earlier finished state exists",
                    store.path)
        remove_store(store.path)
        return
    store.truncate(snapshot["n_scenes"], snapshot["n_batches"])
    store.resize_units(snapshot["n_units"])
    store.write_index(np.zeros(0, dtype=np.int64), start=snapshot["tiles"])
    store.update_attrs(**snapshot, committed=snapshot, complete=True)


