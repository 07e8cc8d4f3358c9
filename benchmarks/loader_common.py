"""Constants and the real scene sets shared by the loader benchmark's modules (``bench_loader.py``)."""

from __future__ import annotations

import glob
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
TILE = 128
BATCH = 32
TARGET_TILING = 1.5  # tiling seconds / read seconds, at most
TARGET_LOADER = 20.0  # rsmae samples/s / torchgeo samples/s, at least
RSMAE_KINDS = ("rsmae", "rsmae-native")
LANDSAT_FILE = "LC08_L1TP_224078_20200518_20200518_01_RT.TIF"
OSCD_DIR = "oscd_subset/Onera Satellite Change Detection dataset - Images"
S2_BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12")


@dataclass(frozen=True)
class SceneSet:
    """A set of real scenes tiled and loaded by the benchmark.

    Attributes:
        name: Short name used in tables.
        label: Description used in tables.
        inputs: Paths passed to ``tile_scenes``.
        sensor: Registry sensor name.
        bands: Bands to keep (``None``: all bands of the sensor).
        band_order: Band order inside multi-band files.
    """

    name: str
    label: str
    inputs: tuple[str, ...]
    sensor: str
    bands: tuple[str, ...] | None = None
    band_order: str | None = None

    def config(self) -> Any:
        """The ``TileConfig`` of this set."""
        from rsmae.tiling import TileConfig

        return TileConfig(tile_size=TILE, sensor=self.sensor, bands=self.bands,
                          band_order=self.band_order)


def scene_sets(data: Path) -> list[SceneSet]:
    landsat = data / "landsat8_scene" / LANDSAT_FILE
    oscd = sorted(glob.glob(str(data / OSCD_DIR / "*" / "imgs_1")))
    if not landsat.is_file():
        raise SystemExit(f"error: {landsat} not found; pass --data")
    if not oscd:
        raise SystemExit(f"error: no OSCD scene folders under {data / OSCD_DIR}; pass --data")
    return [
        SceneSet("landsat8", "Landsat 8 OLI, 1 scene 2041x1860, 3 bands uint16 (tiled LZW)",
                 (str(landsat),), "landsat-oli", ("B2", "B3", "B4"), "B2,B3,B4"),
        SceneSet("oscd", f"OSCD Sentinel-2 L1C, {len(oscd)} scenes, 13 band files at 10/20/60 m",
                 tuple(oscd), "s2-l1c"),
    ]

