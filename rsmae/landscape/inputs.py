"""Models and fixed data of a landscape study: model files in, objectives out.

A model file is a Lightning checkpoint of ``pipelines/pretrain.py`` (MAE / RC-MAE, rebuilt with
:meth:`~rsmae.tasks.PretrainTask.load_from_checkpoint`, weights only: tensors and plain values), a
backbone file (:func:`~rsmae.models.load_backbone`) or a supervised classifier (its backbone file
plus a head file). Each model brings its bands and statistics, so every model sees the same samples normalised
as in its own training.
"""

from __future__ import annotations

import copy
import functools
import logging
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rsmae.data import ShardDataset, normalize_images
from rsmae.datasets import EuroSAT
from rsmae.errors import InputNotFoundError, LandscapeError, WeightsError
from rsmae.landscape.config import DataSpec, ModelSpec
from rsmae.landscape.objectives import (
    ClassificationObjective,
    MAEObjective,
    Objective,
    ProbeObjective,
    RCMAEObjective,
)
from rsmae.models import RCMAE, MaskedAutoencoder, load_backbone
from rsmae.models.weights import read_weights
from rsmae.tasks import PretrainTask
from rsmae.tasks.finetune import PooledHead

__all__ = ["Classifier", "LoadedModel", "build_objective", "load_model", "objective_images", "probe_data"]

_logger = logging.getLogger(__name__)


