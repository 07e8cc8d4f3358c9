"""Multi-label scene classification (BigEarthNet-S2): frozen-feature protocols scored by mAP.

The backbone sees the task's 12 Level-2A bands: a backbone of other bands (Sentinel-2 L1C's 13, RGB)
has its patch embedding adapted by band name and the adaptation is logged and returned. Images keep
their 120 px (10 m, as in pretraining; the position embeddings are resampled). Normalisation uses
the backbone's statistics when they are of Level-2A data, otherwise (none, or Level-1C top-of-
atmosphere statistics) the training split's; either way it is recorded in ``adaptation``.

Protocols: ``linear`` (BatchNorm without affine + linear layer, binary cross-entropy, learning rate
chosen on the validation split by macro mAP) and ``knn`` (scores = similarity-weighted mean of the
k nearest training label vectors). Metrics: macro mAP over the classes present in the test split
(the usual BigEarthNet figure), micro mAP and micro F1 at 0.5.
"""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.functional.classification import multilabel_average_precision, multilabel_f1_score

from rsmae.bands import get_layout, get_sensor
from rsmae.data import normalize_images
from rsmae.datasets.bigearthnet import load_bigearthnet
from rsmae.evaluation.data import backbone_meta, load_for_task
from rsmae.evaluation.features import cached_features, file_digest
from rsmae.tasks.probe import small_problem_threads

__all__ = ["MULTILABEL_PROTOCOLS", "evaluate_multilabel", "fit_multilabel_probe", "multilabel_metrics"]

_logger = logging.getLogger(__name__)

MULTILABEL_PROTOCOLS = ("knn", "linear")
LR_SWEEP = (1e-3, 3e-3, 1e-2, 3e-2)


def multilabel_metrics(scores: Tensor, target: Tensor, classes: list[str]) -> dict[str, Any]:
    """Macro mAP over the classes with a positive in ``target``, micro mAP, micro F1 at 0.5.

    Args:
        scores: ``(N, C)`` scores (probabilities or logits: AP depends on the order only).
        target: ``(N, C)`` multi-hot labels.
        classes: Class names.
    """
    target = target.long()
    present = target.sum(0) > 0
    with warnings.catch_warnings():  # classes without a positive are reported as None below
        warnings.simplefilter("ignore", UserWarning)
        per_class = multilabel_average_precision(scores, target, num_labels=len(classes), average="none")
    ap = {name: (float(per_class[i]) if present[i] else None) for i, name in enumerate(classes)}
    scored = per_class[present]
    probs = scores if float(scores.min()) >= 0 and float(scores.max()) <= 1 else scores.sigmoid()
    return {
        "map": float(scored.mean()) if len(scored) else float("nan"),
        "map_micro": float(multilabel_average_precision(scores, target, num_labels=len(classes),
                                                        average="micro")),
        "f1_micro": float(multilabel_f1_score(probs, target, num_labels=len(classes), average="micro")),
        "classes_scored": int(present.sum()),
        "per_class_ap": ap,
    }


def fit_multilabel_probe(x: Tensor, y: Tensor, lr: float, steps: int = 300) -> nn.Module:
    """Linear probe for multi-hot targets: BatchNorm (training statistics) + zero-initialised linear."""
    norm = nn.BatchNorm1d(x.shape[1], affine=False)
    with torch.no_grad():
        norm.running_mean.copy_(x.mean(0))
        norm.running_var.copy_(x.var(0, unbiased=False))
    head = nn.Linear(x.shape[1], y.shape[1])
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    probe = nn.Sequential(norm, head).eval()
    optimizer = torch.optim.Adam(head.parameters(), lr=lr)
    with torch.no_grad():
        xn = norm(x)
    with torch.enable_grad(), small_problem_threads(xn.numel()):
        for _ in range(steps):
            optimizer.zero_grad(set_to_none=True)
            F.binary_cross_entropy_with_logits(head(xn), y.float()).backward()
            optimizer.step()
    return probe


def _knn_scores(train: Tensor, ytrain: Tensor, test: Tensor, k: int, temperature: float = 0.07) -> Tensor:
    sim = F.normalize(test, dim=1) @ F.normalize(train, dim=1).T
    top, idx = sim.topk(min(k, len(train)), dim=1)
    weights = (top / temperature).softmax(dim=1)
    return (weights[..., None] * ytrain.float()[idx]).sum(1)


def _resize(images: Tensor, size: int) -> Tensor:
    if images.shape[-1] == size:
        return images
    return F.interpolate(images, size=(size, size), mode="bilinear", antialias=True)


