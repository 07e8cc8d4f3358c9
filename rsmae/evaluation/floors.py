"""Floors every classification table needs, fitted inside one training fold.

- ``spectral``: the spectral signature, per-band mean and standard deviation of each image (2 x C
  numbers), standardised, then a linear classifier (EuroSAT classes differ strongly in it).
- ``rcf``: random convolutional features (MOSAIKS / torchgeo ``RCF`` "empirical" mode): K patches of
  the training fold's images, whitened as MOSAIKS does, are the filters; features are the mean of
  ``ReLU(conv + bias)`` and of ``ReLU(-(conv + bias))`` per filter, then a linear classifier.
- ``random_vit``: a frozen randomly initialised ViT (the transfer grid's random init: the recipe's
  preset, created under torch seed ``seed``), cls token or mean patch token, then a linear classifier.

The linear classifier is :func:`rsmae.tasks.probe.fit_linear_probe` (standardisation with the training
features' statistics, zero-initialised head, full-batch Adam: deterministic). Every choice is made
on the training fold: band statistics, RCF patches, the L2 weight and the pooling (by inner
stratified cross-validation, :func:`~rsmae.evaluation.folds.choose_by_inner_cv`). Features are
computed once per outer training fold (its images, no labels); the inner folds choose only the
head's settings.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from rsmae.evaluation.folds import Fold, choose_by_inner_cv
from rsmae.evaluation.kfold_probe import encoder_features
from rsmae.models.vit import create_encoder
from rsmae.tasks.probe import fit_linear_probe

__all__ = [
    "FLOORS",
    "FloorConfig",
    "FloorResult",
    "evaluate_floor",
    "floor_predictions",
    "fold_features",
    "random_conv_features",
    "random_vit_features",
    "sample_patches",
    "spectral_signature",
    "whiten_patches",
]

_logger = logging.getLogger(__name__)

FLOORS: dict[str, str] = {
    "spectral": "spectral signature (band mean + std)",
    "rcf": "RCF (random convolutional features)",
    "random_vit": "random-init ViT (frozen)",
}


@dataclasses.dataclass(frozen=True)
class FloorConfig:
    """Settings of the floors; the lists are the candidates chosen among inside each training fold.

    Attributes:
        l2: L2 weights of the linear head (Adam ``weight_decay``), most regularised first (it wins ties).
        inner_folds: Inner stratified folds of the training fold that choose the L2 weight and pooling.
        probe_steps: Full-batch Adam steps of the head.
        probe_lr: Adam learning rate of the head.
        rcf_filters: Number of RCF filters K (2K features).
        rcf_kernel: RCF filter size in pixels.
        rcf_bias: RCF bias added to every response (torchgeo's default -1).
        vit_preset: Encoder preset of the random ViT (:data:`rsmae.models.vit.ENCODER_PRESETS`).
        vit_patch: Its patch size.
        vit_pools: Poolings chosen among (``"cls"``, ``"mean"``).
        seed: Seed of the RCF patches, the ViT's init and the inner folds.
    """

    l2: tuple[float, ...] = (1e-1, 1e-2, 1e-3, 1e-4)
    inner_folds: int = 5
    probe_steps: int = 300
    probe_lr: float = 1e-2
    rcf_filters: int = 256
    rcf_kernel: int = 3
    rcf_bias: float = -1.0
    vit_preset: str = "vit_tiny"
    vit_patch: int = 8
    vit_pools: tuple[str, ...] = ("cls", "mean")
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class FloorResult:
    """Predictions of one floor on the test images of one fold.

    Attributes:
        method: A key of :data:`FLOORS`.
        fold: The fold's name.
        test: Indices of the test images (into the images given).
        predictions: Predicted class of each test image.
        choice: The settings the training fold chose, e.g. ``"l2=0.01 pool=cls"``.
        inner_accuracy: Inner cross-validated accuracy of that choice.
    """

    method: str
    fold: str
    test: np.ndarray
    predictions: np.ndarray
    choice: str
    inner_accuracy: float


def spectral_signature(images: Tensor) -> Tensor:
    """Per-band mean and standard deviation of each image: ``(N, C, H, W)`` -> ``(N, 2C)`` float64."""
    x = images.double().flatten(2)
    return torch.cat([x.mean(2), x.std(2, unbiased=False)], dim=1)


def _band_stats(images: Tensor) -> tuple[Tensor, Tensor]:
    x = images.double().transpose(0, 1).flatten(1)
    return x.mean(1), x.std(1).clamp_min(1e-6)


def _normalise(images: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    return ((images.double() - mean[:, None, None]) / std[:, None, None]).float()


def sample_patches(images: Tensor, count: int, size: int, generator: torch.Generator) -> Tensor:
    """``count`` random ``size`` x ``size`` patches (all bands) of ``images``: ``(count, C, size, size)``."""
    n, _, height, width = images.shape
    idx = torch.randint(0, n, (count,), generator=generator)
    ys = torch.randint(0, height - size + 1, (count,), generator=generator)
    xs = torch.randint(0, width - size + 1, (count,), generator=generator)
    return torch.stack([images[i, :, y:y + size, x:x + size] for i, y, x in
                        zip(idx.tolist(), ys.tolist(), xs.tolist(), strict=True)])


def whiten_patches(patches: Tensor, zca_bias: float = 1e-3) -> Tensor:
    """MOSAIKS' patch normalisation (as in torchgeo ``RCF._normalize``), with a symmetric eigensolver.

    Each patch is centred and scaled to unit norm, then multiplied by ``W W^T`` where ``W`` is the ZCA
    matrix ``V diag((E + zca_bias)^-1/2) V^T`` of the patches' covariance.
    """
    flat = patches.double().flatten(1)
    flat = flat - flat.mean(1, keepdim=True)
    norms = flat.norm(dim=1, keepdim=True)
    flat = flat / torch.where(norms < 1e-8, torch.ones_like(norms), norms)
    eigvals, eigvecs = torch.linalg.eigh(flat.T @ flat / len(flat))
    zca = eigvecs @ torch.diag((eigvals.clamp_min(0) + zca_bias).rsqrt()) @ eigvecs.T
    return (flat @ zca @ zca.T).reshape(patches.shape).float()


@torch.no_grad()
def random_conv_features(images: Tensor, filters: Tensor, bias: float = -1.0, batch_size: int = 32
                         ) -> Tensor:
    """RCF features: mean of ``ReLU(y)`` and ``ReLU(-y)`` per filter, ``y = conv(x, filters) + bias``.

    Returns:
        ``(N, 2K)`` float32 features for ``K`` filters.
    """
    bias_t = torch.full((len(filters),), bias)
    out = []
    for x in images.split(batch_size):
        y = F.conv2d(x.float(), filters, bias_t)
        out.append(torch.cat([y.clamp_min(0).mean((-2, -1)), y.clamp_max(0).neg().mean((-2, -1))], 1))
    return torch.cat(out)


@torch.no_grad()
def random_vit_features(images: Tensor, *, preset: str = "vit_tiny", patch_size: int = 8, seed: int = 0,
                        batch_size: int = 64) -> dict[str, Tensor]:
    """Frozen features of a randomly initialised encoder: ``{"cls": (N, D), "mean": (N, D)}``.

    The encoder is created as the transfer grid's random init (torch seed ``seed``) inside a forked
    RNG, so the caller's global RNG is untouched.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        encoder = create_encoder(preset, in_chans=images.shape[1], img_size=images.shape[-1],
                                 patch_size=patch_size).eval()
    return encoder_features(encoder, images, batch_size)


