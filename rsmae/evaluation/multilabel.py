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

The splits are streamed in chunks of patches (read, resized, normalised, turned into features), so
memory holds one chunk of images and the features, not a split (the full training split is ~190 GB
as float32); the features are computed on the ``accelerator``'s device, with progress shown.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader
from torchmetrics.functional.classification import multilabel_average_precision, multilabel_f1_score

from rsmae.bands import get_layout, get_sensor
from rsmae.data import normalize_images
from rsmae.datasets.bigearthnet import BIGEARTHNET_SPLITS, BigEarthNetS2, load_bigearthnet
from rsmae.evaluation.data import accelerator_device, backbone_meta, load_for_task
from rsmae.evaluation.features import cached_features, file_digest
from rsmae.evaluation.progress import Progress
from rsmae.tasks.probe import LR_SWEEP, fit_head, sweep_lr
from rsmae.tasks.statistics import backbone_or_training_statistics

__all__ = [
    "LR_SWEEP",
    "MultilabelOptions",
    "MULTILABEL_PROTOCOLS",
    "evaluate_multilabel",
    "fit_multilabel_probe",
    "multilabel_metrics",
]

_logger = logging.getLogger(__name__)

MULTILABEL_PROTOCOLS = ("knn", "linear")


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
    """Deprecated: :func:`rsmae.tasks.probe.fit_head` fits multi-hot targets (a linear probe, BCE)."""
    warnings.warn("fit_multilabel_probe is deprecated; use rsmae.tasks.probe.fit_head (multi-hot y)",
                  DeprecationWarning, stacklevel=2)
    return fit_head(x, y, lr=lr, steps=steps)


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


def _chunks(dataset: BigEarthNetS2, order: list[int], size: int, chunk_size: int, workers: int, desc: str,
            progress: bool) -> Iterator[tuple[Tensor, Tensor]]:
    """``(images, labels)`` of ``chunk_size`` patches at a time: the encoder's band order, ``size`` px."""
    loader = DataLoader(dataset, batch_size=chunk_size, num_workers=workers)
    with Progress(len(dataset), desc, unit="patch", enabled=progress) as bar:
        for batch in loader:
            yield _resize(batch["image"][:, order], size), batch["label"]
            bar.update(len(batch["label"]))


