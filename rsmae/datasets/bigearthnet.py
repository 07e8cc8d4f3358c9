"""BigEarthNet-S2 (v1.0, multi-label) read through torchgeo's dataset class, never downloaded.

torchgeo's :class:`~torchgeo.datasets.BigEarthNet` expects ``root`` to hold the extracted
``BigEarthNet-v1.0/<patch>/<patch>_B??.tif`` folders and the three split files
``bigearthnet-{train,val,test}.csv`` (lines ``<s2 patch>,<s1 patch>``). Its bands come in the order
B01..B08, B8A, B09, B11, B12 (Level-2A, no B10), all resampled to 120 x 120 pixels: the
``"bigearthnet"`` layout of :mod:`rsmae.bands`. Labels are the 19-class nomenclature by default.

Patches are read from disk when asked for (:class:`BigEarthNetS2` is a map-style ``Dataset``), never
held all at once: the full training split would take about 190 GB as float32. Iterate it in batches
(a ``DataLoader``) and keep only what each batch gives (features).
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from torch import Tensor
from torch.utils.data import Dataset

from rsmae.bands import LAYOUTS
from rsmae.errors import InputNotFoundError

__all__ = ["BIGEARTHNET_SPLITS", "BigEarthNetS2", "load_bigearthnet"]

BIGEARTHNET_SPLITS = ("train", "val", "test")


class BigEarthNetS2(Dataset):
    """One split of BigEarthNet-S2 as dict samples ``{"image", "label"}``, each read on demand.

    ``image`` is float32 ``(12, 120, 120)`` (digital numbers, :attr:`bands` order), ``label`` int64
    multi-hot ``(num_classes,)``. Construction reads only the split file and checks the folders.

    Args:
        root: Folder in torchgeo's BigEarthNet layout (see the module docstring).
        split: ``"train"``, ``"val"`` or ``"test"``.
        num_classes: 19 or 43 (the label nomenclature).

    Raises:
        InputNotFoundError: when ``root`` is not in the layout, naming what is missing.
        ValueError: on an unknown split or class count.
    """

    sensor: ClassVar[str] = LAYOUTS["bigearthnet"][0]
    bands: ClassVar[tuple[str, ...]] = LAYOUTS["bigearthnet"][1]
    splits: ClassVar[tuple[str, ...]] = BIGEARTHNET_SPLITS

    def __init__(self, root: str | Path, split: str = "train", num_classes: int = 19) -> None:
        from torchgeo.datasets import BigEarthNet, DatasetNotFoundError

        if split not in self.splits:
            raise ValueError(f"BigEarthNet split {split!r}; choose one of {', '.join(self.splits)}")
        if num_classes not in (19, 43):
            raise ValueError(f"BigEarthNet has 19 or 43 classes, not {num_classes}")
        self.root, self.split = Path(root), split
        listing = self.root / f"bigearthnet-{split}.csv"
        missing = [name for name in (*(f"bigearthnet-{s}.csv" for s in self.splits), "BigEarthNet-v1.0")
                   if not (self.root / name).exists()]
        if missing:
            raise InputNotFoundError(
                f"{self.root}: not a BigEarthNet-S2 v1.0 folder, missing {', '.join(missing)}; extract "
                "BigEarthNet-S2-v1.0.tar.gz there and add the split files bigearthnet-{train,val,test}.csv "
                "(lines '<s2 patch>,<s1 patch>'), the layout of torchgeo.datasets.BigEarthNet")
        try:
            self._dataset = BigEarthNet(root=str(self.root), split=split, bands="s2", num_classes=num_classes)
        except DatasetNotFoundError as err:  # pragma: no cover - the check above covers torchgeo's own
            raise InputNotFoundError(f"{self.root}: {err}") from err
        for folder in self._dataset.folders:
            if not Path(folder["s2"]).is_dir():
                raise InputNotFoundError(f"{listing}: lists {Path(folder['s2']).name}, which is not a folder "
                                         f"under {self.root / 'BigEarthNet-v1.0'}")
        if not len(self._dataset):
            raise InputNotFoundError(f"{listing}: the {split} split lists no patch")
        self.classes: list[str] = list(self._dataset.class_sets[num_classes])

    def __len__(self) -> int:
        return len(self._dataset)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        sample = self._dataset[index]
        return {"image": sample["image"].float(), "label": sample["label"].long()}


def load_bigearthnet(root: str | Path, split: str, num_classes: int = 19) -> BigEarthNetS2:
    """The ``split`` of the BigEarthNet-S2 folder ``root``, read lazily: a :class:`BigEarthNetS2`."""
    return BigEarthNetS2(root, split, num_classes)
