"""Scene-classification transfer of one backbone under one protocol: one call, one metrics dict.

Protocols (METHOD.md, "Transfer protocols"):

- ``knn``: weighted k-NN (cosine, k = 20, temperature 0.07) on frozen cls features;
- ``linear``: BatchNorm without affine + linear layer on frozen features, learning rate chosen on the
  validation split from a small sweep;
- ``head``: k = 0 tuned blocks, an MLP head on frozen features (same sweep);
- ``mlp``: only the last block's MLP (and the final norm) tuned with the head;
- ``lastK`` (``last1``, ``last2``, ``last4``...): the last K blocks tuned;
- ``full``: everything tuned, with layer-wise LR decay and drop-path.

Frozen-feature protocols run on features cached on disk (:mod:`rsmae.evaluation.features`); tuned
protocols train a :class:`~rsmae.tasks.finetune.FinetuneTask` with Lightning and report images/s and
MFU. Choices (learning rates) are made on the validation split, never on the test split. Features and
training run on the ``accelerator``'s device (a GPU when present by default), with progress shown.
With ``out_dir``, tuned protocols and the linear probe save the model ``rsmae predict classify`` runs.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from rsmae.evaluation.data import (
    ClassificationData,
    accelerator_device,
    load_classification,
    load_for_task,
    peek_size,
    task_bands,
)
from rsmae.evaluation.features import cached_features, file_digest
from rsmae.evaluation.metrics import classification_metrics
from rsmae.evaluation.probe import no_model_note, probe_classifier
from rsmae.evaluation.progress import Progress, StepProgress
from rsmae.evaluation.speed import count_flops, matmul_peak
from rsmae.models.trainable import FEATURE_PROTOCOLS, Protocol
from rsmae.models.trainable import parse_protocol as parse_protocol_spec
from rsmae.models.weights import save_backbone
from rsmae.tasks.finetune import FinetuneTask, save_classifier
from rsmae.tasks.precision import default_precision
from rsmae.tasks.probe import LR_SWEEP, fit_head, knn_predict, sweep_lr

__all__ = [
    "ClassificationOptions",
    "FINETUNE_RECIPE",
    "FROZEN_PROTOCOLS",
    "LR_SWEEP",
    "PROTOCOLS",
    "evaluate_classification",
    "parse_protocol",
]

_logger = logging.getLogger(__name__)

# Bumped when a tuned protocol's recipe changes, so benchmark cells computed before are recomputed.
FINETUNE_RECIPE = 2  # 2: mean-pooled patch tokens + LayerNorm (MAE's fine-tuning), was the cls token
FROZEN_PROTOCOLS = FEATURE_PROTOCOLS
PROTOCOLS = (*FROZEN_PROTOCOLS, "mlp", "last1", "last2", "last4", "full")
FEATURE_CHUNK = 1024  # images per cached feature entry (and progress step): one entry for the subset


def _protocol(name: str) -> Protocol:
    """The protocol ``name`` (:func:`~rsmae.models.trainable.parse_protocol`); a frozen encoder is ``head``.

    Raises:
        ValueError: naming the known protocols.
    """
    protocol = parse_protocol_spec(name)
    if protocol.kind == "tune" and protocol.tune in ("frozen", 0):
        raise ValueError(f"unknown protocol {name!r}; choose one of {', '.join(PROTOCOLS)} (or lastK)")
    return protocol


def parse_protocol(name: str) -> tuple[str, str | int]:
    """Deprecated: ``(kind, tune)`` of a protocol name; use :func:`rsmae.models.trainable.parse_protocol`.

    Raises:
        ValueError: naming the known protocols.
    """
    warnings.warn("rsmae.evaluation.classification.parse_protocol is deprecated; use "
                  "rsmae.models.trainable.parse_protocol (a Protocol)", DeprecationWarning, stacklevel=2)
    protocol = _protocol(name)
    return "finetune" if protocol.kind == "tune" else protocol.kind, protocol.tune


def _features(encoder: nn.Module, data: ClassificationData, digest: str, cache_dir: str | Path | None,
              progress: bool = True) -> dict[str, Tensor]:
    """Features of every split on the encoder's device, :data:`FEATURE_CHUNK` images at a time."""
    out = {}
    for split in ("train", "val", "test"):
        images, parts = getattr(data, split)[0], []
        with Progress(len(images), f"features {split}", unit="img", enabled=progress) as bar:
            for chunk in images.split(FEATURE_CHUNK):
                parts.append(cached_features(encoder, chunk, backbone_digest=digest, cache_dir=cache_dir))
                bar.update(len(chunk))
        out[split] = torch.cat(parts)
    return out


