"""EuroSAT multispectral (allBands GeoTIFFs): 13 Sentinel-2 L1C bands, 64 x 64 px, 10 classes.

Layout on disk: ``root/<split>/<ClassName>/<ClassName>_<id>.tif``. The files store their bands in
EuroSAT's order (B8A last, :data:`~rsmae.bands.LAYOUTS` ``"eurosat"``); bands are selected and
ordered by *name*, so features are computed on the same bands, in the same order and with the same
statistics as in pretraining. Everything is read into memory at construction (the subset in
``../shared/data/eurosat_ms_subset`` is 270 files, 29 MB).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

from rsmae.bands import LAYOUTS, get_sensor
from rsmae.data import normalize_images
from rsmae.datasets.scene_folder import SceneFolder
from rsmae.errors import BandError, InputNotFoundError

__all__ = ["EuroSAT"]

_logger = logging.getLogger(__name__)


class EuroSAT(SceneFolder):
    """EuroSAT-MS scenes as dict samples ``{"image", "label", "path"}``.

    Args:
        root: Folder holding ``train/`` and ``test/``.
        split: ``"train"`` or ``"test"``.
        bands: Band names to return, in this order (any alias, e.g. the pretraining bands);
            default all 13 in file order.
        mean: Per-band mean of the *requested* bands (e.g. the pretraining statistics); with
            ``std``, images are returned as ``(x - mean) / std``, else as raw digital numbers.
        std: Per-band standard deviation, same order.

    Raises:
        InputNotFoundError: when ``root/split`` holds no class folders with ``.tif`` files.
        BandError: when a requested band is not one of EuroSAT's 13 Sentinel-2 L1C bands.
    """

    sensor: ClassVar[str] = LAYOUTS["eurosat"][0]
    all_bands: ClassVar[tuple[str, ...]] = LAYOUTS["eurosat"][1]  # file order
    splits: ClassVar[tuple[str, ...]] = ("train", "test")

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
        self._verify()
        classes = sorted({d.name for s in self.splits if (self.root / s).is_dir()
                          for d in (self.root / s).iterdir() if d.is_dir() and any(d.glob("*.tif"))})
        super().__init__(self.root / split, sensor=self.sensor, layout="eurosat", bands=self.select(bands),
                         classes=classes, suffixes=(".tif",))
        self.band_index = [self.all_bands.index(b) for b in self.bands]
        if (mean is None) != (std is None):
            raise ValueError("pass both mean and std, or neither")
        if mean is not None and std is not None:
            if len(mean) != len(self.bands) or len(std) != len(self.bands):
                raise BandError(f"{len(mean)} means and {len(std)} stds for {len(self.bands)} bands")
            self.images = normalize_images(self.images, mean, std)
        _logger.info("EuroSAT %s: %d images, %d classes, bands %s", split, len(self), len(self.classes),
                     self.bands)

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

    def _verify(self) -> None:
        folder = self.root / self.split
        if not folder.is_dir() or not any(folder.glob("*/*.tif")):
            raise InputNotFoundError(
                f"EuroSAT {self.split} split not found at {folder}: expected {folder}/<ClassName>/*.tif "
                "(the EuroSAT allBands GeoTIFFs); pass root= the folder holding train/ and test/, e.g. "
                "../shared/data/eurosat_ms_subset"
            )
