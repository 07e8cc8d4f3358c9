"""Frozen-feature probes of a backbone file, scored on folds with every choice inside the training fold.

A backbone (``backbone.safetensors``) is probed on a labelled image set by two protocols:

- ``linear``: :func:`rsmae.tasks.probe.fit_linear_probe` on standardised features (deterministic
  full-batch Adam), the L2 weight and the pooling chosen by inner folds of the training fold;
- ``knn``: the weighted cosine k-NN of :func:`rsmae.tasks.probe.knn_predict`, the neighbour count and
  pooling chosen the same way.

Poolings: the cls token and the mean of the patch tokens (MAE's cls token gets no direct training
signal, so both are candidates). Normalisation, one rule for every init: ``"fold"`` standardises each
band with the training fold's images (what the floors do); ``"backbone"`` uses the statistics saved
in the backbone (its pretraining corpus), meaningful only for a backbone of the images' sensor.
The encoder's bands are matched to the images' bands by name when loaded
(:func:`rsmae.models.load_backbone`), so EuroSAT's B8A-last order is never read by position.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from rsmae.evaluation.folds import Fold, choose_by_inner_cv
from rsmae.models.weights import load_backbone
from rsmae.tasks.probe import fit_linear_probe, knn_predict

__all__ = ["PROTOCOLS", "ProbeConfig", "ProbeResult", "backbone_features", "encoder_features",
           "evaluate_backbone", "evaluate_features", "fold_statistics"]

PROTOCOLS = ("linear", "knn")


@dataclasses.dataclass(frozen=True)
class ProbeConfig:
    """Settings of the frozen probes; tuples are candidates chosen among inside each training fold.

    Attributes:
        l2: L2 weights of the linear head, most regularised first (it wins ties).
        knn_k: Neighbour counts of the k-NN vote.
        pools: Poolings (``"cls"``, ``"mean"``).
        normalisation: ``"fold"`` (training fold's band statistics) or ``"backbone"`` (the file's).
        inner_folds: Inner stratified folds that make the choices.
        probe_steps: Full-batch Adam steps of the linear head.
        probe_lr: Its learning rate.
        seed: Seed of the inner folds.
    """

    l2: tuple[float, ...] = (1e-1, 1e-2, 1e-3, 1e-4)
    knn_k: tuple[int, ...] = (5, 10, 20)
    pools: tuple[str, ...] = ("cls", "mean")
    normalisation: Literal["fold", "backbone"] = "fold"
    inner_folds: int = 5
    probe_steps: int = 300
    probe_lr: float = 1e-2
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class ProbeResult:
    """Predictions of one protocol on the test images of one fold.

    Attributes:
        protocol: ``"linear"`` or ``"knn"``.
        fold: The fold's name.
        test: Indices of the test images.
        predictions: Predicted class per test image.
        choice: What the training fold chose, e.g. ``"pool=mean l2=0.01"``.
        inner_accuracy: Inner cross-validated accuracy of that choice.
    """

    protocol: str
    fold: str
    test: np.ndarray
    predictions: np.ndarray
    choice: str
    inner_accuracy: float


def fold_statistics(images: Tensor, train: np.ndarray) -> tuple[Tensor, Tensor]:
    """Per-band mean and standard deviation (float64) of ``images[train]``: the one normalisation rule."""
    x = images[torch.as_tensor(train)].double()
    return x.mean((0, 2, 3)), x.std((0, 2, 3)).clamp_min(1e-6)


@torch.no_grad()
def encoder_features(encoder: torch.nn.Module, images: Tensor, batch_size: int = 64) -> dict[str, Tensor]:
    """``{"cls": (N, D), "mean": (N, D)}``: the cls token and the mean patch token of ``images``."""
    encoder = encoder.eval()
    prefix = int(getattr(encoder, "num_prefix_tokens", 1))
    cls, mean = [], []
    for x in images.split(batch_size):
        tokens = encoder.forward_features(x.float())
        cls.append(tokens[:, 0])
        mean.append(tokens[:, prefix:].mean(1))
    return {"cls": torch.cat(cls), "mean": torch.cat(mean)}


def backbone_features(path: str | Path, images: Tensor, bands: Sequence[str], sensor: str,
                      train: np.ndarray, normalisation: str = "fold") -> dict[str, Tensor]:
    """Features of all ``images`` (raw numbers, channels = ``bands``) from the backbone at ``path``.

    With ``normalisation="fold"`` the band statistics come from ``images[train]`` only.

    Raises:
        ValueError: on an unknown ``normalisation``.
        WeightsError, BandError: from :func:`rsmae.models.load_backbone`, naming the file.
    """
    encoder = load_backbone(path, bands=list(bands), sensor=sensor, img_size=images.shape[-1])
    if normalisation == "fold":
        mean, std = fold_statistics(images, train)
    elif normalisation == "backbone":
        meta = encoder.rsmae_meta
        if meta.mean is None or meta.std is None:
            raise ValueError(f"{path}: the backbone has no statistics; use normalisation='fold'")
        mean, std = torch.tensor(meta.mean, dtype=torch.float64), torch.tensor(meta.std, dtype=torch.float64)
    else:
        raise ValueError(f"normalisation={normalisation!r}: use 'fold' or 'backbone'")
    x = ((images.double() - mean[:, None, None]) / std[:, None, None]).float()
    return encoder_features(encoder, x)


def _predict(protocol: str, feats: Tensor, labels: Tensor, train: np.ndarray, test: np.ndarray,
             setting: float, config: ProbeConfig, num_classes: int) -> np.ndarray:
    if protocol == "knn":
        return knn_predict(feats[train], labels[train], feats[test], int(setting),
                           num_classes=num_classes).argmax(1).numpy()
    probe = fit_linear_probe(feats[train], labels[train], steps=config.probe_steps, lr=config.probe_lr,
                             weight_decay=setting, num_classes=num_classes)
    with torch.no_grad():
        return probe(feats[test]).argmax(1).numpy()


def evaluate_features(protocol: str, feats: dict[str, Tensor], labels: Tensor, fold: Fold,
                      config: ProbeConfig, num_classes: int | None = None) -> ProbeResult:
    """Choose pooling and setting on ``fold.train`` by inner folds, then predict ``fold.test``.

    Args:
        protocol: ``"linear"`` or ``"knn"``.
        feats: Features of every image per pooling (keys among ``config.pools`` are used, or all
            when none is, e.g. ``{"-": ...}``).
        labels: ``(N,)`` class indices of every image.
        fold: Training and test indices.
        config: Candidates and head settings.
        num_classes: Default from ``labels``.

    Raises:
        ValueError: on an unknown ``protocol``.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")
    num_classes = num_classes or int(labels.max()) + 1
    pools = [p for p in feats if p in config.pools] or list(feats)
    settings = config.knn_k if protocol == "knn" else config.l2
    candidates = list(itertools.product(pools, settings))
    train_y = labels[fold.train]

    def inner(tr: np.ndarray, te: np.ndarray, cand: tuple[str, float]) -> np.ndarray:
        return _predict(protocol, feats[cand[0]][fold.train], train_y, tr, te, cand[1], config, num_classes)

    (pool, setting), scores = choose_by_inner_cv(train_y.numpy(), candidates, inner, k=config.inner_folds,
                                                 seed=config.seed)
    pred = _predict(protocol, feats[pool], labels, fold.train, fold.test, setting, config, num_classes)
    name = "k" if protocol == "knn" else "l2"
    choice = (f"pool={pool} " if pool != "-" else "") + f"{name}={setting:g}"
    return ProbeResult(protocol, fold.name, fold.test, pred, choice, max(scores))


def evaluate_backbone(path: str | Path, images: Tensor, labels: Tensor, bands: Sequence[str], sensor: str,
                      folds: Sequence[Fold], config: ProbeConfig = ProbeConfig(),
                      protocols: Sequence[str] = PROTOCOLS) -> list[ProbeResult]:
    """Every protocol of the backbone at ``path`` on every fold (features per fold: its statistics)."""
    results = []
    for fold in folds:
        feats = backbone_features(path, images, bands, sensor, fold.train, config.normalisation)
        results += [evaluate_features(p, feats, labels, fold, config) for p in protocols]
    return results