def _frozen(kind: str, data: ClassificationData, feats: dict[str, Tensor], seed: int, k: int
            ) -> tuple[Tensor, dict[str, Any], nn.Module | None]:
    """Test logits of a frozen-feature protocol, its chosen settings and its head (``None`` for k-NN)."""
    (_, ytr), (_, yval) = data.train, data.val
    n = len(data.classes)
    if kind == "knn":
        votes = knn_predict(feats["train"], ytr, feats["test"], k, num_classes=n)
        return votes, {"k": k, "trainable_params": 0}, None
    head = "linear" if kind == "linear" else "mlp"
    model, lr, val_acc = sweep_lr(
        lambda lr: fit_head(feats["train"], ytr, head=head, lr=lr, num_classes=n, seed=seed),
        lambda model: float((model(feats["val"]).argmax(1) == yval).float().mean()))
    with torch.no_grad():
        logits = model(feats["test"])
    params = sum(p.numel() for p in model.parameters())
    return logits, {"lr": lr, "val_accuracy": val_acc, "trainable_params": params}, model


def _save_frozen(kind: str, encoder: nn.Module, head: nn.Module | None, data: ClassificationData,
                 note: str, out_dir: str | Path) -> dict[str, str]:
    """Save a linear probe as tuned models are (:mod:`rsmae.evaluation.probe`); other kinds log why not."""
    if kind != "linear" or head is None:
        _logger.warning("%s: %s", Path(out_dir) / "classifier.safetensors", no_model_note(kind))
        return {}
    task = probe_classifier(encoder.cpu(), head, len(data.classes))
    return _save_tuned(task, data, note, out_dir)


