"""OSCD (Onera Satellite Change Detection): Sentinel-2 L1C pairs of cities, 13 bands, urban change.

Layout on disk (the original one; ``root`` is the folder holding both, or the images folder)::

    root/Onera Satellite Change Detection dataset - Images/<city>/imgs_1/*_B01.tif ... *_B8A.tif
                                                          /<city>/imgs_2/...
    root/Onera Satellite Change Detection dataset - Train Labels/<city>/cm/<city>-cm.tif
    root/Onera Satellite Change Detection dataset - Test Labels/<city>/cm/<city>-cm.tif  (full set)

Bands sit at their native 10/20/60 m in EPSG:4326 and the two dates of a city can differ by a few
pixels in size. Both dates are read onto the date-1 10 m grid through the tiler's grid code
(:func:`~rsmae.datasets.bitemporal.read_pair`), bands in the registry's canonical order
(``B01``..``B08``, ``B8A``, ``B09``..``B12``). Labels (1 = no change, 2 = change; no georeferencing)
are on the date-1 10 m grid; the mask is 1 for change, 0 otherwise.

The fixed split of the 7-city subset (``datasets/oscd/README.md``): train on abudhabi, beihai,
cupertino, mumbai, saclay_e; test on hongkong (dense urban, land reclamation) and pisa (city and
farmland). ``split="official-train"``/``"official-test"`` read the full dataset's ``train.txt`` /
``test.txt``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import ClassVar

import numpy as np
import rasterio

from rsmae.bands import SENSORS, band_from_filename, get_sensor
from rsmae.datasets.bitemporal import BitemporalScenes, PairScene, read_pair
from rsmae.errors import BandError, InputNotFoundError, RasterReadError
from rsmae.tiling.grid import gdal_env
from rsmae.tiling.scenes import discover_scenes

__all__ = ["OSCD"]

_logger = logging.getLogger(__name__)


class OSCD(BitemporalScenes):
    """OSCD city pairs as dict samples ``{"image": (2, 13, H, W), "mask", "city", "path"}``.

    See :class:`~rsmae.datasets.bitemporal.BitemporalScenes` for the arguments.

    Raises:
        InputNotFoundError: ``root`` holds no OSCD images folder.
        BandError: a date lacks a band the other has (naming both folders).
        GridError: the dates or the label do not share the date-1 grid (naming the files).
    """

    sensor: ClassVar[str] = "s2-l1c"
    all_bands: ClassVar[tuple[str, ...]] = SENSORS["s2-l1c"].names
    splits: ClassVar[dict[str, tuple[str, ...]]] = {
        "train": ("abudhabi", "beihai", "cupertino", "mumbai", "saclay_e"),
        "test": ("hongkong", "pisa"),
    }
    images_folder: ClassVar[str] = "Onera Satellite Change Detection dataset - Images"
    label_folders: ClassVar[tuple[str, ...]] = (
        "Onera Satellite Change Detection dataset - Train Labels",
        "Onera Satellite Change Detection dataset - Test Labels",
    )

    @property
    def images(self) -> Path:
        """The folder of city folders."""
        inside = self.root / self.images_folder
        return inside if inside.is_dir() else self.root

    def _verify(self) -> None:
        if not self.root.is_dir() or not any(self.images.glob("*/imgs_1")):
            raise InputNotFoundError(
                f"OSCD not found at {self.root}: expected {self.root}/{self.images_folder}/<city>/imgs_1 "
                "and imgs_2 (one GeoTIFF per band); pass root= the folder holding the OSCD images and "
                "labels folders, e.g. ../shared/data/oscd_subset"
            )

    def _label(self, city: str) -> Path | None:
        base = self.images.parent  # the labels folders sit beside the images folder, whichever is root
        for folder in (*(base / f for f in self.label_folders), self.images):
            path = folder / city / "cm" / f"{city}-cm.tif"
            if path.is_file():
                return path
        return None

    def _names(self) -> list[str]:
        return sorted(d.name for d in self.images.iterdir()
                      if (d / "imgs_1").is_dir() and (d / "imgs_2").is_dir() and self._label(d.name))

    def _split_names(self, split: str, available: list[str]) -> list[str]:
        if split.startswith("official-"):
            listing = self.images / f"{split.removeprefix('official-')}.txt"
            if not listing.is_file():
                raise InputNotFoundError(f"{listing}: no such file; split={split!r} needs the full OSCD "
                                         "images folder with its train.txt / test.txt, or pass cities=")
            return [c.strip() for c in listing.read_text().replace("\n", ",").split(",") if c.strip()]
        return super()._split_names(split, available)

    def _check_dates(self, first: Path, second: Path) -> None:
        sensor = get_sensor(self.sensor)
        found = [{band_from_filename(f, sensor) for f in d.glob("*.tif")} - {None} for d in (first, second)]
        for date, (have, other) in enumerate(((found[0], found[1]), (found[1], found[0])), start=1):
            missing = [b for b in self.bands if b not in have]
            if missing:
                folders = (first, second) if date == 1 else (second, first)
                also = [b for b in missing if b in other]
                raise BandError(f"{folders[0]} has no file for band(s) {missing} (date {date})"
                                + (f" but {folders[1]} has {also}" if also else "")
                                + "; both dates need the same bands: add the files or select fewer bands")

    def _load(self, name: str) -> PairScene:
        first, second = self.images / name / "imgs_1", self.images / name / "imgs_2"
        self._check_dates(first, second)
        sensor = get_sensor(self.sensor)
        scene1, scene2 = (discover_scenes([str(d)], sensor, self.bands)[0] for d in (first, second))
        image, grid = read_pair(scene1, scene2, self.sensor, window=self.window)
        label_path = self._label(name)
        assert label_path is not None  # _names only lists labelled cities
        try:
            with gdal_env(), rasterio.open(label_path) as src:
                raw = src.read(1)
        except rasterio.errors.RasterioIOError as err:
            raise RasterReadError(f"{label_path}: not a readable label raster ({err})") from err
        raw = self._check_label(raw, label_path, scene1.files[0], (grid.height, grid.width))
        return PairScene(name, image, self._mask(raw, label_path), (str(first), str(second)),
                         str(label_path))

    @staticmethod
    def _mask(raw: np.ndarray, path: Path) -> np.ndarray:
        """1 = change from OSCD's 1/2 coding (or the 0/1 coding its README describes)."""
        values = set(np.unique(raw).tolist())
        if values <= {1, 2}:
            return (raw == 2).astype(np.uint8)
        if values <= {0, 1}:
            return raw.astype(np.uint8)
        raise RasterReadError(f"{path}: label values {sorted(values)}; OSCD labels are 1 = no change, "
                              "2 = change (or 0/1)")
