"""Fine-tuning protocols of a backbone file, scored on folds with every choice inside the training fold.

A backbone (``backbone.safetensors``) is fine-tuned on a fold's training images and predicts its test
images, one prediction per image, under a tuned protocol of the one grammar
(:func:`rsmae.models.trainable.parse_protocol`): ``lastK`` (the last K blocks, the final norm and the
head) or ``full`` (everything, with layer-wise LR decay and drop-path). ``mlp`` works too.

The model and its recipe are :class:`~rsmae.tasks.finetune.FinetuneTask` (AdamW with layer-wise decay,
warmup + cosine, drop-path, D4 and multiscale crops, label smoothing), trained by a Lightning
``Trainer`` as :func:`rsmae.evaluation.classification._finetune` trains it; that function takes the
folders' fixed train/val/test split and also measures FLOP and MFU and saves models, so the few lines
of the fit are repeated here for a fold's tensors instead of reusing it.

Choices, all inside the training fold (METHOD.md, "Statistics of the tables"):

- the peak learning rate among ``config.lrs``, on **one** inner stratified holdout of the training
  fold (``config.holdout`` of its images; one split rather than inner k-fold, to keep the cost at
  ``len(lrs) + 1`` fits per fold): each LR is fitted on the rest and scored on the holdout, the best
  wins (ties: the earliest listed); then the chosen LR is refitted on the whole training fold, which
  predicts the test fold;
- normalisation, one rule for every init: each band standardised with the training fold's images
  (pixels only, as :mod:`rsmae.evaluation.kfold_probe` does), for the inner fits and the refit alike.

Pooling is the same for every init: the mean of the patch tokens + LayerNorm (``pool="avg"``, MAE's
fine-tuning and what the frozen probes chose), or the cls token with ``pool="cls"``. Epochs, batch
size, precision and seeds (head init, augmentations, batch order) are the same for every init and fold.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

from rsmae.evaluation.folds import Fold, stratified_kfold
from rsmae.evaluation.kfold_probe import fold_statistics
from rsmae.models.trainable import parse_protocol
from rsmae.models.weights import load_backbone
from rsmae.tasks.finetune import FinetuneTask
from rsmae.tasks.precision import default_precision

__all__ = ["FinetuneConfig", "FinetuneResult", "evaluate_fold", "fit_predict", "fold_statistics",
           "inner_holdout", "tuned_protocol"]

_logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
    """Settings of the k-fold fine-tuning; ``lrs`` are the candidates chosen among inside a training fold.

    Attributes:
        lrs: Peak learning rates (of the head; blocks get layer-wise decayed ones), the preferred first
            (it wins ties).
        epochs: Passes over the training images of every fit.
        batch_size: Images per step (the last, smaller batch of an epoch is dropped).
        holdout: Share of the training fold held out (stratified) to choose the LR.
        pool: ``"avg"`` (mean patch token + LayerNorm) or ``"cls"``.
        precision: Lightning precision (``None``: :func:`~rsmae.tasks.precision.default_precision`).
        seed: Seed of the inner holdout, the head, the augmentations and the batch order.
        task: Other :class:`~rsmae.tasks.finetune.FinetuneTask` arguments as ``(name, value)`` pairs
            (``layer_decay``, ``drop_path``...); its defaults otherwise.
    """

    lrs: tuple[float, ...] = (1e-3, 3e-4, 3e-3)
    epochs: int = 10
    batch_size: int = 32
    holdout: float = 0.2
    pool: str = "avg"
    precision: str | None = None
    seed: int = 0
    task: tuple[tuple[str, Any], ...] = ()


@dataclasses.dataclass(frozen=True)
class FinetuneResult:
    """Predictions of one tuned protocol on the test images of one fold.

    Attributes:
        protocol: The protocol's name (``"last1"``, ``"full"``).
        fold: The fold's name.
        test: Indices of the test images.
        predictions: Predicted class per test image.
        lr: The learning rate the training fold chose.
        inner_accuracy: Holdout accuracy of every candidate LR, in ``config.lrs`` order.
        seconds: Wall time of the fold (all fits).
    """

    protocol: str
    fold: str
    test: np.ndarray
    predictions: np.ndarray
    lr: float
    inner_accuracy: tuple[float, ...]
    seconds: float


def tuned_protocol(name: str) -> str | int:
    """The ``tune`` setting of a tuned protocol name (``"last1"`` -> 1, ``"full"`` -> ``"full"``).

    Raises:
        ValueError: for a frozen-feature protocol (``linear``, ``knn``, ``head``: use
            :mod:`rsmae.evaluation.kfold_probe`) or an unknown name.
    """
    spec = parse_protocol(name)
    if spec.frozen_features or spec.tune in ("frozen", 0):
        raise ValueError(f"protocol {name!r} trains no encoder part; use lastK, mlp or full here and "
                         "rsmae.evaluation.kfold_probe for frozen features")
    return spec.tune


def inner_holdout(labels: np.ndarray, share: float, seed: int) -> Fold:
    """One stratified split of a training fold: about ``share`` of each class held out.

    Raises:
        ValueError: when ``share`` is not in (0, 0.5] or a class has too few images to hold one out.
    """
    if not 0 < share <= 0.5:
        raise ValueError(f"holdout={share}: hold out a share in (0, 0.5] of the training fold")
    return stratified_kfold(labels, round(1 / share), seed=seed)[0]


def fit_predict(path: str | Path, images: Tensor, labels: Tensor, train: np.ndarray, test: np.ndarray,
                *, tune: str | int, lr: float, config: FinetuneConfig, bands: Sequence[str], sensor: str,
                num_classes: int) -> np.ndarray:
    """Fine-tune the backbone at ``path`` on ``images[train]`` and predict the classes of ``images[test]``.

    ``images`` must already be normalised; the backbone is loaded afresh (bands matched by name).
    """
    L.seed_everything(config.seed, workers=True, verbose=False)
    encoder = load_backbone(path, bands=list(bands), sensor=sensor, img_size=images.shape[-1])
    task = FinetuneTask(encoder, num_classes, tune=tune, lr=lr, seed=config.seed, pool=config.pool,
                        **dict(config.task))
    x, y = images[torch.as_tensor(train)], labels[torch.as_tensor(train)]
    gen = torch.Generator().manual_seed(config.seed)
    loader = DataLoader(TensorDataset(x, y), batch_size=min(config.batch_size, len(x)), shuffle=True,
                        generator=gen, drop_last=len(x) > config.batch_size)
    precision = config.precision or default_precision("cpu")
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=config.epochs, precision=precision,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0)
    trainer.fit(task, loader)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled="bf16" in str(precision)):
        logits = task.predict_logits(images[torch.as_tensor(test)])
    return logits.argmax(1).numpy()


def evaluate_fold(path: str | Path, images: Tensor, labels: Tensor, fold: Fold, protocol: str,
                  config: FinetuneConfig, *, bands: Sequence[str], sensor: str,
                  num_classes: int | None = None) -> FinetuneResult:
    """Choose the LR on an inner holdout of ``fold.train``, refit on all of it, predict ``fold.test``.

    Args:
        path: The backbone file.
        images: ``(N, C, H, W)`` raw images of every labelled image (channels = ``bands``).
        labels: ``(N,)`` class indices; those of ``fold.test`` are never read.
        fold: Training and test indices.
        protocol: ``lastK``, ``mlp`` or ``full``.
        config: Candidates and the recipe.
        bands: Band names of the channels.
        sensor: Sensor of ``bands``.
        num_classes: Default: from the training labels.

    Raises:
        ValueError: for a frozen protocol or an empty LR grid.
    """
    tune = tuned_protocol(protocol)
    if not config.lrs:
        raise ValueError("FinetuneConfig.lrs is empty: give at least one learning rate")
    start = time.perf_counter()
    train_y = labels[torch.as_tensor(fold.train)]
    num_classes = num_classes or int(train_y.max()) + 1
    mean, std = fold_statistics(images, fold.train)
    x = ((images.double() - mean[:, None, None]) / std[:, None, None]).float()
    common = {"tune": tune, "config": config, "bands": bands, "sensor": sensor, "num_classes": num_classes}
    if len(config.lrs) == 1:
        scores: tuple[float, ...] = (float("nan"),)
    else:
        inner = inner_holdout(train_y.numpy(), config.holdout, config.seed)
        tr, va = fold.train[inner.train], fold.train[inner.test]
        truth = labels[torch.as_tensor(va)].numpy()
        scores = tuple(float((fit_predict(path, x, labels, tr, va, lr=lr, **common) == truth).mean())
                       for lr in config.lrs)
    lr = config.lrs[int(np.nanargmax(scores))] if len(scores) > 1 else config.lrs[0]
    pred = fit_predict(path, x, labels, fold.train, fold.test, lr=lr, **common)
    seconds = time.perf_counter() - start
    _logger.info("%s %s %s: lr %g (holdout %s), %.0f s", Path(path).name, protocol, fold.name, lr, scores,
                 seconds)
    return FinetuneResult(protocol, fold.name, fold.test, pred, lr, scores, seconds)
