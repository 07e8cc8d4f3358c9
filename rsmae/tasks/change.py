"""``ChangeTask``: supervised change detection (Siamese ViT or FC-Siam-diff) as one LightningModule.

Every hyperparameter is a plain ``__init__`` argument, so ``LightningCLI`` exposes it and a saved
model (:func:`save_change_model`) rebuilds from its metadata alone: the backbone file is read once
for the initial weights, and its architecture is kept in ``encoder`` so the saved model no longer
needs it.

Batches are dicts ``{"image": (B, 2, C, H, W) raw pixels, "mask": (B, H, W)}``. Both dates are
normalised with one per-band ``mean``/``std`` (the backbone's pretraining statistics, or the
training split's when the backbone has none) and, in training, transformed by one random D4
element per pair, the same for date 1, date 2 and the mask (co-located crops come from
:class:`~rsmae.datasets.PairCrops`). The augmentation of training batch ``n`` comes from a
generator seeded by ``(seed, n)``.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import logging
from pathlib import Path
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor
from torchmetrics.classification import BinaryF1Score

from rsmae.augment import d4_transform
from rsmae.data import normalize_images
from rsmae.errors import BandError, WeightsError
from rsmae.models import (
    BackboneMeta,
    fused_attention_pays,
    load_backbone,
    set_fused_attention,
)
from rsmae.models.change import FCSiamDiff, SiameseViT, change_loss
from rsmae.models.trainable import configure_trainable, freeze_eval
from rsmae.models.weights import build_encoder
from rsmae.tasks.optim import param_groups, scheduled

__all__ = ["ChangeTask", "augment_pair", "load_change_model", "save_change_model"]

_logger = logging.getLogger(__name__)
_META_KEY = "rsmae_change"


def augment_pair(batch: dict[str, Any], generator: torch.Generator) -> dict[str, Any]:
    """One random D4 element per pair, applied alike to both dates and the mask.

    Args:
        batch: ``{"image": (B, 2, C, H, W), "mask": (B, H, W), ...}`` with square windows.
        generator: Source of the elements (CPU).

    Returns:
        A new dict with ``image`` and ``mask`` transformed; other keys passed through.
    """
    elements = torch.randint(0, 8, (batch["image"].shape[0],), generator=generator).tolist()
    image = torch.stack([d4_transform(x, e) for x, e in zip(batch["image"], elements, strict=True)])
    mask = torch.stack([d4_transform(m, e) for m, e in zip(batch["mask"], elements, strict=True)])
    return {**batch, "image": image, "mask": mask}


class ChangeTask(L.LightningModule):
    """Binary change detection on image pairs.

    Args:
        bands: Band names of the input channels (both dates).
        model: ``"siamese-vit"`` (a ViT encoder, shared by the dates) or ``"fc-siam-diff"``.
        backbone: Backbone file (:func:`~rsmae.models.save_backbone`) for the initial encoder
            weights; ``None`` = random init from ``preset`` (or from ``encoder``).
        encoder: The encoder's :class:`~rsmae.models.BackboneMeta` fields (filled from the backbone;
            rebuilds the architecture without the file).
        preset: Encoder preset of a random init.
        patch_size: Patch size of a random init.
        img_size: Training crop and inference window side in pixels.
        sensor: Registry sensor of ``bands``.
        mean: Per-band mean in pixel units; ``None`` = the backbone's, else set from the data.
        std: Per-band standard deviation, same order.
        tune: Encoder parts that train: ``"frozen"``, ``k`` last blocks, ``"mlp"``, ``"full"``.
        fusion: ``"diff"`` (``|f1 - f2|``, ``f2 - f1``) or ``"concat"``.
        feature_indices: Encoder blocks decoded; default four evenly spaced, the last included.
        decoder_dim: Decoder width.
        dropout: FC-Siam-diff dropout.
        pos_weight: BCE weight of change pixels.
        dice_weight: Weight of the soft-Dice term (0 = BCE only).
        ignore_index: Mask value of unlabelled pixels.
        lr: Learning rate of the decoder (and of FC-Siam-diff).
        encoder_lr: Learning rate of the encoder's tuned parameters.
        weight_decay: AdamW weight decay (none on norms, biases, tokens).
        warmup_steps: Linear warmup steps; ``None`` = 5 % of the run.
        dihedral: Augment with a random D4 element per pair.
        seed: Seed of the augmentation.
    """

    def __init__(
        self,
        bands: list[str],
        model: Literal["siamese-vit", "fc-siam-diff"] = "siamese-vit",
        backbone: str | None = None,
        encoder: dict[str, Any] | None = None,
        preset: str = "vit_tiny",
        patch_size: int = 16,
        img_size: int = 96,
        sensor: str | None = None,
        mean: list[float] | None = None,
        std: list[float] | None = None,
        tune: str | int = "frozen",
        fusion: Literal["diff", "concat"] = "diff",
        feature_indices: list[int] | None = None,
        decoder_dim: int = 64,
        dropout: float = 0.2,
        pos_weight: float = 10.0,
        dice_weight: float = 0.0,
        ignore_index: int = 255,
        lr: float = 1e-3,
        encoder_lr: float = 1e-4,
        weight_decay: float = 0.01,
        warmup_steps: int | None = None,
        dihedral: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if model == "fc-siam-diff":
            self.model: SiameseViT | FCSiamDiff = FCSiamDiff(len(bands), dropout=dropout)
        elif model == "siamese-vit":
            vit = self._encoder()
            configure_trainable(vit, tune)
            self.model = SiameseViT(vit, fusion=fusion, indices=feature_indices, decoder_dim=decoder_dim)
        else:
            raise ValueError(f"model={model!r}; choose 'siamese-vit' or 'fc-siam-diff'")
        self.val_f1 = BinaryF1Score(ignore_index=ignore_index)
        self.train_batches = 0

    # ------------------------------------------------------------------ parts
    def _encoder(self) -> torch.nn.Module:
        hp = self.hparams
        if hp.backbone is not None:
            vit = load_backbone(hp.backbone, bands=hp.bands, sensor=hp.sensor, img_size=hp.img_size)
            meta = vit.rsmae_meta
            if hp.mean is None and meta.mean is not None:
                self.hparams["mean"], self.hparams["std"] = list(meta.mean), list(meta.std)
                _logger.info("normalising with the backbone's statistics (%s)", meta.source)
        else:
            meta = BackboneMeta(**hp.encoder) if hp.encoder else BackboneMeta(
                preset=hp.preset, img_size=hp.img_size, patch_size=hp.patch_size, in_chans=len(hp.bands),
                bands=list(hp.bands), sensor=hp.sensor, mean=None, std=None, gsd=None, source="random init")
            if list(meta.bands) != list(hp.bands):
                raise BandError(f"encoder bands {meta.bands} differ from the task's {list(hp.bands)}")
            vit = build_encoder(meta)  # a spectral patch embedding with its bands, as saved
        self.hparams["encoder"] = dataclasses.asdict(meta)
        return vit

    @property
    def encoder(self) -> torch.nn.Module | None:
        """The ViT encoder (``None`` for FC-Siam-diff)."""
        return self.model.encoder if isinstance(self.model, SiameseViT) else None

    def set_statistics(self, mean: list[float], std: list[float]) -> None:
        """Set the per-band normalisation (e.g. from the training split)."""
        if len(mean) != len(self.hparams.bands) or len(std) != len(self.hparams.bands):
            raise BandError(f"{len(mean)} means / {len(std)} stds for {len(self.hparams.bands)} bands")
        self.hparams["mean"], self.hparams["std"] = [float(v) for v in mean], [float(v) for v in std]

    def normalize(self, image: Tensor) -> Tensor:
        """``(image - mean) / std`` per band for pairs ``(..., C, H, W)``, float32."""
        hp = self.hparams
        if hp.mean is None or hp.std is None:
            raise ValueError("ChangeTask has no mean/std: pass them, use a backbone with statistics, or "
                             "call set_statistics with the training split's")
        return normalize_images(image, hp.mean, hp.std)

    def _generator(self, index: int) -> torch.Generator:
        state = np.random.SeedSequence([self.hparams.seed, index]).generate_state(2, np.uint32)
        return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))

    def on_fit_start(self) -> None:
        """Choose the attention kernel for the device (math on CPUs, fused SDPA on CUDA)."""
        set_fused_attention(self.model, fused_attention_pays(self.device))

    def train(self, mode: bool = True) -> ChangeTask:
        """Train mode, frozen encoder parts kept in eval mode (frozen means frozen)."""
        super().train(mode)
        if mode and self.encoder is not None:
            freeze_eval(self.encoder)
        return self

    @torch.no_grad()
    def predict_logits(self, pair: Tensor) -> Tensor:
        """Logits ``(N, H, W)`` of raw pairs ``(N, 2, C, H, W)`` (call in eval mode)."""
        return self.model(self.normalize(pair.to(self.device)))

    # ------------------------------------------------------------------ steps
    def on_after_batch_transfer(self, batch: dict[str, Any], dataloader_idx: int) -> dict[str, Any]:
        """Normalise both dates; augment training batches (one D4 element per pair)."""
        batch = {**batch, "image": self.normalize(batch["image"])}
        if self._trainer is None or not self.trainer.training or not self.hparams.dihedral:
            return batch
        generator = self._generator(self.train_batches)
        self.train_batches += 1
        return augment_pair(batch, generator)

    def _shared_step(self, batch: dict[str, Any], stage: str) -> Tensor:
        hp = self.hparams
        logits = self.model(batch["image"])
        loss = change_loss(logits, batch["mask"], pos_weight=hp.pos_weight, dice_weight=hp.dice_weight,
                           ignore_index=hp.ignore_index)
        train = stage == "train"
        self.log(f"{stage}/loss", loss, on_step=train, on_epoch=not train, batch_size=len(logits),
                 prog_bar=True)
        if not train:
            self.val_f1(torch.sigmoid(logits), batch["mask"])
            self.log(f"{stage}/f1", self.val_f1, on_epoch=True, batch_size=len(logits))
        return loss

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        """One training batch."""
        return self._shared_step(batch, "train")

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        """One validation batch (F1 at 0.5)."""
        self._shared_step(batch, "val")

    def configure_optimizers(self) -> dict[str, Any]:
        """AdamW: ``lr`` for the decoder, ``encoder_lr`` for tuned encoder parts; warmup + cosine."""
        hp = self.hparams
        encoder_ids = {id(p) for p in self.encoder.parameters()} if self.encoder is not None else set()
        groups = []
        for group in param_groups(self.model, hp.weight_decay):
            for in_encoder in (False, True):
                params = [p for p in group["params"] if (id(p) in encoder_ids) == in_encoder]
                if params:
                    groups.append({"params": params, "weight_decay": group["weight_decay"],
                                   "lr": hp.encoder_lr if in_encoder else hp.lr})
        optimizer = torch.optim.AdamW(groups, lr=hp.lr)
        total = int(self.trainer.estimated_stepping_batches)
        warmup = hp.warmup_steps if hp.warmup_steps is not None else round(0.05 * total)
        return scheduled(optimizer, warmup, total)


def save_change_model(task: ChangeTask, path: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write a trained change model (weights + hyperparameters + ``extra``, e.g. the threshold).

    The file is safetensors; its metadata rebuilds the task without the backbone file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    hparams = {**dict(task.hparams), "backbone": None}
    meta = {_META_KEY: json.dumps(hparams), "extra": json.dumps(extra or {})}
    state = {k: v.detach().cpu().contiguous() for k, v in task.model.state_dict().items()}
    save_file(state, str(path), metadata=meta)
    return path


def load_change_model(path: str | Path) -> tuple[ChangeTask, dict[str, Any]]:
    """Rebuild a model written by :func:`save_change_model`; returns it (eval mode) and ``extra``.

    Raises:
        WeightsError: naming ``path`` when it is missing or not a change model, or naming the key
            when its metadata holds more than ``ChangeTask`` arguments (a backbone file, timm options).
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such change model; train one with evaluate_change(out_dir=...)")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            state = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:
        raise WeightsError(f"{path}: not a readable safetensors file ({err})") from err
    if _META_KEY not in meta:
        raise WeightsError(f"{path}: no change-model metadata; it was not written by save_change_model")
    hparams, extra = _json_object(path, meta[_META_KEY]), _json_object(path, meta.get("extra", "{}"))
    _check_saved_hparams(path, hparams)
    try:
        task = ChangeTask(**hparams)
    except WeightsError as err:  # the encoder's metadata (BackboneMeta refuses foreign encoder_kwargs)
        raise WeightsError(f"{path}: {err}") from err
    task.model.load_state_dict(state)
    return task.eval(), extra


