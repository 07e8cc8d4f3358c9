"""LEVIR-CD: bitemporal Google Earth RGB pairs (0.5 m) with building-change masks.

Two layouts on disk, both read unchanged:

- the full dataset: ``root/{train,val,test}/{A,B,label}/<name>.png``;
- BIT_CD's samples (``../shared/data/levircd_samples``): ``root/{A,B,label}/<split>_<id>_<row>_<col>.png``,
  the split being the name's prefix.

``A`` is date 1, ``B`` date 2 (RGB, or RGBA whose alpha is dropped); labels are 0/255 (255 = change).
Pairs go through the tiler's grid code like every change dataset (PNGs keep pixel coordinates), so
a date-2 image of another size is an error naming both files.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np
from PIL import Image

from rsmae.bands import get_sensor
from rsmae.datasets.bitemporal import BitemporalScenes, PairScene, read_pair
from rsmae.errors import InputNotFoundError, RasterReadError
from rsmae.tiling.scenes import discover_scenes

__all__ = ["LEVIRCD"]


class LEVIRCD(BitemporalScenes):
    """LEVIR-CD pairs as dict samples ``{"image": (2, 3, H, W), "mask", "city", "path"}``.

    ``city`` holds the pair's file name without suffix. See
    :class:`~rsmae.datasets.bitemporal.BitemporalScenes` for the arguments.

    Raises:
        InputNotFoundError: ``root`` holds neither layout.
        GridError: date 2 or the label differs in size from date 1 (naming the files).
    """

    sensor: ClassVar[str] = "rgb"
    all_bands: ClassVar[tuple[str, ...]] = ("R", "G", "B")
    splits: ClassVar[dict[str, tuple[str, ...]]] = {"train": (), "val": (), "test": ()}  # by folder/prefix

    def _folder(self, name: str) -> Path:
        """The folder holding ``A``/``B``/``label`` for pair ``name``."""
        split = name.split("_", 1)[0]
        nested = self.root / split
        return nested if (nested / "A" / f"{name}.png").is_file() else self.root

    def _verify(self) -> None:
        if not self.root.is_dir() or not self._names():
            raise InputNotFoundError(
                f"LEVIR-CD not found at {self.root}: expected {self.root}/<split>/A|B|label/*.png (the full "
                f"dataset) or {self.root}/A|B|label/<split>_*.png (the samples); pass root= e.g. "
                "../shared/data/levircd_samples"
            )

    def _names(self) -> list[str]:
        names = []
        for folder in (self.root, *(self.root / s for s in self.splits)):
            for path in sorted((folder / "A").glob("*.png")):
                if (folder / "B" / path.name).is_file() and (folder / "label" / path.name).is_file():
                    nested = folder != self.root
                    names.append(f"{folder.name}_{path.stem}" if nested and not path.stem.startswith(
                        f"{folder.name}_") else path.stem)
        return sorted(set(names))

    def _split_names(self, split: str, available: list[str]) -> list[str]:
        if split == "all":
            return available
        if split not in self.splits:
            raise ValueError(f"split={split!r}; LEVIR-CD splits are train, val, test, all, or pass cities=")
        return [n for n in available if n.startswith(f"{split}_")]

    def _paths(self, name: str) -> tuple[Path, Path, Path]:
        folder = self._folder(name)
        stem = name
        if folder != self.root and not (folder / "A" / f"{name}.png").is_file():
            stem = name.removeprefix(f"{folder.name}_")
        return tuple(folder / part / f"{stem}.png" for part in ("A", "B", "label"))  # type: ignore[return-value]

    def _load(self, name: str) -> PairScene:
        first, second, label = self._paths(name)
        sensor = get_sensor(self.sensor)
        scene1, scene2 = (discover_scenes([str(p)], sensor, self.bands, band_order="R,G,B")[0]
                          for p in (first, second))
        image, grid = read_pair(scene1, scene2, self.sensor, window=self.window)
        try:
            with Image.open(label) as im:
                raw = np.asarray(im.convert("L"))
        except OSError as err:
            raise RasterReadError(f"{label}: not a readable label image ({err})") from err
        raw = self._check_label(raw, label, str(first), (grid.height, grid.width))
        return PairScene(name, image, (raw > 127).astype(np.uint8), (str(first), str(second)), str(label))
