"""EuroSAT multispectral (allBands GeoTIFFs): 13 Sentinel-2 L1C bands, 64 x 64 px, 10 classes.

Two layouts on disk are read, found from what ``root`` holds:

- class folders per split: ``root/<split>/<ClassName>/<ClassName>_<id>.tif`` (the subset in
  ``../shared/data/eurosat_ms_subset``: ``train/`` and ``test/``);
- torchgeo's EuroSAT download (``torchgeo.datasets.EuroSAT``, ``EuroSATallBands.zip`` extracted):
  ``root/ds/images/remote_sensing/otherDatasets/sentinel_2/tif/<ClassName>/<ClassName>_<id>.tif`` and
  the split files ``root/eurosat-{train,val,test}.txt``, one file name a line (written ``.jpg`` in the
  published lists: the ``.tif`` of the same name is read, as torchgeo does).

The files store their bands in EuroSAT's order (B8A last, :data:`~rsmae.bands.LAYOUTS` ``"eurosat"``);
bands are selected and ordered by *name*, so features are computed on the same bands, in the same
order and with the same statistics as in pretraining. Everything is read into memory at construction
(the subset is 270 files, 29 MB; the whole of EuroSAT 27,000 files, 2.9 GB).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from rsmae.bands import LAYOUTS, get_sensor
from rsmae.data import normalize_images
from rsmae.datasets.scene_folder import SceneFolder
from rsmae.errors import BandError, InputNotFoundError

__all__ = ["TORCHGEO_DIR", "EuroSAT"]

_logger = logging.getLogger(__name__)

# torchgeo's EuroSAT.base_dir: the class folders of the extracted EuroSATallBands.zip
TORCHGEO_DIR = Path("ds/images/remote_sensing/otherDatasets/sentinel_2/tif")


class EuroSAT(SceneFolder):
    """EuroSAT-MS scenes as dict samples ``{"image", "label", "path"}``.

    Args:
        root: Folder holding ``train/`` and ``test/`` class folders, or torchgeo's EuroSAT folder
            (``ds/...`` and ``eurosat-{train,val,test}.txt``).
        split: ``"train"``, ``"test"`` or, in torchgeo's layout (or with a ``val/`` folder), ``"val"``.
        bands: Band names to return, in this order (any alias, e.g. the pretraining bands);
            default all 13 in file order.
        mean: Per-band mean of the *requested* bands (e.g. the pretraining statistics); with
            ``std``, images are returned as ``(x - mean) / std``, else as raw digital numbers.
        std: Per-band standard deviation, same order.

    Raises:
        InputNotFoundError: when ``root`` holds neither layout for ``split``, or a split file names a
            file that is not there.
        BandError: when a requested band is not one of EuroSAT's 13 Sentinel-2 L1C bands.
        RasterReadError: naming a file that is unreadable or has another band count.
    """

    sensor: ClassVar[str] = LAYOUTS["eurosat"][0]
    all_bands: ClassVar[tuple[str, ...]] = LAYOUTS["eurosat"][1]  # file order
    splits: ClassVar[tuple[str, ...]] = ("train", "val", "test")

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        *,
        bands: Sequence[str] | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        if split not in self.splits:
            raise ValueError(f"split={split!r}; EuroSAT splits are {', '.join(self.splits)}")
        self.root = Path(root)
        self.split = split
        self.torchgeo = (self.root / TORCHGEO_DIR).is_dir()
        found = self._torchgeo_files() if self.torchgeo else self._folder_files()
        self.folder, self.paths, self.classes = found
        self.file_bands = self.all_bands
        self.bands = self.select(bands)
        self.band_index = [self.all_bands.index(b) for b in self.bands]
        pixels = np.stack([self._read(p, [i + 1 for i in self.band_index]) for p in self.paths])
        self.images = torch.from_numpy(pixels.astype(np.float32))
        self.labels = torch.tensor([self.classes.index(p.parent.name) for p in self.paths])
        if (mean is None) != (std is None):
            raise ValueError("pass both mean and std, or neither")
        if mean is not None and std is not None:
            if len(mean) != len(self.bands) or len(std) != len(self.bands):
                raise BandError(f"{len(mean)} means and {len(std)} stds for {len(self.bands)} bands")
            self.images = normalize_images(self.images, mean, std)
        _logger.info("EuroSAT %s (%s): %d images, %d classes, bands %s", split, self.folder, len(self),
                     len(self.classes), self.bands)

    @classmethod
    def select(cls, bands: Sequence[str] | None) -> tuple[str, ...]:
        """Canonical names of ``bands`` (all EuroSAT bands when ``None``).

        Raises:
            BandError: naming the bands EuroSAT lacks.
        """
        if bands is None:
            return cls.all_bands
        sensor = get_sensor(cls.sensor)
        try:
            return sensor.resolve(bands)
        except BandError as err:
            raise BandError(
                f"bands {list(bands)} are not all EuroSAT bands ({', '.join(cls.all_bands)}, Sentinel-2 "
                f"L1C): {err}; the encoder must be pretrained on Sentinel-2 bands to be probed on EuroSAT"
            ) from None

    def _folder_files(self) -> tuple[Path, list[Path], list[str]]:
        """``root/<split>/<Class>/*.tif``; the classes are the class folders of every split."""
        folder = self.root / self.split
        paths = sorted(p for p in folder.glob("*/*") if p.suffix.lower() == ".tif")
        if not paths:
            raise InputNotFoundError(
                f"EuroSAT {self.split} split not found at {folder}: expected {folder}/<ClassName>/*.tif "
                "(the EuroSAT allBands GeoTIFFs), or torchgeo's EuroSAT download in "
                f"{self.root}/{TORCHGEO_DIR}; pass root= the folder holding train/ and test/ (e.g. "
                "../shared/data/eurosat_ms_subset) or torchgeo's EuroSAT root"
            )
        classes = sorted({p.parent.name for s in self.splits for p in (self.root / s).glob("*/*")
                          if p.suffix.lower() == ".tif"})
        return folder, paths, classes

    def _torchgeo_files(self) -> tuple[Path, list[Path], list[str]]:
        """The files ``eurosat-<split>.txt`` names, under torchgeo's class folders."""
        folder, listing = self.root / TORCHGEO_DIR, self.root / f"eurosat-{self.split}.txt"
        if not listing.is_file():
            raise InputNotFoundError(
                f"{listing}: no such split file beside {folder}; torchgeo's EuroSAT layout needs "
                "eurosat-{train,val,test}.txt (torchgeo.datasets.EuroSAT(root, split, download=True) "
                "fetches them)")
        names = [Path(line.strip()).with_suffix(".tif").name for line in listing.read_text().splitlines()
                 if line.strip()]
        paths = [folder / name.rsplit("_", 1)[0] / name for name in names]
        missing = [str(p) for p in paths if not p.is_file()]
        if missing or not paths:
            raise InputNotFoundError(
                f"{listing}: {len(missing)} of its {len(paths)} files are not in {folder} (first: "
                f"{', '.join(missing[:3]) or 'none listed'}); extract EuroSATallBands.zip in {self.root}")
        classes = sorted(d.name for d in folder.iterdir() if d.is_dir() and any(d.glob("*.tif")))
        return folder, sorted(paths), classes