def fold_features(method: str, images: Tensor, train: np.ndarray, config: FloorConfig) -> dict[str, Tensor]:
    """Features of all ``images`` for one floor, with everything fitted on ``images[train]`` only.

    Returns:
        Features per pooling candidate (``{"-": ...}`` when the floor has a single one).

    Raises:
        ValueError: on an unknown ``method``.
    """
    if method == "spectral":
        return {"-": spectral_signature(images).float()}
    if method not in FLOORS:
        raise ValueError(f"unknown floor {method!r}; choose one of {', '.join(FLOORS)}")
    mean, std = _band_stats(images[train])
    x = _normalise(images, mean, std)
    if method == "rcf":
        gen = torch.Generator().manual_seed(config.seed)
        patches = sample_patches(x[torch.as_tensor(train)], config.rcf_filters, config.rcf_kernel, gen)
        return {"-": random_conv_features(x, whiten_patches(patches), config.rcf_bias)}
    feats = random_vit_features(x, preset=config.vit_preset, patch_size=config.vit_patch, seed=config.seed)
    return {pool: feats[pool] for pool in config.vit_pools}


def _fit_predict(feats: Tensor, labels: Tensor, train: np.ndarray, test: np.ndarray, l2: float,
                 config: FloorConfig, num_classes: int) -> np.ndarray:
    probe = fit_linear_probe(feats[train], labels[train], steps=config.probe_steps, lr=config.probe_lr,
                             weight_decay=l2, num_classes=num_classes)
    with torch.no_grad():
        return probe(feats[test]).argmax(1).numpy()


def evaluate_floor(method: str, images: Tensor, labels: Tensor, fold: Fold, config: FloorConfig,
                   *, num_classes: int | None = None) -> FloorResult:
    """Fit one floor on ``fold.train`` (all choices inside it) and predict ``fold.test``.

    Args:
        method: A key of :data:`FLOORS`.
        images: ``(N, C, H, W)`` raw images (digital numbers) of every fold.
        labels: ``(N,)`` class indices.
        fold: Indices of the training and test images.
        config: The floors' settings and candidates.
        num_classes: Number of classes; default from ``labels``.

    Returns:
        The test predictions and the chosen settings.
    """
    num_classes = num_classes or int(labels.max()) + 1
    feats = fold_features(method, images, fold.train, config)
    train_y = labels[fold.train]
    candidates = list(itertools.product(feats, config.l2))

    def inner(tr: np.ndarray, te: np.ndarray, cand: tuple[str, float]) -> np.ndarray:
        pool, l2 = cand
        f = feats[pool][fold.train]
        return _fit_predict(f, train_y, tr, te, l2, config, num_classes)

    (pool, l2), scores = choose_by_inner_cv(train_y.numpy(), candidates, inner, k=config.inner_folds,
                                            seed=config.seed)
    pred = _fit_predict(feats[pool], labels, fold.train, fold.test, l2, config, num_classes)
    choice = f"l2={l2:g}" + (f" pool={pool}" if pool != "-" else "")
    _logger.info("%s %s: chose %s (inner accuracy %.3f)", method, fold.name, choice, max(scores))
    return FloorResult(method, fold.name, fold.test, pred, choice, max(scores))


def floor_predictions(method: str, images: Tensor, labels: Tensor, folds: list[Fold],
                      config: FloorConfig | None = None) -> list[dict[str, Any]]:
    """One floor fitted on every fold: a row per test image, as the k-fold tables keep them.

    Returns:
        ``{"fold", "image", "prediction", "correct", "choice"}`` per test image of every fold.
    """
    rows = []
    for fold in folds:
        res = evaluate_floor(method, images, labels, fold, config or FloorConfig())
        pairs = zip(res.test.tolist(), res.predictions.tolist(), strict=True)
        rows += [{"fold": fold.name, "image": i, "prediction": p, "correct": int(p == int(labels[i])),
                  "choice": res.choice} for i, p in pairs]
    return rows
