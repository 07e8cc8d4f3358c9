"""BigEarthNet-S2 (v1.0, multi-label) read through torchgeo's dataset class, never downloaded.

torchgeo's :class:`~torchgeo.datasets.BigEarthNet` expects ``root`` to hold the extracted
``BigEarthNet-v1.0/<patch>/<patch>_B??.tif`` folders and the three split files
``bigearthnet-{train,val,test}.csv`` (lines ``<s2 patch>,<s1 patch>``). Its bands come in the order
B01..B08, B8A, B09, B11, B12 (Level-2A, no B10), all resampled to 120 x 120 pixels: the
``"bigearthnet"`` layout of :mod:`rsmae.bands`. Labels are the 19-class nomenclature by default.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from rsmae.errors import InputNotFoundError

__all__ = ["BIGEARTHNET_SPLITS", "load_bigearthnet"]

BIGEARTHNET_SPLITS = ("train", "val", "test")


def load_bigearthnet(root: str | Path, split: str, num_classes: int = 19) -> tuple[Tensor, Tensor, list[str]]:
    """All patches of one split as tensors.

    Args:
        root: Folder in torchgeo's BigEarthNet layout (see the module docstring).
        split: ``"train"``, ``"val"`` or ``"test"``.
        num_classes: 19 or 43 (the label nomenclature).

    Returns:
        ``images`` float32 ``(N, 12, 120, 120)`` (digital numbers), ``labels`` ``(N, num_classes)``
        multi-hot int64, and the class names.

    Raises:
        InputNotFoundError: when ``root`` is not in the layout, naming what is missing.
        ValueError: on an unknown split or class count.
    """
    from torchgeo.datasets import BigEarthNet, DatasetNotFoundError

    if split not in BIGEARTHNET_SPLITS:
        raise ValueError(f"BigEarthNet split {split!r}; choose one of {', '.join(BIGEARTHNET_SPLITS)}")
    if num_classes not in (19, 43):
        raise ValueError(f"BigEarthNet has 19 or 43 classes, not {num_classes}")
    root = Path(root)
    missing = [name for name in (*(f"bigearthnet-{s}.csv" for s in BIGEARTHNET_SPLITS), "BigEarthNet-v1.0")
               if not (root / name).exists()]
    if missing:
        raise InputNotFoundError(
            f"{root}: not a BigEarthNet-S2 v1.0 folder, missing {', '.join(missing)}; extract "
            "BigEarthNet-S2-v1.0.tar.gz there and add the split files bigearthnet-{train,val,test}.csv "
            "(lines '<s2 patch>,<s1 patch>'), the layout of torchgeo.datasets.BigEarthNet")
    try:
        dataset = BigEarthNet(root=str(root), split=split, bands="s2", num_classes=num_classes)
    except DatasetNotFoundError as err:  # pragma: no cover - the check above covers torchgeo's own
        raise InputNotFoundError(f"{root}: {err}") from err
    for folder in dataset.folders:
        if not Path(folder["s2"]).is_dir():
            raise InputNotFoundError(f"{root / f'bigearthnet-{split}.csv'}: lists {Path(folder['s2']).name}, "
                                     f"which is not a folder under {root / 'BigEarthNet-v1.0'}")
    samples = [dataset[i] for i in range(len(dataset))]
    if not samples:
        raise InputNotFoundError(f"{root / f'bigearthnet-{split}.csv'}: the {split} split lists no patch")
    images = torch.stack([s["image"] for s in samples]).float()
    labels = torch.stack([s["label"] for s in samples]).long()
    return images, labels, list(dataset.class_sets[num_classes])
