"""Registering a run's new scenes in a store: scene rows, the batch, the unit arrays, then the counts.

The counts in the root attributes are written last, so a registration killed half-way is redone by
the next run (:func:`register`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from rsmae.errors import StoreConfigError, StoreError
from rsmae.store import TileStore, remove_store
from rsmae.tiling.scenes import Scene
from rsmae.tiling.units import plan_units, windows

if TYPE_CHECKING:
    from rsmae.tiling.run import TileConfig, _Planned

__all__ = ["create_store", "register", "scene_rows"]


def scene_rows(planned: Sequence[_Planned], sensor: str) -> dict[str, Any]:
    """Scene-table rows (columns) of planned scenes."""
    def text(values: list[str | None]) -> np.ndarray:
        return np.array([v or "" for v in values], dtype=np.dtypes.StringDType())

    scenes = [p.scene for p in planned]
    return {
        "id": text([s.scene_id for s in scenes]), "sensor": text([sensor] * len(scenes)),
        "date": text([s.date for s in scenes]), "label": text([s.label for s in scenes]),
        "split": text([s.split for s in scenes]), "crs": [p.grid.crs or "" for p in planned],
        "transform": np.array([p.grid.transform for p in planned], np.float64).reshape(-1, 6),
        "width": np.array([p.grid.width for p in planned], np.int64),
        "height": np.array([p.grid.height for p in planned], np.int64),
        "nodata": np.array([np.nan if p.nodata is None else p.nodata for p in planned], np.float64),
        "files": [s.files for s in scenes],
        "product_level": text([s.product_level for s in scenes]),
        "baseline": text([s.baseline for s in scenes]),
        "offset": np.array([_offset(s) for s in scenes], np.float64),
    }


def _offset(scene: Scene) -> float:
    """The radiometric offset applied to the scene's bands (NaN when the bands differ)."""
    values = set(scene.offset)
    return float(values.pop()) if len(values) == 1 else float("nan")


def register(store: TileStore, planned: list[_Planned], config: TileConfig) -> int:
    """Append the scenes the store does not hold yet (one batch); returns their number.

    The scene rows, the batch and the unit arrays are written first; the counts in the root
    attributes last, so a registration killed half-way is redone by the next run.
    """
    attrs = store.attrs
    n, n_batches, n_units = attrs["n_scenes"], attrs["n_batches"], attrs["n_units"]
    if store.units_allocated() != n_units:  # killed while registering: back to the last state
        store.resize_units(n_units)
    known = set(store.scenes(["id"])["id"].tolist())
    fresh = [p for p in planned if p.scene.scene_id not in known]
    if not fresh:
        return 0
    if not store.complete and n_batches and _unfinished(store):
        raise StoreConfigError(
            f"{store.path}: an unfinished run over other inputs is in this store; rerun that "
            "command to finish it, or pass --overwrite"
        )
    store.update_attrs(complete=False)
    stride = attrs["config"]["stride"]
    scene_windows = [(n + i, windows(p.grid, config.tile_size, stride)) for i, p in enumerate(fresh)]
    stop = n_units + len(plan_units(scene_windows, config.shard_tiles))
    store.write_scenes(n, scene_rows(fresh, config.sensor))
    store.write_batch(n_batches, (n, n + len(fresh), n_units, stop))
    store.resize_units(stop)
    store.update_attrs(n_scenes=n + len(fresh), n_batches=n_batches + 1, n_units=stop)
    return len(fresh)


def create_store(out: Path, **kwargs: Any) -> TileStore:
    """A new store at ``out`` (:meth:`TileStore.create`); an OS error names ``out`` and the fix."""
    try:
        return TileStore.create(out, **kwargs)
    except OSError as err:
        remove_store(out)
        raise StoreError(f"{out}: cannot create the store ({err.strerror}); choose another --out"
                         ) from err


def _unfinished(store: TileStore) -> bool:
    committed = store.attrs.get("committed")
    return not bool(store.units_done(int(committed["n_units"]) if committed else 0).all())
