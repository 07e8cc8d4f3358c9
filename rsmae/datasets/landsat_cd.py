"""Landsat bitemporal change detection (Taizhou, Nanjing): 6-band TM/ETM+ ENVI pairs, sparse labels.

Layout on disk (``../shared/data/landsat_cd_taizhou_nanjing``)::

    root/<scene>/<date-1 raster> + .hdr/.HDR, <date-2 raster> + header   (ENVI raw BSQ, uint8)
    root/<scene>/change.bmp, unchanged.bmp                                 (255 = reference sample)

The two rasters of a scene folder are the dates in name order (``2000TM``, ``2003TM``). Bands in
file order are Landsat TM bands 1, 2, 3, 4, 5, 7 (the ``landsat-tm-6`` layout). Pixels in neither
reference mask are unlabelled: :data:`~rsmae.datasets.bitemporal.IGNORE_INDEX` in the mask, left
out of losses and metrics (the SFA/DSFA evaluation protocol). Split by scene: train on Nanjing
(Landsat-5 TM, 800 x 800), test on Taizhou (Landsat-7 ETM+, 400 x 400).
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np
import rasterio
from PIL import Image

from rsmae.bands import LAYOUTS, get_sensor
from rsmae.datasets.bitemporal import IGNORE_INDEX, BitemporalScenes, PairScene, read_pair
from rsmae.errors import BandError, InputNotFoundError, RasterReadError
from rsmae.tiling.grid import gdal_env
from rsmae.tiling.scenes import discover_scenes

__all__ = ["LandsatCD"]

_HEADERS = (".hdr", ".HDR")


class LandsatCD(BitemporalScenes):
    """Landsat TM/ETM+ pairs as dict samples ``{"image": (2, 6, H, W), "mask", "city", "path"}``.

    See :class:`~rsmae.datasets.bitemporal.BitemporalScenes` for the arguments.

    Raises:
        InputNotFoundError: ``root`` holds no scene folder with two rasters and the two masks.
        BandError: the dates hold different band counts (naming both files).
        GridError: the dates or the masks do not share the date-1 grid (naming the files).
    """

    sensor: ClassVar[str] = LAYOUTS["landsat-tm-6"][0]
    all_bands: ClassVar[tuple[str, ...]] = LAYOUTS["landsat-tm-6"][1]
    splits: ClassVar[dict[str, tuple[str, ...]]] = {"train": ("Nanjing",), "test": ("Taizhou",)}
    masks: ClassVar[tuple[str, str]] = ("change.bmp", "unchanged.bmp")

    def _verify(self) -> None:
        if not self.root.is_dir() or not self._names():
            raise InputNotFoundError(
                f"Landsat change data not found at {self.root}: expected {self.root}/<scene>/ with two "
                "ENVI rasters (+ .hdr) and change.bmp / unchanged.bmp; pass root= e.g. "
                "../shared/data/landsat_cd_taizhou_nanjing"
            )

    @staticmethod
    def _rasters(folder: Path) -> list[Path]:
        return sorted(f for f in folder.iterdir() if f.is_file() and not f.suffix
                      and any(f.with_name(f.name + h).is_file() for h in _HEADERS))

    def _names(self) -> list[str]:
        return sorted(d.name for d in self.root.iterdir() if d.is_dir() and len(self._rasters(d)) == 2
                      and all((d / m).is_file() for m in self.masks))

    def _load(self, name: str) -> PairScene:
        first, second = self._rasters(self.root / name)
        counts = []
        for path in (first, second):
            try:
                with gdal_env(), rasterio.open(path) as src:
                    counts.append(src.count)
            except rasterio.errors.RasterioIOError as err:
                raise RasterReadError(f"{path}: not a readable ENVI raster ({err})") from err
        if counts[0] != counts[1] or counts[0] != len(self.all_bands):
            raise BandError(f"{first} has {counts[0]} bands but {second} has {counts[1]}; both dates must "
                            f"hold the {len(self.all_bands)} Landsat TM bands {list(self.all_bands)}")
        sensor = get_sensor(self.sensor)
        scene1, scene2 = (discover_scenes([str(p)], sensor, self.bands, band_order="landsat-tm-6")[0]
                          for p in (first, second))
        image, grid = read_pair(scene1, scene2, self.sensor, window=self.window)
        shape = (grid.height, grid.width)
        change, same = (self._check_label(self._read_mask(self.root / name / m), self.root / name / m,
                                          str(first), shape) for m in self.masks)
        mask = np.full(change.shape, IGNORE_INDEX, dtype=np.uint8)
        mask[same > 0] = 0
        mask[change > 0] = 1
        return PairScene(name, image, mask, (str(first), str(second)), str(self.root / name / self.masks[0]))

    @staticmethod
    def _read_mask(path: Path) -> np.ndarray:
        try:
            with Image.open(path) as im:
                return np.asarray(im.convert("L"))
        except OSError as err:
            raise RasterReadError(f"{path}: not a readable mask image ({err})") from err
