"""Scene classification by fine-tuning a backbone: last k blocks, the last MLP, or the full ViT.

The encoder is injected (a timm ``VisionTransformer`` from :func:`rsmae.load_backbone`), which
parts train is set by :func:`~rsmae.models.trainable.configure_trainable`, and frozen modules
stay in eval mode during training. Full and partial fine-tuning use MAE's recipe: AdamW with
layer-wise learning-rate decay (timm's ``param_groups_layer_decay``), drop-path on the tuned blocks,
linear warmup then cosine, and the remote-sensing augmentations of :mod:`rsmae.augment` (D4 and
multiscale crops) on the device.

A tuned classifier is saved as one file (:func:`save_classifier`, as
:func:`~rsmae.tasks.change.save_change_model` saves a change model): the encoder and head tensors
(``encoder.*``, ``head.*``), and in the metadata the task's arguments, the encoder's
:class:`~rsmae.models.BackboneMeta` (bands, sensor, window and the normalisation the model was
trained with) and the class names; :func:`load_classifier` rebuilds it from the file alone.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from timm.layers import DropPath
from timm.models.vision_transformer import VisionTransformer
from timm.optim import param_groups_layer_decay
from torch import Tensor, nn

from rsmae.augment import RSAugment
from rsmae.errors import WeightsError
from rsmae.files import atomic_path
from rsmae.models import BackboneMeta
from rsmae.models.meta import META_KEY, parse_meta
from rsmae.models.trainable import Tune, configure_trainable, count_trainable, freeze_eval, parse_tune
from rsmae.models.weights import build_and_load
from rsmae.tasks.optim import scheduled

__all__ = ["CLASSIFIER_KEY", "FinetuneTask", "PooledHead", "load_classifier", "save_classifier"]

CLASSIFIER_KEY = "rsmae_classifier"  # metadata key of a saved classifier (a backbone file has "rsmae")


class PooledHead(nn.Module):
    """Classifier on ViT tokens: mean patch token + LayerNorm (``"avg"``) or the cls token, then linear.

    Args:
        dim: Token width.
        num_classes: Classes.
        pool: ``"avg"`` (MAE's fine-tuning) or ``"cls"``.
        num_prefix_tokens: Leading non-patch tokens (the cls token).
    """

    def __init__(self, dim: int, num_classes: int, pool: str = "avg", num_prefix_tokens: int = 1) -> None:
        super().__init__()
        self.pool, self.num_prefix_tokens = pool, num_prefix_tokens
        self.norm = nn.LayerNorm(dim) if pool == "avg" else nn.Identity()
        self.fc = nn.Linear(dim, num_classes)

    def forward(self, tokens: Tensor) -> Tensor:
        """Logits ``(B, num_classes)`` of tokens ``(B, N, dim)``."""
        if self.pool == "cls":
            return self.fc(tokens[:, 0])
        return self.fc(self.norm(tokens[:, self.num_prefix_tokens:].mean(1)))


class FinetuneTask(L.LightningModule):
    """Encoder + pooled features + linear head trained on labelled scenes.

    As in MAE's fine-tuning, features are by default the mean of the patch tokens followed by a new
    LayerNorm (``pool="avg"``): MAE pretraining gives the cls token no objective of its own.

    Args:
        encoder: The backbone; its ``blocks`` and final norm are tuned according to ``tune``.
        num_classes: Number of classes.
        tune: ``"full"``, ``"mlp"`` (last block's MLP), or a number of last blocks.
        lr: Peak learning rate of the head (blocks get ``lr * layer_decay ** depth_from_top``).
        layer_decay: Layer-wise learning-rate decay (1 = none).
        weight_decay: AdamW weight decay (none on norms, biases, tokens).
        drop_path: Largest drop-path rate, linearly increasing over the tuned blocks.
        label_smoothing: Cross-entropy label smoothing.
        warmup_fraction: Share of the steps spent in linear warmup.
        dihedral: Augment with a random D4 element.
        crop_scale: Area range of the multiscale random resized crop (``None`` = off).
        gsd: Metres per pixel of the images (bookkeeping of the crop's GSD).
        seed: Seed of the head's initialisation and of the augmentations.
        pool: ``"avg"`` (mean patch token + LayerNorm, MAE's fine-tuning) or ``"cls"``.
    """

    def __init__(
        self,
        encoder: VisionTransformer,
        num_classes: int,
        tune: Tune = "full",
        lr: float = 1e-3,
        layer_decay: float = 0.75,
        weight_decay: float = 0.05,
        drop_path: float = 0.1,
        label_smoothing: float = 0.1,
        warmup_fraction: float = 0.1,
        dihedral: bool = True,
        crop_scale: tuple[float, float] | None = (0.5, 1.0),
        gsd: float = 10.0,
        seed: int = 0,
        pool: str = "avg",
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["encoder"])
        self.encoder = encoder
        self.tune = parse_tune(tune, len(encoder.blocks))
        if self.tune == "frozen":
            raise ValueError("FinetuneTask trains encoder parts: use the frozen-feature protocols for tune=0")
        configure_trainable(encoder, self.tune)
        self._set_drop_path(drop_path)
        gen = torch.Generator().manual_seed(seed)
        self.head = PooledHead(encoder.embed_dim, num_classes, pool, encoder.num_prefix_tokens)
        with torch.no_grad():
            self.head.fc.weight.copy_(torch.randn(self.head.fc.weight.shape, generator=gen) * 2e-5)
            self.head.fc.bias.zero_()
        self.augment = RSAugment(dihedral=dihedral, crop_scale=crop_scale)
        self._generator: torch.Generator | None = None

    def _set_drop_path(self, rate: float) -> None:
        """Drop-path on the tuned blocks only (frozen blocks stay deterministic)."""
        tuned = [b for b in self.encoder.blocks if any(p.requires_grad for p in b.parameters())]
        for i, block in enumerate(tuned):
            p = rate * (i + 1) / len(tuned) if rate > 0 else 0.0
            for name in ("drop_path1", "drop_path2"):
                if hasattr(block, name):
                    setattr(block, name, DropPath(p) if p > 0 else nn.Identity())

    @property
    def trainable_params(self) -> int:
        """Trainable parameters of encoder and head."""
        return count_trainable(self)

    def forward(self, images: Tensor) -> Tensor:
        """Class logits ``(B, num_classes)``."""
        return self.head(self.encoder.forward_features(images))

    def train(self, mode: bool = True) -> FinetuneTask:
        """Training mode for the tuned parts; frozen parts stay in eval mode."""
        super().train(mode)
        if mode:
            freeze_eval(self.encoder)
        return self

    def _shared_step(self, batch: tuple[Tensor, Tensor], stage: str) -> Tensor:
        images, labels = batch
        if stage == "train":
            if self._generator is None:
                self._generator = torch.Generator(images.device).manual_seed(self.hparams.seed)
            gsd = torch.full((len(images),), float(self.hparams.gsd), device=images.device)
            images = self.augment({"image": images, "gsd": gsd}, self._generator)["image"]
        logits = self(images)
        smoothing = self.hparams.label_smoothing if stage == "train" else 0.0
        loss = F.cross_entropy(logits.float(), labels, label_smoothing=smoothing)
        acc = (logits.argmax(1) == labels).float().mean()
        self.log_dict({f"{stage}/loss": loss, f"{stage}/acc": acc}, prog_bar=stage == "val",
                      on_step=False, on_epoch=True, batch_size=len(images))
        return loss

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        """Cross-entropy on augmented images."""
        return self._shared_step(batch, "train")

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        """Loss and accuracy on the validation split."""
        self._shared_step(batch, "val")

    def configure_optimizers(self) -> dict[str, Any]:
        """AdamW with layer-wise decay (each group's LR scaled) and warmup + cosine."""
        hp = self.hparams
        groups = param_groups_layer_decay(self.encoder, weight_decay=hp.weight_decay,
                                          no_weight_decay_list=("pos_embed", "cls_token"),
                                          layer_decay=hp.layer_decay)
        groups = [g for g in groups if g["params"]]
        for g in groups:
            g["lr"] = hp.lr * g.pop("lr_scale", 1.0)
        head = {"lr": hp.lr, "weight_decay": hp.weight_decay}
        groups.append({"params": list(self.head.fc.parameters()), **head})
        if any(True for _ in self.head.norm.parameters()):
            groups.append({"params": list(self.head.norm.parameters()), "lr": hp.lr, "weight_decay": 0.0})
        optimizer = torch.optim.AdamW(groups, lr=hp.lr, weight_decay=hp.weight_decay)
        total = int(self.trainer.estimated_stepping_batches)
        return scheduled(optimizer, round(hp.warmup_fraction * total), total)

    @torch.no_grad()
    def predict_logits(self, images: Tensor, batch_size: int = 256) -> Tensor:
        """Logits of ``images`` in eval mode (mode restored afterwards)."""
        was = self.training
        self.eval()
        try:
            device = next(self.parameters()).device
            out = [self(x.to(device)).float().cpu() for x in images.split(batch_size)]
        finally:
            self.train(was)
        return torch.cat(out)


def save_classifier(task: FinetuneTask, path: str | Path, meta: BackboneMeta, classes: list[str]) -> Path:
    """Write a tuned classifier (encoder + head, its arguments, ``meta`` and ``classes``), atomically.

    Args:
        task: The trained task.
        path: Output ``.safetensors``.
        meta: The encoder's metadata with the normalisation the task was trained with (``mean``, ``std``).
        classes: Class names in label order.

    Raises:
        WeightsError: naming ``path``, when ``classes`` do not match the head or ``meta`` has no statistics.
    """
    path = Path(path)
    if len(classes) != task.head.fc.out_features or meta.mean is None or meta.std is None:
        raise WeightsError(f"{path}: {len(classes)} class names for {task.head.fc.out_features} outputs, or "
                           "no mean/std in meta: pass the training data's classes and statistics")
    state = {f"{part}.{k}": v.detach().cpu().contiguous()
             for part in ("encoder", "head") for k, v in getattr(task, part).state_dict().items()}
    info = {"task": dict(task.hparams), "classes": list(classes)}
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={CLASSIFIER_KEY: json.dumps(info), "encoder": meta.to_json()})
    return path


def load_classifier(path: str | Path) -> tuple[FinetuneTask, list[str]]:
    """Rebuild a classifier written by :func:`save_classifier`: the task (eval mode) and its class names.

    The encoder's metadata (``task.encoder.rsmae_meta``) holds its bands, sensor, window and statistics.

    Raises:
        WeightsError: naming ``path``, when it is missing, not a classifier, or its metadata holds
            more than ``FinetuneTask`` arguments.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such classifier; save one with rsmae evaluate --protocol full "
                           "--out DIR")
    try:
        with safe_open(str(path), framework="pt") as f:
            file_meta = dict(f.metadata() or {})
            state = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:
        raise WeightsError(f"{path}: not a readable safetensors file ({err})") from err
    if CLASSIFIER_KEY not in file_meta or "encoder" not in file_meta:
        raise WeightsError(f"{path}: no classifier metadata; it was not written by save_classifier (rsmae "
                           "evaluate --protocol full|mlp|lastK --out DIR)")
    try:
        info = json.loads(file_meta[CLASSIFIER_KEY])
        hparams, classes = dict(info["task"]), [str(c) for c in info["classes"]]
    except (ValueError, KeyError, TypeError) as err:
        raise WeightsError(f"{path}: classifier metadata is not valid ({err}); save the model again") from err
    allowed = set(inspect.signature(FinetuneTask.__init__).parameters) - {"self", "encoder"}
    refused = sorted(set(hparams) - allowed)
    if refused or hparams.get("num_classes") != len(classes):
        raise WeightsError(f"{path}: classifier metadata key(s) {refused} refused, or {len(classes)} classes "
                           f"for num_classes={hparams.get('num_classes')}; save the model again")
    meta = parse_meta(path, {META_KEY: file_meta["encoder"]})
    part = {name: {k.split(".", 1)[1]: v for k, v in state.items() if k.startswith(f"{name}.")}
            for name in ("encoder", "head")}
    encoder = build_and_load(part["encoder"], path, meta, meta, strict=True)
    task = FinetuneTask(encoder, **hparams)
    task.head.load_state_dict(part["head"])
    return task.eval(), classes
