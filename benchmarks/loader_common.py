"""Constants and the real scene sets shared by the loader benchmark's modules (``bench_loader.py``)."""

from __future__ import annotations

import glob
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
TILE = 128  # tile size of the sets that do not say otherwise
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
        tile: Tile (and torchgeo window) size in pixels.
    """

    name: str
    label: str
    inputs: tuple[str, ...]
    sensor: str
    bands: tuple[str, ...] | None = None
    band_order: str | None = None
    tile: int = TILE

    def config(self) -> Any:
        """The ``TileConfig`` of this set."""
        from rsmae.tiling import TileConfig

        return TileConfig(tile_size=self.tile, sensor=self.sensor, bands=self.bands,
                          band_order=self.band_order)


SET_NAMES = ("rgb8", "landsat8", "oscd", "oscd64")


def rgb8_scene(landsat: Path, folder: Path) -> Path:
    """The Landsat 8 crop as an 8-bit RGB GeoTIFF, written once into ``folder``.

    Bands B4, B3, B2; each band's valid pixels stretched from its 2-98 % range to 1-255, the zero
    collar kept at 0 (nodata); tiled LZW like the source.
    """
    import numpy as np
    import rasterio

    out = folder / "landsat8_rgb8.tif"
    if out.is_file():
        return out
    with rasterio.open(landsat) as src:
        data = src.read([3, 2, 1])  # the file holds B2, B3, B4
        profile = {**src.profile, "dtype": "uint8", "count": 3, "nodata": 0}
    valid = (data != 0).all(axis=0)
    rgb = np.zeros(data.shape, dtype=np.uint8)
    for b, band in enumerate(data):
        lo, hi = np.percentile(band[valid], [2, 98])
        rgb[b][valid] = np.clip((band[valid] - lo) / (hi - lo) * 254 + 1, 1, 255).astype(np.uint8)
    folder.mkdir(parents=True, exist_ok=True)
    with rasterio.open(out, "w", **profile) as dst:
        dst.write(rgb)
    return out


def scene_sets(data: Path, work: Path, names: tuple[str, ...] = SET_NAMES) -> list[SceneSet]:
    """The scene sets called ``names``; derived files (the 8-bit RGB scene) are written to ``work``."""
    landsat = data / "landsat8_scene" / LANDSAT_FILE
    oscd = sorted(glob.glob(str(data / OSCD_DIR / "*" / "imgs_1")))
    if not landsat.is_file():
        raise SystemExit(f"error: {landsat} not found; pass --data")
    if not oscd:
        raise SystemExit(f"error: no OSCD scene folders under {data / OSCD_DIR}; pass --data")
    oscd_label = f"OSCD Sentinel-2 L1C, {len(oscd)} scenes, 13 band files uint16 at 10/20/60 m"
    make = {
        "rgb8": lambda: SceneSet(
            "rgb8", "Landsat 8 crop as 8-bit RGB (B4, B3, B2 stretched to uint8), 1 scene 2041x1860",
            (str(rgb8_scene(landsat, work)),), "landsat-oli", ("B4", "B3", "B2"), "B4,B3,B2", 64),
        "landsat8": lambda: SceneSet(
            "landsat8", "Landsat 8 OLI, 1 scene 2041x1860, 3 bands uint16 (tiled LZW)",
            (str(landsat),), "landsat-oli", ("B2", "B3", "B4"), "B2,B3,B4"),
        "oscd": lambda: SceneSet("oscd", oscd_label, tuple(oscd), "s2-l1c"),
        "oscd64": lambda: SceneSet("oscd64", oscd_label, tuple(oscd), "s2-l1c", tile=64),
    }
    unknown = sorted(set(names) - set(make))
    if unknown:
        raise SystemExit(f"error: unknown scene sets {unknown}; choose from {', '.join(make)}")
    return [make[n]() for n in names]

