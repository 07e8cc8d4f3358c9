"""Frozen k-fold probes of a backbone file: choices inside the training fold, bands by name, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from rsmae.bands import get_sensor
from rsmae.datasets import EuroSAT
from rsmae.evaluation.folds import stratified_kfold
from rsmae.evaluation.kfold_probe import (
    ProbeConfig,
    backbone_features,
    encoder_features,
    evaluate_backbone,
    evaluate_features,
)
from rsmae.models import create_encoder, save_backbone
from rsmae.models.weights import BackboneMeta, load_backbone

L1C = list(get_sensor("s2-l1c").names)  # B8A after B08; EuroSAT's files put it last


def _labelled_features(n_per_class: int = 12, classes: int = 4) -> tuple[dict, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(classes).repeat_interleave(n_per_class)
    signal = torch.nn.functional.one_hot(labels, classes).float() * 3 + torch.randn(len(labels), classes,
                                                                                    generator=gen)
    return {"cls": torch.randn(len(labels), 8, generator=gen), "mean": signal}, labels


@pytest.mark.parametrize("protocol", ["linear", "knn"])
def test_the_training_fold_chooses_the_informative_pooling(protocol: str) -> None:
    feats, labels = _labelled_features()
    fold = stratified_kfold(labels.numpy(), 4, seed=0)[0]
    res = evaluate_features(protocol, feats, labels, fold, ProbeConfig(inner_folds=3, probe_steps=100))
    assert res.choice.startswith("pool=mean")
    assert (res.predictions == labels[fold.test].numpy()).mean() > 0.8
    assert res.test.tolist() == fold.test.tolist()


def test_test_labels_do_not_change_the_predictions() -> None:
    feats, labels = _labelled_features()
    fold = stratified_kfold(labels.numpy(), 4, seed=0)[0]
    shuffled = labels.clone()
    shuffled[fold.test] = shuffled[fold.test].flip(0)  # other test labels, same training labels
    config = ProbeConfig(inner_folds=3, probe_steps=50)
    a = evaluate_features("linear", feats, labels, fold, config)
    b = evaluate_features("linear", feats, shuffled, fold, config)
    assert a.choice == b.choice and np.array_equal(a.predictions, b.predictions)


def test_unknown_protocol_is_refused() -> None:
    feats, labels = _labelled_features()
    with pytest.raises(ValueError, match="unknown protocol 'svm'"):
        evaluate_features("svm", feats, labels, stratified_kfold(labels.numpy(), 4)[0], ProbeConfig())


def _backbone(path: Path, mean: list[float] | None) -> Path:
    torch.manual_seed(0)
    encoder = create_encoder("vit_test", in_chans=13, img_size=32, patch_size=8)
    meta = BackboneMeta(preset="vit_test", img_size=32, patch_size=8, in_chans=13, bands=L1C, sensor="s2-l1c",
                        mean=mean, std=None if mean is None else [100.0] * 13, gsd=10.0)
    return save_backbone(encoder, path, meta)


def test_images_reach_the_encoder_by_band_name_with_the_fold_statistics(tmp_path: Path) -> None:
    path = _backbone(tmp_path / "b.safetensors", [1000.0] * 13)
    gen = torch.Generator().manual_seed(1)
    images = torch.rand(6, 13, 32, 32, generator=gen) * 3000  # EuroSAT band order
    train = np.arange(4)
    got = backbone_features(path, images, EuroSAT.all_bands, EuroSAT.sensor, train)
    order = [EuroSAT.all_bands.index(b) for b in L1C]
    x = images[:, order].double()
    mean, std = x[:4].mean((0, 2, 3)), x[:4].std((0, 2, 3))
    want = encoder_features(load_backbone(path), ((x - mean[:, None, None]) / std[:, None, None]).float())
    for pool in ("cls", "mean"):
        torch.testing.assert_close(got[pool], want[pool], rtol=1e-4, atol=1e-4)


def test_backbone_statistics_are_required_for_that_rule(tmp_path: Path) -> None:
    path = _backbone(tmp_path / "nostats.safetensors", None)
    images = torch.rand(4, 13, 32, 32)
    with pytest.raises(ValueError, match="nostats.safetensors: the backbone has no statistics"):
        backbone_features(path, images, EuroSAT.all_bands, EuroSAT.sensor, np.arange(2), "backbone")
    with pytest.raises(ValueError, match="normalisation='corpus'"):
        backbone_features(path, images, EuroSAT.all_bands, EuroSAT.sensor, np.arange(2), "corpus")


def test_evaluate_backbone_scores_every_fold_and_protocol(tmp_path: Path) -> None:
    path = _backbone(tmp_path / "b.safetensors", None)
    gen = torch.Generator().manual_seed(2)
    labels = torch.arange(3).repeat_interleave(6)
    images = torch.rand(len(labels), 13, 32, 32, generator=gen) + labels[:, None, None, None] * 0.5
    folds = stratified_kfold(labels.numpy(), 3, seed=0)
    results = evaluate_backbone(path, images, labels, EuroSAT.all_bands, EuroSAT.sensor, folds,
                                ProbeConfig(inner_folds=2, probe_steps=50))
    assert [(r.protocol, r.fold) for r in results] == [(p, f.name) for f in folds for p in ("linear", "knn")]
    tested = np.sort(np.concatenate([r.test for r in results if r.protocol == "linear"]))
    assert tested.tolist() == list(range(len(labels)))
