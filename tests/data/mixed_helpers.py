"""A small real Landsat 8 store (bands B2, B3, B4): the tests of stores of different band sets (issue 24)."""

from __future__ import annotations

from pathlib import Path

import rasterio
from rasterio.windows import Window

from rsmae.tiling import TileConfig, tile_scenes
from tests.conftest import LANDSAT

LANDSAT_CONFIG = TileConfig(tile_size=64, shard_tiles=4, sensor="landsat-oli", bands=("B2", "B3", "B4"),
                            band_order="B2,B3,B4")


def tile_landsat(folder: Path, scenes: int = 6, size: int = 128) -> Path:
    """Tile ``scenes`` real crops of the Landsat 8 scene (``size`` px, inside its collar) into ``folder``.

    Returns:
        The store: ``scenes * (size // 64) ** 2`` tiles of 64 px, 4 per shard, uint16, 30 m.
    """
    crops = folder / "crops"
    crops.mkdir(parents=True, exist_ok=True)
    with rasterio.open(LANDSAT) as src:
        for i in range(scenes):
            window = Window(400 + size * (i % 3), 600 + size * (i // 3), size, size)
            profile = {**src.profile, "width": size, "height": size, "tiled": False,
                       "transform": src.window_transform(window)}
            profile.pop("blockxsize", None)
            profile.pop("blockysize", None)
            with rasterio.open(crops / f"scene{i}.tif", "w", **profile) as dst:
                dst.write(src.read(window=window))
    out = folder / "landsat.zarr"
    tile_scenes([str(crops)], out, LANDSAT_CONFIG)
    return out
