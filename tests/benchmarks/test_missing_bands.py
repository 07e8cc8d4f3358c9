"""benchmarks/missing_bands.py: its subsets, a probe on band subsets, and its table's verdicts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from rsmae.datasets import EuroSAT
from rsmae.evaluation.folds import stratified_kfold
from rsmae.models import create_encoder, save_backbone
from rsmae.models.weights import BackboneMeta
from tests.conftest import load_script

missing = load_script("benchmarks/missing_bands.py")


def test_subsets_name_the_kept_bands_and_drop_each_band_once() -> None:
    subsets = missing.subsets()
    assert subsets["all 13 bands"] == EuroSAT.all_bands
    dropped = [name for name in subsets if name.startswith("without ")]
    assert len(dropped) == 13 and all(len(subsets[n]) == 12 for n in dropped)
    assert "B8A" not in subsets["without B8A"] and "B10" in subsets["without B8A"]


def test_a_fixed_band_backbone_is_probed_on_a_subset(tmp_path: Path) -> None:
    torch.manual_seed(0)
    encoder = create_encoder("vit_test", in_chans=13, img_size=32, patch_size=8)
    bands = list(EuroSAT.all_bands)
    path = save_backbone(encoder, tmp_path / "b.safetensors", BackboneMeta(
        preset="vit_test", img_size=32, patch_size=8, in_chans=13, bands=bands, sensor=EuroSAT.sensor,
        mean=None, std=None, gsd=10.0))
    labels = torch.arange(3).repeat_interleave(6)
    images = torch.rand(len(labels), 13, 32, 32, generator=torch.Generator().manual_seed(1))
    images[:, 3] += labels[:, None, None] * 2.0  # B04 carries the class
    folds = stratified_kfold(labels.numpy(), 3, seed=0)
    rgb = missing.probe(path, ("B04", "B03", "B02"), images, labels, folds, tmp_path / "cache")
    assert rgb.shape == (18,) and rgb.mean() > 0.5
    again = missing.probe(path, ("B04", "B03", "B02"), images, labels, folds, tmp_path / "cache")
    assert np.array_equal(rgb, again) and len(list((tmp_path / "cache").iterdir())) == 1


def test_table_differences_against_all_bands_and_the_first_backbone() -> None:
    ones, halves = np.ones(100), np.r_[np.ones(50), np.zeros(50)]
    scores = {"all 13 bands": {"fixed": ones, "spectral": ones},
              "RGB (B04 B03 B02)": {"fixed": halves, "spectral": ones}}
    lines, sentences = missing.table(scores, ["fixed", "spectral"])
    assert lines[3].startswith("| RGB (B04 B03 B02) | 50.0 [") and "| -50.0 [" in lines[3]
    assert "spectral is higher than fixed by 50.0 points" in sentences[1]
    assert "No clear difference between spectral and fixed" in sentences[0]