def _json_object(path: Path, text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise WeightsError(f"{path}: change-model metadata is not valid JSON ({err}); save the model again "
                           "with save_change_model") from err
    if not isinstance(value, dict):
        raise WeightsError(f"{path}: change-model metadata is not a JSON object; save the model again")
    return value


def _check_saved_hparams(path: Path, hparams: dict[str, Any]) -> None:
    """Refuse metadata that could do more than rebuild the model.

    Only ``ChangeTask`` arguments (and ``BackboneMeta`` fields under ``encoder``) may reach the
    constructor, and no backbone file: the weights are in the change model's own file.
    """
    allowed = set(inspect.signature(ChangeTask.__init__).parameters) - {"self"}
    refused = sorted(set(hparams) - allowed)
    encoder = hparams.get("encoder")
    if isinstance(encoder, dict):
        fields = {f.name for f in dataclasses.fields(BackboneMeta)}
        refused += [f"encoder.{k}" for k in sorted(set(encoder) - fields)]
    elif encoder is not None:
        refused.append("encoder")
    if hparams.get("backbone") is not None:  # save_change_model writes None
        refused.insert(0, "backbone")
    if refused:
        raise WeightsError(
            f"{path}: change-model metadata key(s) {', '.join(map(repr, refused))} refused: a saved change "
            "model rebuilds from ChangeTask's arguments alone, never from another file; remove them, or "
            "save the model again with save_change_model")