def _val_map(scores: Tensor, target: Tensor) -> float:
    present = target.sum(0) > 0
    if not bool(present.any()):
        return 0.0
    ap = multilabel_average_precision(scores[:, present], target[:, present].long(),
                                      num_labels=int(present.sum()), average="macro")
    return float(ap)


def evaluate_multilabel(
    backbone: str | Path,
    protocol: str,
    root: str | Path,
    *,
    seed: int = 0,
    num_classes: int = 19,
    cache_dir: str | Path | None = None,
    adapt: bool = True,
    k: int = 20,
) -> dict[str, Any]:
    """Score one backbone on BigEarthNet-S2 (torchgeo layout under ``root``) with a frozen protocol.

    Args:
        backbone: Backbone file.
        protocol: ``"linear"`` or ``"knn"``.
        root: BigEarthNet folder (:func:`~rsmae.datasets.bigearthnet.load_bigearthnet`).
        seed: Seed of the probe (the splits are the dataset's).
        num_classes: 19 or 43.
        cache_dir: Frozen-feature cache; ``None`` disables it.
        adapt: Allow band adaptation of a backbone of other bands.
        k: Neighbours of ``knn``.

    Returns:
        ``map`` (macro, classes present in test), ``map_micro``, ``f1_micro``, ``per_class_ap``,
        the chosen ``lr`` and validation mAP, sizes, ``adaptation`` and ``wall_s``.

    Raises:
        ValueError: on an unknown protocol.
        InputNotFoundError, BandError, WeightsError: naming the file.
    """
    if protocol not in MULTILABEL_PROTOCOLS:
        known = ", ".join(MULTILABEL_PROTOCOLS)
        raise ValueError(f"multi-label protocol {protocol!r}; choose one of {known}")
    start = time.perf_counter()
    torch.manual_seed(seed)
    splits = {s: load_bigearthnet(root, s, num_classes) for s in ("train", "val", "test")}
    classes = splits["train"][2]
    bands = get_layout("bigearthnet", get_sensor("s2-l2a"))
    native = splits["train"][0].shape[-1]
    source = backbone_meta(backbone)
    patch = source.patch_size
    size = max(patch, round(native / patch) * patch)  # whole patches: 120 px stays 120 at patch 8
    encoder, note = load_for_task(backbone, bands, "s2-l2a", size, adapt=adapt)
    meta = encoder.rsmae_meta
    order = [bands.index(get_sensor("s2-l2a").band(b).name) for b in meta.bands]
    xs = {s: _resize(x[:, order], size) for s, (x, _, _) in splits.items()}
    if size != native:
        note = "; ".join(filter(None, [note, f"images resized from {native} to {size} px (patch {patch})"]))
    if meta.mean is not None and meta.std is not None and source.sensor == "s2-l2a":
        mean, std = torch.tensor(meta.mean), torch.tensor(meta.std)
    else:  # no statistics, or statistics of other processing (L1C top-of-atmosphere) or bands
        flat = xs["train"].transpose(0, 1).reshape(len(order), -1).double()
        mean, std = flat.mean(1).float(), flat.std(1).clamp_min(1e-6).float()
        note = "; ".join(filter(None, [note, "normalisation statistics from the training split"]))
        _logger.warning("%s: normalisation statistics computed from the BigEarthNet training split", backbone)
    digest = file_digest(backbone)
    feats = {s: cached_features(encoder, normalize_images(x, mean, std),
                                backbone_digest=digest, cache_dir=cache_dir) for s, x in xs.items()}
    ys = {s: y for s, (_, y, _) in splits.items()}
    chosen: dict[str, Any] = {"k": k}
    if protocol == "knn":
        scores = _knn_scores(feats["train"], ys["train"], feats["test"], k)
    else:
        best: tuple[float, float, nn.Module] | None = None
        for lr in LR_SWEEP:
            probe = fit_multilabel_probe(feats["train"], ys["train"], lr)
            with torch.no_grad():
                val_map = _val_map(probe(feats["val"]), ys["val"])
            if best is None or val_map > best[0]:
                best = (val_map, lr, probe)
        assert best is not None
        chosen = {"lr": best[1], "val_map": best[0]}
        with torch.no_grad():
            scores = best[2](feats["test"]).sigmoid()
    result = {"task": "bigearthnet", "protocol": protocol, "seed": seed, "backbone": str(backbone),
              **multilabel_metrics(scores, ys["test"], classes), **chosen,
              "n_train": len(ys["train"]), "n_val": len(ys["val"]), "n_test": len(ys["test"]),
              "bands": list(meta.bands), "adaptation": note, "wall_s": time.perf_counter() - start}
    return result
