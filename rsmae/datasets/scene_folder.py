"""Scene classification from any folder of class folders (the EuroSAT layout, any band layout).

Layout on disk: ``folder/<ClassName>/*.tif`` (any raster rasterio reads). Each file holds its bands
in a declared *layout* (:data:`~rsmae.bands.LAYOUTS`, e.g. ``"eurosat"``, or comma-separated names);
bands are selected and ordered by name, never by position. This is what lets a user score a
backbone on their own held-out folder, or on the full EuroSAT-MS, with the same command as on the
bundled subset (``--train-root`` / ``--test-root``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import torch
from torch import Tensor
from torch.utils.data import Dataset

from rsmae.bands import get_layout, get_sensor
from rsmae.errors import BandError, InputNotFoundError, RasterReadError
from rsmae.tiling.band_order import check_described_order

__all__ = ["SceneFolder"]

_logger = logging.getLogger(__name__)

SUFFIXES = (".tif", ".tiff", ".jp2", ".png")


class SceneFolder(Dataset):
    """Raw images ``(N, C, H, W)`` float32 (digital numbers) and labels of a class-folder tree.

    Args:
        folder: Folder holding one sub-folder per class.
        sensor: Registry sensor of the files' bands (``"s2-l1c"`` for EuroSAT).
        layout: Band order in the files: a layout name or comma-separated band names.
        bands: Bands to return, in this order (any alias); default all in file order.
        classes: Class names in label order; default the sorted sub-folder names. Pass the training
            folder's classes when reading a test folder, so that labels agree.

    Raises:
        InputNotFoundError: naming ``folder`` when it holds no class folder with images.
        BandError: when a requested band is not in the layout.
        RasterReadError: naming the file that is unreadable or has another band count.
    """

    def __init__(
        self,
        folder: str | Path,
        *,
        sensor: str = "s2-l1c",
        layout: str = "eurosat",
        bands: Sequence[str] | None = None,
        classes: Sequence[str] | None = None,
        suffixes: Sequence[str] = SUFFIXES,
    ) -> None:
        self.folder = Path(folder)
        self.sensor = get_sensor(sensor).name
        self.file_bands = get_layout(layout, get_sensor(sensor))
        self.paths = sorted(p for p in self.folder.glob("*/*") if p.suffix.lower() in suffixes)
        if not self.folder.is_dir() or not self.paths:
            raise InputNotFoundError(
                f"{self.folder}: no class folders with images; expected {self.folder}/<ClassName>/*.tif "
                "(e.g. ../shared/data/eurosat_ms_subset/train)"
            )
        self.bands = self._select(bands)
        found = sorted({p.parent.name for p in self.paths})
        self.classes = list(classes) if classes is not None else found
        unknown = sorted(set(found) - set(self.classes))
        if unknown:
            raise InputNotFoundError(
                f"{self.folder}: class folders {unknown} are not among the training classes "
                f"{self.classes}; use the same class names in both folders"
            )
        index = [self.file_bands.index(b) + 1 for b in self.bands]
        pixels = np.stack([self._read(p, index) for p in self.paths])
        self.images = torch.from_numpy(pixels.astype(np.float32))
        self.labels = torch.tensor([self.classes.index(p.parent.name) for p in self.paths])
        _logger.info("%s: %d images, %d classes, bands %s", self.folder, len(self.paths), len(self.classes),
                     list(self.bands))

    def _select(self, bands: Sequence[str] | None) -> tuple[str, ...]:
        if bands is None:
            return self.file_bands
        resolved = get_sensor(self.sensor).resolve(bands)
        missing = [b for b in resolved if b not in self.file_bands]
        if missing:
            raise BandError(f"{self.folder}: bands {missing} are not in the files' bands "
                            f"{list(self.file_bands)}; pass the files' band layout")
        return resolved

    def _read(self, path: Path, index: list[int]) -> np.ndarray:
        try:
            with rasterio.open(path) as src:
                if src.count != len(self.file_bands):
                    raise RasterReadError(
                        f"{path}: {src.count} bands, but the layout has {len(self.file_bands)} "
                        f"({', '.join(self.file_bands)}); pass the files' band layout"
                    )
                check_described_order(str(path), src.descriptions, get_sensor(self.sensor),  # named bands
                                      {i + 1: b for i, b in enumerate(self.file_bands)})
                return src.read(index)
        except rasterio.errors.RasterioIOError as err:
            raise RasterReadError(f"{path}: not a readable raster ({err})") from err

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"image": self.images[index], "label": int(self.labels[index]), "path": str(self.paths[index])}

    def tensors(self) -> tuple[Tensor, Tensor]:
        """All images and labels at once."""
        return self.images, self.labels
