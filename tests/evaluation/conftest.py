"""Fixtures of the evaluation tests: torchgeo's BigEarthNet layout over the real samples, a tiny backbone."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from rsmae.bands import get_sensor
from rsmae.models import BackboneMeta, create_encoder, save_backbone
from tests.conftest import DATA

SAMPLES = DATA / "bigearthnet_s2_samples"
S2 = list(get_sensor("s2-l1c").names)


@pytest.fixture(scope="session")
def bigearthnet_layout() -> Callable[[Path], Path]:
    """``bigearthnet_layout(root)``: torchgeo's BigEarthNet layout over the real samples at ``root``.

    3 train, 1 val, 2 test patches (links to the samples).
    """

    def make(root: Path) -> Path:
        patches = sorted(p.name for p in SAMPLES.iterdir() if p.is_dir())
        (root / "BigEarthNet-v1.0").mkdir(parents=True)
        for name in patches:
            (root / "BigEarthNet-v1.0" / name).symlink_to(SAMPLES / name)
        for split, names in (("train", patches[:3]), ("val", patches[3:4]), ("test", patches[4:])):
            (root / f"bigearthnet-{split}.csv").write_text("".join(f"{n},S1_{n}\n" for n in names))
        return root

    return make


@pytest.fixture(scope="session")
def multilabel_backbone() -> Callable[[Path, int], Path]:
    """``multilabel_backbone(path, patch)``: a 2-block vit_test S2 L1C backbone (64 px) saved at ``path``."""

    def make(path: Path, patch: int) -> Path:
        torch.manual_seed(0)
        enc = create_encoder("vit_test", in_chans=13, img_size=64, patch_size=patch, depth=2)
        meta = BackboneMeta(preset="vit_test", img_size=64, patch_size=patch, in_chans=13, bands=S2,
                            sensor="s2-l1c", mean=[1000.0] * 13, std=[500.0] * 13, gsd=10.0,
                            encoder_kwargs={"depth": 2})
        return save_backbone(enc, path, meta)

    return make
