"""A store's root attributes change in one metadata write: the run's commit points rely on it."""

from __future__ import annotations

from pathlib import Path

import pytest
from zarr.storage import LocalStore

from rsmae.store import TileStore


def test_update_attrs_is_one_metadata_write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = TileStore.create(tmp_path / "s.zarr", config={"tile_size": 8}, dtype="uint16",
                             bands=[{"name": "B1", "wavelength_nm": 443.0, "gsd_m": 60.0}],
                             shard_tiles=2)
    writes: list[str] = []
    set_ = LocalStore.set

    async def counting(self: LocalStore, key: str, value: object) -> None:
        writes.append(key)
        await set_(self, key, value)

    monkeypatch.setattr(LocalStore, "set", counting)
    store.update_attrs(n_scenes=3, n_batches=1, n_units=2, complete=True)
    assert writes == ["zarr.json"]
    reopened = TileStore.open(tmp_path / "s.zarr").attrs
    assert (reopened["n_scenes"], reopened["n_batches"], reopened["n_units"]) == (3, 1, 2)
