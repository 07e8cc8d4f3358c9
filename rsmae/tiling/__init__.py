"""Tiling: multispectral scenes -> sharded Zarr v3 tile store."""

from rsmae.tiling.run import TileConfig, TileSummary, tile_scenes
from rsmae.tiling.scenes import BandSource, Scene, discover_scenes

__all__ = ["BandSource", "Scene", "TileConfig", "TileSummary", "discover_scenes", "tile_scenes"]