def _statistics(chunks: Iterable[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
    """Per-band mean and (unbiased) std of all chunks' pixels, pooled chunk by chunk in float64."""
    n, mean, m2 = 0, torch.zeros(()), torch.zeros(())
    for x, _ in chunks:
        flat = x.transpose(0, 1).reshape(x.shape[1], -1).double()
        k, chunk_mean = flat.shape[1], flat.mean(1)
        delta, n = chunk_mean - mean, n + k
        mean = mean + delta * k / n  # Chan et al.'s pairwise update: exact, no cancellation
        m2 = m2 + ((flat - chunk_mean[:, None]) ** 2).sum(1) + delta**2 * (n - k) * k / n
    return mean.float(), (m2 / (n - 1)).sqrt().clamp_min(1e-6).float()


def _probe_scores(protocol: str, feats: dict[str, Tensor], ys: dict[str, Tensor], k: int
                  ) -> tuple[Tensor, dict[str, Any]]:
    """Test scores of ``knn`` or ``linear`` (learning rate chosen on the validation split)."""
    if protocol == "knn":
        return _knn_scores(feats["train"], ys["train"], feats["test"], k), {"k": k}
    probe, lr, val_map = sweep_lr(lambda lr: fit_head(feats["train"], ys["train"], lr=lr),
                                  lambda probe: _val_map(probe(feats["val"]), ys["val"]))
    with torch.no_grad():
        return probe(feats["test"]).sigmoid(), {"lr": lr, "val_map": val_map}


@dataclasses.dataclass(kw_only=True)
class MultilabelOptions:
    """Options of :func:`evaluate_multilabel` (keyword arguments of the same names).

    Attributes:
        seed: Seed of the probe (the splits are the dataset's).
        num_classes: 19 or 43.
        cache_dir: Frozen-feature cache (one entry per chunk); ``None`` disables it.
        adapt: Allow band adaptation of a backbone of other bands.
        k: Neighbours of ``knn``.
        accelerator: Where features are computed: ``auto`` (a GPU when present), ``cpu``, ``gpu``.
        chunk_size: Patches per chunk (about 0.7 MB each as float32).
        workers: ``DataLoader`` processes reading patches (0: in this process).
        progress: Show progress (a bar on a terminal, else log lines).
    """

    seed: int = 0
    num_classes: int = 19
    cache_dir: str | Path | None = None
    adapt: bool = True
    k: int = 20
    accelerator: str = "auto"
    chunk_size: int = 256
    workers: int = 0
    progress: bool = True

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> MultilabelOptions:
        """Build from keyword arguments, naming the valid ones when a key is unknown."""
        names = {f.name for f in dataclasses.fields(cls)}
        if set(kwargs) - names:
            raise TypeError(f"unknown option(s) {sorted(set(kwargs) - names)}; valid: {sorted(names)}")
        return cls(**kwargs)


def evaluate_multilabel(backbone: str | Path, protocol: str, root: str | Path,
                        **options: Any) -> dict[str, Any]:
    """Score one backbone on BigEarthNet-S2 (torchgeo layout under ``root``) with a frozen protocol.

    The splits are streamed in chunks (see the module docstring); the training split's statistics,
    when needed, cost one more pass over it.

    Args:
        backbone: Backbone file.
        protocol: ``"linear"`` or ``"knn"``.
        root: BigEarthNet folder (:class:`~rsmae.datasets.bigearthnet.BigEarthNetS2`).
        **options: :class:`MultilabelOptions` fields (``seed``, ``num_classes``, ``cache_dir``, ``adapt``,
            ``k``, ``accelerator``, ``chunk_size``, ``workers``, ``progress``).

    Returns:
        ``map`` (macro, classes present in test), ``map_micro``, ``f1_micro``, ``per_class_ap``,
        the chosen ``lr`` and validation mAP, sizes, ``adaptation`` and ``wall_s``.

    Raises:
        ValueError: on an unknown protocol; TypeError: on an unknown option, naming the valid ones.
        InputNotFoundError, BandError, WeightsError, ModelConfigError: naming the file or option.
    """
    opts = MultilabelOptions.from_kwargs(**options)
    if protocol not in MULTILABEL_PROTOCOLS:
        known = ", ".join(MULTILABEL_PROTOCOLS)
        raise ValueError(f"multi-label protocol {protocol!r}; choose one of {known}")
    start = time.perf_counter()
    torch.manual_seed(opts.seed)
    device = accelerator_device(opts.accelerator)
    splits = {s: load_bigearthnet(root, s, opts.num_classes) for s in BIGEARTHNET_SPLITS}
    bands = get_layout("bigearthnet", get_sensor("s2-l2a"))
    native = splits["train"][0]["image"].shape[-1]
    source = backbone_meta(backbone)
    patch = source.patch_size
    size = max(patch, round(native / patch) * patch)  # whole patches: 120 px stays 120 at patch 8
    encoder, note = load_for_task(backbone, bands, "s2-l2a", size, adapt=opts.adapt)
    meta = encoder.rsmae_meta
    order = [bands.index(get_sensor("s2-l2a").band(b).name) for b in meta.bands]

    def chunks(split: str, what: str) -> Iterator[tuple[Tensor, Tensor]]:
        return _chunks(splits[split], order, size, opts.chunk_size, opts.workers, f"{what} {split}",
                       opts.progress)

    if size != native:
        note = "; ".join(filter(None, [note, f"images resized from {native} to {size} px (patch {patch})"]))
    # no statistics, or statistics of other processing (L1C top-of-atmosphere) or bands: the training split's
    mean, std, from_training = backbone_or_training_statistics(
        meta.mean, meta.std, lambda: _statistics(chunks("train", "statistics")),
        usable=source.sensor == "s2-l2a")
    if from_training:
        note = "; ".join(filter(None, [note, "normalisation statistics from the training split"]))
        _logger.warning("%s: normalisation statistics computed from the BigEarthNet training split", backbone)
    feats, ys = _split_features(encoder.to(device), chunks, torch.as_tensor(mean), torch.as_tensor(std),
                                file_digest(backbone), opts.cache_dir)
    scores, chosen = _probe_scores(protocol, feats, ys, opts.k)
    return {"task": "bigearthnet", "protocol": protocol, "seed": opts.seed, "backbone": str(backbone),
            **multilabel_metrics(scores, ys["test"], splits["train"].classes), **chosen,
            "n_train": len(ys["train"]), "n_val": len(ys["val"]), "n_test": len(ys["test"]),
            "bands": list(meta.bands), "adaptation": note, "device": device.type,
            "wall_s": time.perf_counter() - start}


def _split_features(encoder: nn.Module, chunks: Callable[[str, str], Iterator[tuple[Tensor, Tensor]]],
                    mean: Tensor, std: Tensor, digest: str, cache_dir: str | Path | None
                    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Features and labels of every split, normalised and encoded chunk by chunk (cached per chunk)."""
    feats, ys = {}, {}
    for split in BIGEARTHNET_SPLITS:
        parts = [(cached_features(encoder, normalize_images(x, mean, std), backbone_digest=digest,
                                  cache_dir=cache_dir), y)
                 for x, y in chunks(split, "features")]
        feats[split], ys[split] = (torch.cat(p) for p in zip(*parts, strict=True))
    return feats, ys
