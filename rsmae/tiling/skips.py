"""Scenes a run leaves out instead of failing: which, why, and their record in the store.

A scene is skipped when its files fail (unreadable header, wrong band count, a damaged block
found while a unit reads it) or when it keeps no tile. The good scenes are committed; the skipped
ones are listed in the store's ``skipped`` table (id, first file, reason, batch, scene-table
row) and their scene-table rows (if registered) lose their id, so a later run with the files
fixed tiles them again. ``TileConfig.strict`` turns every such case back into an error that rolls
the run back.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from rsmae.errors import TilingError
from rsmae.store import TileStore

__all__ = ["SkippedScene", "empty_reason", "no_scene_error", "record_skipped", "units_holding"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SkippedScene:
    """A scene a run could not tile.

    Attributes:
        scene_id: Scene id.
        file: Its first file.
        reason: The error (naming the file and the fix).
    """

    scene_id: str
    file: str
    reason: str


def empty_reason(file: str, max_nodata: float) -> str:
    """Why a scene that kept no tile is skipped (the error a strict run raises)."""
    return (f"{file}: no tile with at most {max_nodata:.0%} nodata (all-nodata or NaN scene); "
            "leave it out or raise --max-nodata")


def no_scene_error(reasons: list[str]) -> TilingError:
    """The error of a run that would make a store without any scene."""
    if len(reasons) == 1:
        return TilingError(reasons[0])
    shown = "; ".join(reasons[:3]) + (" ..." if len(reasons) > 3 else "")
    return TilingError(f"no scene could be tiled ({len(reasons)} failed): {shown}")


def units_holding(store: TileStore, scenes: Iterable[int], start: int, stop: int) -> set[int]:
    """Units ``start:stop`` whose slots hold a tile of one of ``scenes``."""
    wanted = np.fromiter(scenes, dtype=np.int64)
    if not len(wanted) or stop <= start:
        return set()
    st = store.shard_tiles
    slots = store.array("scene")[start * st : stop * st].reshape(-1, st)
    return {start + int(u) for u in np.nonzero(np.isin(slots, wanted).any(axis=1))[0]}


def record_skipped(
    store: TileStore,
    registered: dict[int, str],
    unregistered: list[SkippedScene],
    tried: set[str],
    batch: int,
) -> list[SkippedScene]:
    """Write the ``skipped`` table and clear the ids of skipped scene-table rows.

    Entries of earlier runs stay unless this run tried their scene again (then its outcome
    replaces them: gone when tiled, updated when it failed again) or their file was removed.

    Args:
        store: The store (open for writing).
        registered: Scene-table row -> reason, for registered scenes this run skipped.
        unregistered: Scenes skipped before registration (their headers failed).
        tried: Ids of the scenes this run read (inputs the store did not hold).
        batch: The batch number of this run.

    Returns:
        The scenes this run skipped, in id order.
    """
    rows = sorted(registered)
    ids = store.scenes(["id"])["id"]
    files = {r: store.scenes(["files"], start=r, stop=r + 1)["files"][0][0] for r in rows}
    now = [(SkippedScene(str(ids[r]), files[r], registered[r]), r) for r in rows]
    now += [(s, -1) for s in unregistered]
    now.sort(key=lambda item: item[0].scene_id)
    old = store.skipped()
    fresh = {s.scene_id for s, _ in now}
    keep = [i for i, (sid, file) in enumerate(zip(old["id"].tolist(), old["file"].tolist(),
                                                  strict=True))
            if sid not in tried and sid not in fresh and os.path.lexists(file)]
    table = {k: [old[k][i] for i in keep] for k in old}
    for scene, row in now:
        for key, value in zip(table, (scene.scene_id, scene.file, scene.reason, batch, row),
                              strict=True):
            table[key].append(value)
    if len(keep) != len(old["id"]) or now:  # written only when it changes
        store.write_skipped(table)
    store.clear_scene_ids(rows)
    for scene, _ in now:
        log.warning("skipped scene %s: %s", scene.scene_id, scene.reason)
    return [s for s, _ in now]
