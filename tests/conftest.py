"""Shared fixtures: the real data in ../shared/data and small tiled stores made from it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from rsmae.tiling import TileConfig, tile_scenes

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("RSMAE_DATA", ROOT.parent / "shared" / "data"))
OSCD = DATA / "oscd_subset" / "Onera Satellite Change Detection dataset - Images"
EUROSAT = DATA / "eurosat_ms_subset"
BIGEARTHNET = DATA / "bigearthnet_s2_samples"
LANDSAT = DATA / "landsat8_scene" / "LC08_L1TP_224078_20200518_20200518_01_RT.TIF"


def pytest_sessionstart(session: pytest.Session) -> None:
    if not OSCD.is_dir():
        raise pytest.UsageError(
            f"real test data not found at {DATA}; put shared/data beside the repo or set RSMAE_DATA"
        )


@pytest.fixture(scope="session")
def bigearthnet_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("stores") / "bigearthnet.zarr"
    tile_scenes([str(BIGEARTHNET)], out, TileConfig(tile_size=60, sensor="s2-l2a"))
    return out


@pytest.fixture(scope="session")
def eurosat_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("stores") / "eurosat.zarr"
    config = TileConfig(tile_size=64, band_order="eurosat", label_from_dir=True, shard_tiles=32)
    tile_scenes([str(EUROSAT)], out, config)
    return out