def _finetune(encoder: nn.Module, data: ClassificationData, tune: str | int, seed: int,
              hparams: dict[str, Any], out_dir: str | Path | None, *, device: torch.device,
              progress: bool) -> tuple[Tensor, dict[str, Any]]:
    """Train a FinetuneTask on ``device``; test logits, trainable parameters, images/s and MFU.

    With ``out_dir`` the tuned model is saved there: ``backbone.safetensors`` (the encoder with its
    metadata), ``head.safetensors`` (the :class:`~rsmae.tasks.finetune.PooledHead`: ``fc.*``, ``norm.*``,
    its pooling in the metadata) and both with the class names as one ``classifier.safetensors``
    (:func:`~rsmae.tasks.finetune.save_classifier`, the model ``rsmae predict classify`` takes).
    """
    L.seed_everything(seed, workers=True, verbose=False)
    epochs = int(hparams.pop("epochs", 30))
    batch_size = int(hparams.pop("batch_size", 32))
    precision = hparams.pop("precision", None) or default_precision(device.type)
    task = FinetuneTask(encoder, len(data.classes), tune=tune, seed=seed, **hparams)
    x, y = data.train
    gen = torch.Generator().manual_seed(seed)
    train = DataLoader(TensorDataset(x, y), batch_size=min(batch_size, len(x)), shuffle=True,
                       generator=gen, drop_last=len(x) > batch_size)
    val = DataLoader(TensorDataset(*data.val), batch_size=256)
    probe_x, probe_y = x[:2], y[:2]

    def step() -> None:
        F.cross_entropy(task(probe_x), probe_y).backward()

    task.train()
    flops = count_flops(step) / len(probe_x)
    task.zero_grad(set_to_none=True)
    trainer = L.Trainer(accelerator=device.type, devices=1, max_epochs=epochs,
                        precision=precision, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        check_val_every_n_epoch=max(1, epochs // 3),
                        callbacks=[StepProgress(f"fine-tuning ({tune})")] if progress else None)
    start = time.perf_counter()
    trainer.fit(task, train, val)
    fit_s = time.perf_counter() - start
    seen = trainer.global_step * train.batch_size
    ips = seen / fit_s
    dtype = torch.bfloat16 if "bf16" in str(precision) else torch.float32
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        logits = task.to(device).predict_logits(data.test[0])
    val_acc = trainer.callback_metrics.get("val/acc")
    saved = {} if out_dir is None else _save_tuned(task, data, f"fine-tuned ({tune}, seed {seed})", out_dir)
    return logits, {**saved,
        "trainable_params": task.trainable_params,
        "images_per_s": ips,
        "gflop_per_image": flops / 1e9,
        "mfu": ips * flops / 1e9 / matmul_peak(dtype, device.type),
        "precision": str(precision),
        "epochs": epochs,
        "steps": trainer.global_step,
        "lr": task.hparams.lr,
        "val_accuracy": float(val_acc) if val_acc is not None else None,
    }


def _save_tuned(task: FinetuneTask, data: ClassificationData, note: str,
                out_dir: str | Path) -> dict[str, str]:
    """Write the tuned encoder, its head and both as one classifier under ``out_dir``; their paths."""
    task.cpu()
    encoder = task.encoder
    meta = dataclasses.replace(encoder.rsmae_meta, mean=data.mean, std=data.std,
                               source=f"{encoder.rsmae_meta.source} {note}")
    backbone = save_backbone(encoder, Path(out_dir) / "backbone.safetensors", meta)
    save_file({k: v.detach().contiguous() for k, v in task.head.state_dict().items()},
              str(Path(out_dir) / "head.safetensors"), metadata={"pool": task.head.pool})
    classifier = save_classifier(task, Path(out_dir) / "classifier.safetensors", meta, data.classes)
    return {"model_path": str(backbone), "classifier_path": str(classifier)}


@dataclasses.dataclass(kw_only=True)
class ClassificationOptions:
    """Options of :func:`evaluate_classification` (keyword arguments of the same names).

    Attributes:
        fraction: Label fraction of the training split (``"100%"``, ``"25%"``, ``"5-shot"``).
        seed: Seed of the label fraction, the heads and fine-tuning.
        cache_dir: Feature cache folder (``None``: no cache).
        out_dir: Where to write the confusion matrix (``confusion.csv``) and, for tuned protocols and
            the linear probe, the model (``backbone.safetensors`` + ``head.safetensors``, and both as
            one ``classifier.safetensors`` for ``rsmae predict classify``; the probe's normalisation
            folded into its head, :mod:`rsmae.evaluation.probe`); ``knn`` and ``head`` save no model
            (a warning says which protocol to use); ``None``: not written.
        sensor: Sensor of the files' bands.
        layout: Band order in the files.
        k: Neighbours of the k-NN protocol.
        adapt: Allow adapting the backbone to other bands (logged); ``False`` refuses.
        accelerator: Lightning accelerator of features and training: ``"auto"`` (a GPU when one is
            visible, else the CPU), ``"cpu"``, ``"gpu"``.
        progress: Show feature extraction and training steps (a bar on a terminal, else log lines).
        finetune: Tuned protocols: ``epochs``, ``batch_size``, ``precision`` and
            :class:`~rsmae.tasks.finetune.FinetuneTask` arguments (``lr``, ``layer_decay``...).
    """

    fraction: str | float = "100%"
    seed: int = 0
    cache_dir: str | Path | None = None
    out_dir: str | Path | None = None
    sensor: str = "s2-l1c"
    layout: str = "eurosat"
    k: int = 20
    adapt: bool = True
    accelerator: str = "auto"
    progress: bool = True
    finetune: dict[str, Any] = dataclasses.field(default_factory=dict)

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> ClassificationOptions:
        """The options among ``kwargs``; the other keys are fine-tuning settings (``finetune``)."""
        names = {f.name for f in dataclasses.fields(cls)} - {"finetune"}
        return cls(**{k: v for k, v in kwargs.items() if k in names},
                   finetune={k: v for k, v in kwargs.items() if k not in names})


def evaluate_classification(backbone: str | Path, protocol: str, train_root: str | Path,
                            test_root: str | Path, **options: Any) -> dict[str, Any]:
    """Score ``backbone`` on a class-folder task with ``protocol``.

    Args:
        backbone: A backbone file (:func:`rsmae.save_backbone`).
        protocol: One of :data:`PROTOCOLS` (or ``lastK``).
        train_root: Folder of class folders to train on (a validation split is held out of it).
        test_root: Folder of class folders to score.
        **options: :class:`ClassificationOptions` fields (``fraction``, ``seed``, ``cache_dir``,
            ``out_dir``, ``sensor``, ``layout``, ``k``, ``adapt``, ``accelerator``, ``progress``); any
            other key is a fine-tuning setting (``epochs``, ``batch_size``, ``precision``,
            :class:`~rsmae.tasks.finetune.FinetuneTask` arguments).

    Returns:
        Metrics and bookkeeping: ``accuracy``, ``per_class_accuracy``, ``confusion_matrix`` (path or
        nested list), ``trainable_params``, ``wall_s``, and for tuned protocols ``images_per_s`` and
        ``mfu``.
    """
    start = time.perf_counter()
    opts = ClassificationOptions.from_kwargs(**options)
    spec = _protocol(protocol)
    device = accelerator_device(opts.accelerator)
    encoder, note = load_for_task(backbone, task_bands(opts.sensor, opts.layout), opts.sensor,
                                  peek_size(train_root), adapt=opts.adapt)
    data = load_classification(encoder, train_root, test_root, fraction=opts.fraction, seed=opts.seed,
                               sensor=opts.sensor, layout=opts.layout)
    if not spec.frozen_features:
        logits, extra = _finetune(encoder, data, spec.tune, opts.seed, dict(opts.finetune), opts.out_dir,
                                  device=device, progress=opts.progress)
    else:
        feats = _features(encoder.to(device), data, file_digest(backbone), opts.cache_dir, opts.progress)
        logits, extra, head = _frozen(spec.kind, data, feats, opts.seed, opts.k)
        if opts.out_dir is not None:
            source = f"linear probe (frozen encoder, cls token, lr {extra.get('lr')}, seed {opts.seed})"
            extra.update(_save_frozen(spec.kind, encoder, head, data, source, opts.out_dir))
    metrics = classification_metrics(logits.argmax(1), data.test[1], data.classes, opts.out_dir)
    return {
        "task": "classification", "protocol": protocol, "fraction": str(opts.fraction), "seed": opts.seed,
        "backbone": str(backbone), **metrics, **extra,
        "n_train": len(data.train[1]), "n_val": len(data.val[1]), "n_test": len(data.test[1]),
        "bands": data.bands, "adaptation": "; ".join(n for n in (note, data.adaptation) if n),
        "device": device.type,
        "wall_s": time.perf_counter() - start,
    }
