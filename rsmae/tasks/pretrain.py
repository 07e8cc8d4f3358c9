"""``PretrainTask``: MAE and RC-MAE pretraining as one LightningModule.

Every hyperparameter is a plain ``__init__`` argument, so ``LightningCLI`` exposes it and the
checkpoint's ``hyper_parameters`` rebuild the model. The band count, tile size and data statistics
are not typed twice: the CLI links ``in_chans``, ``img_size`` and ``data_info`` from the datamodule
(``link_arguments(..., apply_on="instantiate")``), and :meth:`setup` checks them against the data.

Randomness is restartable: training batch ``n``'s augmentation and masks come from a generator seeded
by ``(seed, rank, n)``, validation masks by ``(seed, rank, batch_idx)``; checkpoints keep the batch
counter and the corpus record: with :class:`~rsmae.data.ResumableDataLoader` a resume is exact.
Integer batches are normalised on the device with ``data_info`` (a batch of a mix of store groups:
with its group's statistics). ``patch_embed="spectral"`` pretrains one encoder for any sensor, also
on stores of different bands, with ``band_dropout`` per batch (:mod:`rsmae.tasks.spectral`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor

from rsmae.augment import RSAugment
from rsmae.data import describe_data, normalize_images
from rsmae.errors import BandError, CheckpointError, ModelConfigError, NonFiniteLossError, WeightsError
from rsmae.models import (
    RCMAE,
    MAEOutput,
    MaskedAutoencoder,
    create_encoder,
    fused_attention_pays,
    mae_decoder_defaults,
    set_bands,
    set_fused_attention,
)
from rsmae.models import teacher_momentum as momentum_schedule
from rsmae.models.weights import BackboneMeta, save_backbone
from rsmae.tasks.init import (
    check_checkpoint,
    checkpoint_hparams,
    corpus_record,
    init_encoder,
    vet_encoder_kwargs,
)
from rsmae.tasks.optim import OPTIMIZERS, task_optimizer
from rsmae.tasks.precision import clip_unscaled
from rsmae.tasks.spectral import (
    batch_bands,
    check_band_dropout,
    check_mixed_bands,
    drop_batch_bands,
    encoder_band_args,
)

__all__ = ["PretrainTask", "export_backbone"]

_logger = logging.getLogger(__name__)
_TRAIN_STREAM, _VAL_STREAM = 0, 1


class PretrainTask(L.LightningModule):
    """Masked-autoencoder pretraining (``method="mae"``) or RC-MAE (``method="rcmae"``).

    Args:
        method: ``"mae"`` or ``"rcmae"`` (EMA teacher + consistency loss).
        preset: Encoder preset (``vit_test``, ``vit_tiny``, ``vit_small``, ``vit_base``, ...).
        patch_size: Patch size in pixels.
        img_size: Input size in pixels (linked from the data's tile size by the CLI).
        in_chans: Number of bands (linked from the data by the CLI).
        encoder_kwargs: Further :func:`~rsmae.models.create_encoder` arguments (``drop_path_rate``;
            ``spectral_embed``: options of the spectral patch embedding).
        patch_embed: ``"conv"`` (fixed bands) or ``"spectral"`` (kernels and decoder outputs generated
            from each band's wavelength: one encoder for any bands).
        band_dropout: ``{"p_keep_min", "p_keep_max"}``: each training batch keeps a random subset of its
            bands, between those fractions (spectral only); ``None``: all bands.
        decoder_dim: Decoder width; default from :func:`~rsmae.models.mae_decoder_defaults`.
        decoder_depth: Decoder blocks; default from the preset.
        decoder_heads: Decoder heads; default from the preset.
        mask_ratio: Fraction of patches hidden from the encoder.
        norm_pix_loss: Reconstruct per-patch normalised pixels.
        gsd_pos_embed: Scale position embeddings by each sample's GSD.
        reference_gsd: GSD at which the scaled embedding equals the fixed one.
        consistency_weight: RC-MAE weight of the teacher-consistency term.
        teacher_momentum: RC-MAE EMA momentum at step 0 (cosine to 1 over the run).
        optimizer: ``"adamw"`` (MAE's), ``"sgd"`` (with ``momentum``) or ``"lamb"`` (timm's LAMB).
        momentum: SGD momentum.
        base_lr: Learning rate per 256 samples: ``lr = base_lr * batch * accumulate * world / 256``.
        min_lr: Learning rate at the end of the cosine.
        weight_decay: AdamW weight decay (not applied to norms, biases, position embeddings, tokens).
        betas: AdamW betas.
        warmup_steps: Linear warmup steps; ``None`` = 5 % of the run.
        dihedral: Augment with a random D4 element.
        rotate_degrees: Largest free rotation (0 = off).
        crop_scale: Area range of the multiscale random resized crop (``None`` = off).
        crop_ratio: Aspect-ratio range of the crop.
        p_rotate: Probability of the free rotation.
        seed: Seed of masks and augmentations.
        fused_attention: Fused SDPA (``True``) or timm's math attention (``False``); ``None`` picks
            the faster for the device at fit start (:func:`~rsmae.models.fused_attention_pays`).
        compile: ``torch.compile`` the model in place at fit start (state-dict keys unchanged);
            pays on long runs, costs tens of seconds of compilation first.
        data_info: Bands, sensor, statistics, GSD of the pretraining data (linked by the CLI);
            travels with the checkpoint and the exported backbone. Its ``mean``/``std`` normalise
            integer (native-dtype) batches on the device.
        init_backbone: Backbone file (``backbone.safetensors``) whose encoder weights start the run
            (continued pretraining), adapted by band name to ``data_info``'s bands; the decoder starts fresh.
    """

    def __init__(
        self,
        method: Literal["mae", "rcmae"] = "mae",
        preset: str = "vit_small",
        patch_size: int = 16,
        img_size: int = 128,
        in_chans: int = 13,
        encoder_kwargs: dict[str, Any] | None = None,
        patch_embed: Literal["conv", "spectral"] = "conv",
        band_dropout: dict[str, float] | None = None,
        decoder_dim: int | None = None,
        decoder_depth: int | None = None,
        decoder_heads: int | None = None,
        mask_ratio: float = 0.75,
        norm_pix_loss: bool = True,
        gsd_pos_embed: bool = False,
        reference_gsd: float = 10.0,
        consistency_weight: float = 1.0,
        teacher_momentum: float = 0.996,
        optimizer: str = "adamw",
        momentum: float = 0.9,
        base_lr: float = 1.5e-4,
        min_lr: float = 0.0,
        weight_decay: float = 0.05,
        betas: tuple[float, float] = (0.9, 0.95),
        warmup_steps: int | None = None,
        dihedral: bool = True,
        rotate_degrees: float = 0.0,
        crop_scale: tuple[float, float] | None = (0.5, 1.0),
        crop_ratio: tuple[float, float] = (3 / 4, 4 / 3),
        p_rotate: float = 0.5,
        seed: int = 0,
        fused_attention: bool | None = None,
        compile: bool = False,
        data_info: dict[str, Any] | None = None,
        init_backbone: str | None = None,
    ) -> None:
        super().__init__()
        if method not in ("mae", "rcmae"):
            raise ModelConfigError(f"method={method!r}; choose 'mae' or 'rcmae'")
        if optimizer not in OPTIMIZERS:
            raise ModelConfigError(f"optimizer={optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
        self.save_hyperparameters()
        self._band_dropout = check_band_dropout(band_dropout, patch_embed)
        encoder = create_encoder(preset, in_chans=in_chans, img_size=img_size, patch_size=patch_size,
                                 **encoder_band_args(patch_embed, data_info),
                                 **vet_encoder_kwargs(encoder_kwargs))  # also a checkpoint's: data
        if init_backbone:
            init_encoder(encoder, init_backbone, data_info, preset=preset, patch_size=patch_size,
                         img_size=img_size)
        decoder = mae_decoder_defaults(preset)
        given = {"decoder_dim": decoder_dim, "decoder_depth": decoder_depth, "decoder_heads": decoder_heads}
        decoder.update({k: v for k, v in given.items() if v is not None})
        mae = MaskedAutoencoder(encoder, **decoder, mask_ratio=mask_ratio, norm_pix_loss=norm_pix_loss,
                                gsd_pos_embed=gsd_pos_embed, reference_gsd=reference_gsd)
        self.model: MaskedAutoencoder | RCMAE = (
            RCMAE(mae, consistency_weight=consistency_weight) if method == "rcmae" else mae
        )
        self.augment = RSAugment(dihedral=dihedral, rotate_degrees=rotate_degrees, crop_scale=crop_scale,
                                 crop_ratio=crop_ratio, p_rotate=p_rotate)
        self.train_batches = 0  # training batches drawn so far: keys their randomness
        self.last_teacher_momentum: float | None = None
        self._total_steps = 1
        self._bad_loss: Tensor | None = None
        self._compiled = False
        self._stats: dict[str | None, tuple[Tensor, Tensor]] = {}  # per store group (None: data_info's)
        self._corpus: list[dict[str, Any]] | None = None  # corpus_record of the stores trained on

    # ------------------------------------------------------------------ parts
    @property
    def student(self) -> MaskedAutoencoder:
        """The MAE being trained (the RC-MAE student, or the MAE itself)."""
        return self.model.student if isinstance(self.model, RCMAE) else self.model

    def encoder(self, weights: Literal["student", "teacher"] = "student") -> VisionTransformer:
        """The student's or (RC-MAE only) the teacher's encoder."""
        if weights == "teacher":
            if not isinstance(self.model, RCMAE):
                raise ValueError("only RC-MAE has a teacher; export the student of an MAE")
            return self.model.teacher.encoder
        return self.student.encoder

    def backbone_meta(self, weights: Literal["student", "teacher"] = "student") -> BackboneMeta:
        """:class:`~rsmae.models.weights.BackboneMeta` of the chosen encoder and the pretraining data."""
        info = self.hparams.get("data_info")
        if not info:
            raise WeightsError("no data_info: the task was built without its data; its bands are unknown")
        hp = self.hparams
        return BackboneMeta(
            preset=hp.preset, img_size=hp.img_size, patch_size=hp.patch_size, in_chans=hp.in_chans,
            bands=list(info["bands"]), sensor=info.get("sensor"), mean=info.get("mean"),
            std=info.get("std"), gsd=info.get("gsd"), encoder_kwargs=dict(hp.encoder_kwargs or {}),
            gsd_pos_embed=bool(hp.gsd_pos_embed), reference_gsd=float(hp.reference_gsd),
            patch_embed=hp.get("patch_embed") or "conv",
            source=f"rsmae {hp.method} pretraining, {weights} encoder, global step {self.global_step}"
            + (f", started from {hp.init_backbone}" if hp.get("init_backbone") else ""),
        )

    def _generator(self, stream: int, index: int) -> torch.Generator:
        """A CPU generator keyed by (seed, stream, rank, index): restartable and rank-distinct."""
        key = [self.hparams.seed, stream, self.global_rank, index]
        state = np.random.SeedSequence(key).generate_state(2, np.uint32)
        return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))

    # ------------------------------------------------------------------ hooks
    def setup(self, stage: str) -> None:
        """Check the model against the data the trainer loads (bands, tile size); fill ``data_info``."""
        datamodule = getattr(self.trainer, "datamodule", None)
        dataset = getattr(datamodule, "train_set", None)
        if dataset is None:
            return
        mixed = getattr(datamodule, "mixed", False)  # stores of several band sets: batches of one group each
        if mixed:
            check_mixed_bands(datamodule.data_info, self.hparams.get("patch_embed") or "conv")
        if len(dataset.bands) != self.hparams.in_chans:
            raise BandError(f"the data have {len(dataset.bands)} bands {dataset.bands} but the model was "
                            f"built for in_chans={self.hparams.in_chans}; link in_chans from the data")
        if dataset.tile_size != self.hparams.img_size:
            raise ValueError(f"the data's tiles are {dataset.tile_size} px but the model was built for "
                             f"img_size={self.hparams.img_size}; link img_size from the data")
        info = self.hparams.get("data_info")
        if info and list(info["bands"]) != list(dataset.bands):
            raise BandError(f"the data's bands {dataset.bands} differ from the model's {info['bands']}; "
                            "resume and fine-tune only on data with the same bands in the same order")
        if not info:
            self.hparams["data_info"] = info = datamodule.data_info if mixed else describe_data(dataset)
        if self.student.bands is None and self.hparams.get("patch_embed") == "spectral":
            set_bands(self.model, info["bands"], sensor=info.get("sensor"))
        self._stats = {}
        self._corpus = corpus_record(datamodule.stores) if getattr(datamodule, "stores", None) else None

    def on_fit_start(self) -> None:
        """Choose the attention kernel for the device; compile the model if asked."""
        fused = self.hparams.fused_attention
        fused = fused_attention_pays(self.device) if fused is None else fused
        layers = set_fused_attention(self.model, fused)
        _logger.info("attention: %s in %d layers", "fused SDPA" if fused else "math", layers)
        if self.hparams.compile and not self._compiled:
            self.model.compile()
            self._compiled = True

    def normalize(self, images: Tensor, batch: dict[str, Any] | None = None) -> Tensor:
        """Integer images normalised with a mixed ``batch``'s group statistics, else ``data_info``'s.

        Raises:
            ValueError: The images are integers and ``data_info`` has no ``mean``/``std``.
        """
        if images.is_floating_point():  # statistics kept on the images' device, per store group
            return images
        group = (batch or {}).get("group") if (batch or {}).get("mean") is not None else None
        stats = self._stats.get(group)
        if stats is None or stats[0].device != images.device:
            info = batch if group is not None else self.hparams.get("data_info") or {}
            if info.get("mean") is None or info.get("std") is None:
                raise ValueError(f"the batch holds {images.dtype} images but the task has no data_info "
                                 "mean/std to normalise them; pass data_info=datamodule.data_info (the "
                                 "CLI links it) or use TileDataModule(native=False)")
            kw = {"dtype": torch.float32, "device": images.device}
            stats = self._stats[group] = torch.tensor(info["mean"], **kw), torch.tensor(info["std"], **kw)
        return normalize_images(images, *stats)

    def on_after_batch_transfer(self, batch: dict[str, Any], dataloader_idx: int) -> dict[str, Any]:
        """Normalise integer images (every batch); augment training batches and draw their masks."""
        batch = {**batch, "image": self.normalize(batch["image"], batch)}
        if self._trainer is None or not self.trainer.training:
            return batch
        generator = self._generator(_TRAIN_STREAM, self.train_batches)
        self.train_batches += 1
        batch = self.augment(batch, generator=generator)
        noise = self.student.make_noise(batch["image"].shape[0], generator=generator)
        if self._band_dropout:  # drawn last: augmentations and masks as without dropout
            bands = batch.get("bands") or self.hparams.data_info["bands"]  # a mixed batch names its own
            batch = drop_batch_bands(batch, list(bands), generator, self._band_dropout)
        return {**batch, "mask_noise": noise.to(batch["image"].device)}

    def _shared_step(self, batch: dict[str, Any], batch_idx: int, stage: str) -> MAEOutput:
        images = batch["image"]
        noise = batch.get("mask_noise")
        if noise is None:  # validation: the same masks every epoch
            generator = self._generator(_VAL_STREAM, batch_idx)
            noise = self.student.make_noise(images.shape[0], generator=generator).to(images.device)
        gsd = batch["gsd"].float() if self.hparams.gsd_pos_embed else None
        with batch_bands(self.model, batch, spectral=self.hparams.get("patch_embed") == "spectral"):
            out = self.model(images, noise=noise, gsd=gsd)
        train = stage == "train"
        kwargs = {"on_step": train, "on_epoch": not train, "sync_dist": not train, "batch_size": len(images)}
        self.log(f"{stage}/loss", out.loss, prog_bar=True, **kwargs)
        self.log(f"{stage}/recon_loss", out.recon_loss, **kwargs)
        for key, v in (("consistency_loss", out.consistency_loss), ("teacher_recon_loss", out.teacher_loss)):
            if v is not None:  # RC-MAE only
                self.log(f"{stage}/{key}", v, **kwargs)
        return out

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        """One training batch; non-finite losses are remembered for the check before the step."""
        out = self._shared_step(batch, batch_idx, "train")
        bad = ~torch.isfinite(out.loss.detach())
        self._bad_loss = bad if self._bad_loss is None else self._bad_loss | bad
        return out.loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        """One validation batch with fixed masks."""
        self._shared_step(batch, batch_idx, "val")

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Refuse to step on a non-finite loss or gradient, on every rank at once (no hang)."""
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        norm = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros((), device=self.device)
        bad_loss = self._bad_loss if self._bad_loss is not None else torch.zeros((), dtype=torch.bool)
        self._bad_loss = None
        local = bool(bad_loss.to(norm.device) | ~torch.isfinite(norm))
        if self.trainer.strategy.reduce_boolean_decision(local, all=False):
            raise NonFiniteLossError(self._nonfinite_message(bool(bad_loss), float(norm)))
        self.log("train/grad_norm", norm, on_step=True, on_epoch=False)

    def _nonfinite_message(self, loss_bad: bool, norm: float) -> str:
        what = "loss" if loss_bad else f"gradient (norm {norm})"
        where = getattr(self.trainer.checkpoint_callback, "dirpath", None)  # None without the callback
        last = f"the last good checkpoint is in {where}" if where else "no checkpoint callback is configured"
        return (f"the training {what} became non-finite at global step {self.global_step} (no optimiser "
                f"step was taken); {last}. Resume with --ckpt_path last after lowering model.base_lr, "
                "setting trainer.gradient_clip_val or using trainer.precision 32-true")

    def configure_gradient_clipping(self, optimizer: torch.optim.Optimizer,
                                    gradient_clip_val: float | None = None,
                                    gradient_clip_algorithm: str | None = None) -> None:
        """Clip as Lightning does; under bf16 autocast here (:func:`~rsmae.tasks.precision.clip_unscaled`)."""
        plugin = self.trainer.precision_plugin
        if not clip_unscaled(plugin, optimizer, gradient_clip_val, gradient_clip_algorithm):
            super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def optimizer_step(
        self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Any = None
    ) -> None:
        """Step, then (RC-MAE) move the teacher with the momentum of this global step."""
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        if isinstance(self.model, RCMAE):
            # global_step still counts the steps before this one here (0-based index of this step)
            base = self.hparams.teacher_momentum
            momentum = momentum_schedule(self.global_step, self._total_steps, base=base)
            self.model.update_teacher(momentum)
            self.last_teacher_momentum = momentum
            self.log("train/teacher_momentum", momentum, on_step=True, on_epoch=False)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Save the batch counter that keys the training randomness and the corpus record."""
        checkpoint["rsmae_train_batches"], checkpoint["rsmae_corpus"] = self.train_batches, self._corpus
        if checkpoint.get("hyper_parameters", {}).get("init_backbone"):  # the weights are in the checkpoint:
            checkpoint["hyper_parameters"]["init_backbone"] = None  # rebuilding it must not need that file

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore the batch counter; refuse another model or changed stores, before the weights load."""
        check_checkpoint(self._trainer and self._trainer.ckpt_path, checkpoint, self.hparams, self._corpus)
        self.train_batches = int(checkpoint.get("rsmae_train_batches", 0))

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self) -> dict[str, Any]:
        """AdamW at ``base_lr * effective_batch / 256``, warmup + cosine per step, no decay on 1-D."""
        config, self._total_steps = task_optimizer(self.model, self.hparams, self.trainer, self.device)
        return config


def export_backbone(checkpoint: str | Path, out: str | Path,
                    weights: Literal["student", "teacher"] = "student") -> Path:
    """Write the encoder of a :class:`PretrainTask` checkpoint as a backbone file.

    Args:
        checkpoint: Lightning checkpoint (``last.ckpt``...).
        out: Output ``.safetensors`` path.
        weights: ``"student"`` or (RC-MAE) ``"teacher"``; recorded in the metadata's ``source``.

    Returns:
        The written path.

    Raises:
        CheckpointError: naming ``checkpoint`` when it is not a pretraining checkpoint, or
            ``weights="teacher"`` for an MAE (only RC-MAE has a teacher).
        WeightsError: when ``out`` cannot be written.
    """
    hp = checkpoint_hparams(checkpoint)
    if weights == "teacher" and hp["method"] != "rcmae":
        raise CheckpointError(f"{checkpoint}: a method={hp['method']} checkpoint has no teacher (only RC-MAE "
                              "has one); export its student (--weights student)")
    task = PretrainTask.load_from_checkpoint(checkpoint, map_location="cpu", weights_only=True)
    meta = task.backbone_meta(weights)
    meta.source += f" ({Path(checkpoint).name})"
    return save_backbone(task.encoder(weights), out, meta)
