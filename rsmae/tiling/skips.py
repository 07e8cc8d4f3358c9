"""Scenes a run leaves out instead of failing: which, why, and their record in the store.

A scene is skipped when its files fail (unreadable header, wrong band count, a damaged block
found while a unit reads it) or when it keeps no tile. The good scenes are committed; the skipped
ones are listed in the store's ``skipped`` table (id, first file, reason, batch, scene-table
row) and their scene-table rows (if registered) lose their id, so a later run with the files
fixed tiles them again; a scene whose files did not change since it was skipped is not read
again (a rerun of a finished command changes nothing). ``TileConfig.strict`` turns every such
case back into an error that rolls the run back.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from rsmae.errors import TilingError
from rsmae.store import TileStore

if TYPE_CHECKING:
    from rsmae.tiling.scenes import Scene

__all__ = ["SkippedScene", "SkippedUpdate", "commit_skipped", "empty_reason", "files_stamp", "no_scene_error",
           "repair_skipped_rows", "skipped_update", "still_skipped", "units_holding"]

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


def files_stamp(files: Iterable[str]) -> str:
    """Size and modification time of ``files``: a scene is retried only when this changes."""
    try:
        return json.dumps([[st.st_size, st.st_mtime_ns] for st in map(os.stat, files)])
    except OSError:
        return ""


def still_skipped(store: TileStore | None, scenes: Iterable[Scene]) -> list[SkippedScene]:
    """Scenes of ``scenes`` the store skipped whose files have not changed since (not retried)."""
    if store is None:
        return []
    table = store.skipped()
    recorded = {sid: (file, reason, stamp) for sid, file, reason, stamp in zip(
        table["id"].tolist(), table["file"].tolist(), table["reason"].tolist(),
        table["stamp"].tolist(), strict=True) if stamp}
    return [SkippedScene(s.scene_id, *recorded[s.scene_id][:2]) for s in scenes
            if s.scene_id in recorded and files_stamp(s.files) == recorded[s.scene_id][2]]


def repair_skipped_rows(store: TileStore) -> None:
    """Finish what a run killed after its commit left: clear skipped rows' ids, drop old tables."""
    table = store.skipped()
    ids = store.scenes(["id"])["id"]
    rows = [r for r, sid in zip(table["row"].tolist(), table["id"].tolist(), strict=True)
            if 0 <= r < len(ids) and ids[r] == sid]
    if rows:
        store.clear_scene_ids(rows)
    store.drop_stale_skipped()


@dataclass
class SkippedUpdate:
    """What a run changes in the ``skipped`` table (written by :func:`commit_skipped`).

    Attributes:
        table: The new table, ``None`` when it does not change.
        now: The scenes this run skipped, in id order.
        rows: Scene-table rows whose id is cleared once the table is committed.
    """

    table: dict[str, list[Any]] | None
    now: list[SkippedScene]
    rows: list[int]


def skipped_update(
    store: TileStore,
    registered: dict[int, str],
    unregistered: list[SkippedScene],
    tried: set[str],
    batch: int,
    stamps: dict[str, str],
) -> SkippedUpdate:
    """The ``skipped`` table after this run; nothing is written.

    Entries of earlier runs stay unless this run tried their scene again (then its outcome
    replaces them: gone when tiled, updated when it failed again) or their file was removed.

    Args:
        store: The store.
        registered: Scene-table row -> reason, for registered scenes this run skipped.
        unregistered: Scenes skipped before registration (their headers failed).
        tried: Ids of the scenes this run read (inputs the store did not hold).
        batch: The batch number of this run.
        stamps: Scene id -> :func:`files_stamp` of its files taken before this run read them
            (scenes of a resumed run are stamped now).
    """
    rows = sorted(registered)
    ids = store.scenes(["id"])["id"]
    files = {r: store.scenes(["files"], start=r, stop=r + 1)["files"][0] for r in rows}
    now = [(SkippedScene(str(ids[r]), files[r][0], registered[r]), r) for r in rows]
    stamps = {**{str(ids[r]): files_stamp(files[r]) for r in rows}, **stamps}  # a resumed scene: now
    now += [(s, -1) for s in unregistered]
    now.sort(key=lambda item: item[0].scene_id)
    old = store.skipped()
    fresh = {s.scene_id for s, _ in now}
    keep = [i for i, (sid, file) in enumerate(zip(old["id"].tolist(), old["file"].tolist(),
                                                  strict=True))
            if sid not in tried and sid not in fresh and os.path.lexists(file)]
    table = {k: [old[k][i] for i in keep] for k in old}
    for scene, row in now:
        values = (scene.scene_id, scene.file, scene.reason, batch, row, stamps.get(scene.scene_id, ""))
        for key, value in zip(table, values, strict=True):
            table[key].append(value)
    changed = len(keep) != len(old["id"]) or bool(now)
    return SkippedUpdate(table if changed else None, [s for s, _ in now], rows)


def commit_skipped(store: TileStore, update: SkippedUpdate, **attrs: Any) -> None:  # noqa: ANN401
    """Write the new table, commit it with ``attrs`` in one attribute write, then tidy up."""
    named = store.write_skipped(update.table) if update.table is not None else {}
    if attrs or named:
        store.update_attrs(**attrs, **named)
    if update.rows:
        store.clear_scene_ids(update.rows)
    store.drop_stale_skipped()
    for scene in update.now:
        log.warning("skipped scene %s: %s", scene.scene_id, scene.reason)