class Classifier(nn.Module):
    """A ViT encoder and its classifier head (the supervised model of a study).

    The head is a :class:`~rsmae.tasks.finetune.PooledHead` (mean patch token + LayerNorm, or the
    cls token, then linear), as ``pipelines/evaluate.py --protocol full --out`` saves it.
    """

    def __init__(self, encoder: nn.Module, head: PooledHead) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(B, classes)``."""
        return self.head(self.encoder.forward_features(x))


@dataclass
class LoadedModel:
    """A model of the study with what its inputs need.

    Attributes:
        spec: Its config entry.
        module: MAE, RC-MAE, encoder or :class:`Classifier`.
        encoder: The encoder probed.
        info: ``{"bands", "sensor", "mean", "std", "img_size"}``.
    """

    spec: ModelSpec
    module: nn.Module
    encoder: nn.Module
    info: dict[str, Any]


def load_model(spec: ModelSpec) -> LoadedModel:
    """Load one model file of the study.

    Raises:
        InputNotFoundError: when the file is missing.
        WeightsError: when it cannot be read as the declared kind.
    """
    path = Path(spec.path)
    if not path.is_file():
        raise InputNotFoundError(f"model {spec.name!r}: {path} not found; train it first (e.g. "
                                 "python pipelines/pretrain.py fit --config configs/pretrain/base.yaml "
                                 "--config configs/pretrain/mae_tiny.yaml)")
    if spec.kind == "pretrain":
        return _load_pretrain(spec, path)
    encoder = load_backbone(path)
    meta = encoder.rsmae_meta
    info = {"bands": list(meta.bands), "sensor": meta.sensor, "mean": meta.mean, "std": meta.std,
            "img_size": meta.img_size}
    if spec.kind == "backbone":
        return LoadedModel(spec, encoder, encoder, info)
    head = _load_head(Path(spec.head or ""), encoder)
    return LoadedModel(spec, Classifier(encoder, head), encoder, info)


def _load_pretrain(spec: ModelSpec, path: Path) -> LoadedModel:
    try:  # weights only: a checkpoint holding other pickled objects is refused, never executed
        task = PretrainTask.load_from_checkpoint(path, map_location="cpu", weights_only=True)
    except (KeyError, RuntimeError, TypeError, ValueError, pickle.UnpicklingError) as err:
        raise WeightsError(f"model {spec.name!r}: {path} is not a checkpoint of pipelines/pretrain.py "
                           f"({type(err).__name__}: {err}); use kind: backbone for backbone files") from err
    info = dict(task.hparams.get("data_info") or {})
    if not info.get("bands"):
        raise WeightsError(f"model {spec.name!r}: {path} has no data_info (bands, statistics); "
                           "it was not trained through pipelines/pretrain.py")
    info["img_size"] = int(task.hparams.img_size)
    if spec.weights == "teacher" and not isinstance(task.model, RCMAE):
        raise LandscapeError(f"model {spec.name!r}: weights: teacher, but {path} holds an MAE, not an RC-MAE")
    encoder = task.encoder(spec.weights)  # type: ignore[arg-type]
    if spec.weights == "teacher":  # the EMA teacher is frozen: perturb what the student trains
        trainable = {n: p.requires_grad for n, p in task.encoder("student").named_parameters()}
        encoder = copy.deepcopy(encoder)
        for n, p in encoder.named_parameters():
            p.requires_grad_(trainable[n])
    return LoadedModel(spec, task.model, encoder, info)


def _load_head(path: Path, encoder: nn.Module) -> PooledHead:
    """Read a head file.

    Either a PooledHead (``fc.*``, ``norm.*``, ``pool`` in the metadata) or a bare linear layer on
    the cls token (``weight``, ``bias``).
    """
    tensors, meta = read_weights(path)
    dim = int(encoder.embed_dim)
    if "weight" in tensors and "fc.weight" not in tensors:  # a bare linear head on the cls token
        tensors = {f"fc.{k}": v for k, v in tensors.items()}
        meta = {**meta, "pool": "cls"}
    weight = tensors.get("fc.weight")
    if weight is None or weight.ndim != 2 or weight.shape[1] != dim or "fc.bias" not in tensors:
        raise WeightsError(f"{path}: a classifier head file needs fc.weight (classes, {dim}) and fc.bias "
                           "(a PooledHead of rsmae.tasks.finetune), or weight and bias; found "
                           f"{sorted(tensors)}")
    pool = meta.get("pool") or ("avg" if "norm.weight" in tensors else "cls")
    head = PooledHead(dim, int(weight.shape[0]), pool=pool,
                      num_prefix_tokens=int(getattr(encoder, "num_prefix_tokens", 1)))
    try:
        head.load_state_dict(tensors)
    except RuntimeError as err:
        raise WeightsError(f"{path}: does not fit a PooledHead(pool={pool!r}): {err}") from err
    return head


def _eurosat(data: DataSpec, info: dict[str, Any], split: str) -> EuroSAT:
    if info.get("sensor") not in ("s2-l1c", "s2-l2a") or info.get("mean") is None:
        raise LandscapeError(f"EuroSAT (Sentinel-2 L1C) cannot feed a model of sensor {info.get('sensor')!r} "
                             "without statistics; drop the probe objective for it or use a Sentinel-2 model")
    stats = tuple(info["mean"]), tuple(info["std"])
    return _read_eurosat(str(data.eurosat), split, tuple(info["bands"]), *stats)


@functools.lru_cache(maxsize=4)
def _read_eurosat(root: str, split: str, bands: tuple[str, ...], mean: tuple[float, ...],
                  std: tuple[float, ...]) -> EuroSAT:
    """EuroSAT read once per process for each (split, bands, statistics): models of one study share it."""
    return EuroSAT(root, split, bands=bands, mean=mean, std=std)


def _choose(n_total: int, n: int | None, seed: int) -> np.ndarray:
    if n is None or n >= n_total:
        return np.arange(n_total)
    return np.sort(np.random.default_rng(seed).choice(n_total, size=n, replace=False))


def _fit_size(images: Tensor, size: int) -> Tensor:
    """Centre-crop larger tiles, resize smaller ones (bilinear) to ``size``."""
    h, w = images.shape[-2:]
    if (h, w) == (size, size):
        return images
    if h >= size and w >= size:
        top, left = (h - size) // 2, (w - size) // 2
        return images[..., top : top + size, left : left + size]
    return F.interpolate(images, size=(size, size), mode="bilinear", antialias=True)


def pretrain_images(data: DataSpec, info: dict[str, Any]) -> tuple[Tensor, Tensor]:
    """Normalised images ``(N, C, S, S)`` and their GSD for the pretraining losses.

    From ``data.store`` (tiles chosen by ``data.seed``, normalised with the model's statistics),
    or the EuroSAT split when no store is given.
    """
    size = int(info["img_size"])
    if data.store is None:
        ds = _eurosat(data, info, data.probe_split)
        idx = _choose(len(ds), data.pretrain_samples, data.seed)
        return _fit_size(ds.images[idx], size), torch.full((len(idx),), 10.0)
    store = ShardDataset(data.store, native=True, bands=info["bands"])
    idx = _choose(len(store), data.pretrain_samples, data.seed)
    samples = store.__getitems__([int(i) for i in idx])
    images = torch.stack([s["image"] for s in samples])
    gsd = torch.stack([s["gsd"] for s in samples]).float()
    if info.get("mean") is None or info.get("std") is None:
        raise LandscapeError(f"the model has no statistics to normalise {data.store}; retrain with data_info")
    mean, std = (torch.tensor(info[k], dtype=torch.float32) for k in ("mean", "std"))
    return _fit_size(normalize_images(images, mean, std), size), gsd


def probe_data(data: DataSpec, info: dict[str, Any], split: str | None = None) -> tuple[Tensor, Tensor]:
    """EuroSAT images (normalised with the model's statistics) and labels of one split.

    ``data.probe_samples`` images of ``split``, by default ``data.probe_split`` (the probe head's).
    """
    ds = _eurosat(data, info, split or data.probe_split)
    idx = _choose(len(ds), data.probe_samples, data.seed)
    return ds.images[idx], ds.labels[idx]


def objective_images(data: DataSpec) -> dict[str, str]:
    """Which images each objective uses, for the report's header."""
    store = data.store if data.store is not None else f"EuroSAT {data.probe_split}"
    n, unseen = data.probe_samples or "all", data.probe_eval_split != data.probe_split
    where = f"EuroSAT {data.probe_eval_split} ({n} images{', no model trained on them' if unseen else ''})"
    pretrain = f"{store} ({data.pretrain_samples} samples, seed {data.seed}; the pretraining data)"
    return {"recon": pretrain, "pretrain": pretrain,
            "probe": f"head fitted on EuroSAT {data.probe_split} ({n} images, {data.probe_steps} Adam "
                     f"steps), loss on {where}",
            "classification": where}


def build_objective(name: str, model: LoadedModel, data: DataSpec) -> Objective | None:
    """The objective ``name`` for ``model``, or ``None`` when it does not apply to the model's kind."""
    module = model.module
    mae = isinstance(module, (MaskedAutoencoder, RCMAE))
    if name in ("recon", "pretrain") and mae:
        images, gsd = pretrain_images(data, model.info)
        student = module.student if isinstance(module, RCMAE) else module
        kwargs: dict[str, Any] = {"batch_size": data.batch_size, "seed": data.mask_seed,
                                  "gsd": gsd if student.gsd_pos_embed else None}
        if name == "pretrain" and isinstance(module, RCMAE):
            return RCMAEObjective(module, images, **kwargs)
        return MAEObjective(module, images, **kwargs)
    if name == "probe":
        images, labels = probe_data(data, model.info)
        held_out: dict[str, Tensor] = {}
        if data.probe_eval_split != data.probe_split:
            held_out = dict(zip(("eval_images", "eval_labels"),
                                probe_data(data, model.info, data.probe_eval_split), strict=True))
        return ProbeObjective(model.encoder, images, labels, steps=data.probe_steps,
                              batch_size=data.batch_size, **held_out)
    if name == "classification" and isinstance(module, Classifier):
        images, labels = probe_data(data, model.info, data.probe_eval_split)
        return ClassificationObjective(module, images, labels, batch_size=data.batch_size)
    _logger.info("objective %s does not apply to %s (%s): skipped", name, model.spec.name, model.spec.kind)
    return None
