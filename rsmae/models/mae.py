"""Masked autoencoder (He et al. 2021) around a plain timm ``VisionTransformer``, any band count.

The encoder sees the cls token and the visible patches only, and only the visible patches are
embedded (:func:`~rsmae.models.patch_embed.embed_patch_tokens`): no work is spent on the 75 % that
are hidden. The decoder is light: a projection, learned mask tokens, a fixed sin-cos position
table, a few timm ``Block`` s and a linear head to ``P * P * C`` pixel values per patch. With a
spectral encoder (``create_encoder(..., patch_embed="spectral")``) the batch may hold any bands
(:func:`~rsmae.models.spectral_embed.use_bands`) and the head is a
:class:`~rsmae.models.spectral_head.SpectralPatchHead`: ``P * P`` values per band of the batch, from
weights generated from each band's wavelength.

Everything that is random is explicit: pass ``noise`` (from :meth:`MaskedAutoencoder.make_noise`
with a seeded ``torch.Generator``) and the same weights and batch give the same loss, as loss
landscapes and Hessians need. Forward mutates no state, so ``torch.func.functional_call`` works;
attention is timm's, fused SDPA or the plain math path (:func:`~rsmae.models.vit.set_fused_attention`,
which also gives double backward).

Every encoder preset with its decoder of :data:`MAE_DECODER_PRESETS` is a timm-registered model
``rsmae_mae_<preset>`` (``timm.create_model("rsmae_mae_vit_small", in_chans=13)``); with
``pretrained=True`` and ``pretrained_cfg_overlay=dict(file=...)`` its encoder starts from that file
and the decoder from scratch (continued pretraining).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from timm.layers import LayerNorm
from timm.models import checkpoint_seq
from timm.models.vision_transformer import Block, VisionTransformer
from torch import Tensor, nn

from rsmae.errors import BandError, ModelConfigError
from rsmae.models.layers import sincos_pos_embed_2d
from rsmae.models.masking import masked_mse, random_masking
from rsmae.models.masking import take_tokens as _take
from rsmae.models.patch_embed import embed_patch_tokens, patchify, unpatchify
from rsmae.models.spectral_embed import SpectralPatchEmbed
from rsmae.models.spectral_head import SpectralPatchHead

__all__ = [
    "MAE_DECODER_PRESETS",
    "MAEOutput",
    "MaskedAutoencoder",
    "mae_decoder_defaults",
    "masked_mse",
    "patchify",
    "random_masking",
    "unpatchify",
]

# Decoder sizes per encoder preset (width x depth x heads). vit_small follows the reference
# config of METHOD.md (4 x 256), vit_base/large the MAE paper (8 x 512, 16 heads).
MAE_DECODER_PRESETS: dict[str, dict[str, int]] = {
    "vit_test": {"decoder_dim": 32, "decoder_depth": 1, "decoder_heads": 2},
    "vit_tiny": {"decoder_dim": 128, "decoder_depth": 2, "decoder_heads": 4},
    "vit_small": {"decoder_dim": 256, "decoder_depth": 4, "decoder_heads": 8},
    "vit_base": {"decoder_dim": 512, "decoder_depth": 8, "decoder_heads": 16},
    "vit_large": {"decoder_dim": 512, "decoder_depth": 8, "decoder_heads": 16},
}


@dataclass
class MAEOutput:
    """What an MAE / RC-MAE forward returns.

    Attributes:
        loss: Scalar to backpropagate.
        pred: ``(B, N, P*P*C)`` decoder output for all patches.
        target: ``(B, N, P*P*C)`` pixels (per-patch normalised if ``norm_pix_loss``).
        mask: ``(B, N)`` float, 1 = masked (hidden from the encoder), 0 = visible.
        recon_loss: MSE on masked patches (equals ``loss`` for a plain MAE).
        consistency_loss: RC-MAE only: MSE between student and teacher on masked patches.
        teacher_loss: RC-MAE only: the teacher's own reconstruction loss (no gradient).
    """

    loss: Tensor
    pred: Tensor
    target: Tensor
    mask: Tensor
    recon_loss: Tensor
    consistency_loss: Tensor | None = None
    teacher_loss: Tensor | None = None


def mae_decoder_defaults(preset: str) -> dict[str, int]:
    """Decoder width, depth and heads for an encoder preset.

    Args:
        preset: Encoder preset name (``"vit_small"``...).

    Returns:
        ``{"decoder_dim", "decoder_depth", "decoder_heads"}``, ready for ``**`` into
        :class:`MaskedAutoencoder`.
    """
    if preset not in MAE_DECODER_PRESETS:
        known = ", ".join(MAE_DECODER_PRESETS)
        raise ModelConfigError(f"no decoder defaults for preset {preset!r}; choose one of {known}")
    return dict(MAE_DECODER_PRESETS[preset])


class MaskedAutoencoder(nn.Module):
    """MAE wrapping a timm ``VisionTransformer`` encoder (attribute ``encoder``).

    Args:
        encoder: A timm ViT with a class token, e.g. from
            :func:`~rsmae.models.vit.create_encoder` (fixed sin-cos ``pos_embed``).
        decoder_dim: Decoder width (divisible by 4 and by ``decoder_heads``).
        decoder_depth: Number of decoder blocks.
        decoder_heads: Decoder attention heads.
        mask_ratio: Default fraction of patches hidden from the encoder.
        norm_pix_loss: Reconstruct per-patch normalised pixels (mean 0, unit variance over the
            patch's ``P*P*C`` values, unbiased variance and eps 1e-6 as in the official code).
        gsd_pos_embed: Accept a per-sample ``gsd`` in forward and scale the sin-cos position
            coordinates of encoder and decoder by ``gsd / reference_gsd``.
        reference_gsd: GSD (metres per pixel) at which the scaled table equals the fixed one.
    """

    def __init__(
        self,
        encoder: VisionTransformer,
        *,
        decoder_dim: int = 512,
        decoder_depth: int = 8,
        decoder_heads: int = 16,
        mask_ratio: float = 0.75,
        norm_pix_loss: bool = True,
        gsd_pos_embed: bool = False,
        reference_gsd: float = 10.0,
    ) -> None:
        super().__init__()
        _check_encoder(encoder)
        if decoder_dim % 4 or decoder_dim % decoder_heads:
            raise ValueError(
                f"decoder_dim={decoder_dim} must be divisible by 4 and by decoder_heads={decoder_heads}"
            )
        if reference_gsd <= 0:
            raise ValueError(f"reference_gsd={reference_gsd} must be positive (metres per pixel)")
        self.encoder = encoder
        patch_embed: Any = encoder.patch_embed
        self.patch_size: int = int(patch_embed.patch_size[0])
        self.in_chans: int = int(encoder.in_chans)
        self.grid_size: tuple[int, int] = tuple(patch_embed.grid_size)  # type: ignore[assignment]
        self.num_patches: int = self.grid_size[0] * self.grid_size[1]
        self.num_prefix_tokens: int = int(encoder.num_prefix_tokens)
        self.mask_ratio = mask_ratio
        random_masking(torch.zeros(1, self.num_patches), mask_ratio)  # validates the ratio
        self.norm_pix_loss = norm_pix_loss
        self.gsd_pos_embed = gsd_pos_embed
        self.reference_gsd = float(reference_gsd)
        self.grad_checkpointing = False

        self._build_decoder(encoder.embed_dim, decoder_dim, decoder_depth, decoder_heads)

    def _build_decoder(self, in_dim: int, dim: int, depth: int, heads: int) -> None:
        """Decoder modules with the MAE initialisation (xavier-uniform linears, mask token N(0, .02))."""
        self.decoder_embed = nn.Linear(in_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        table = sincos_pos_embed_2d(*self.grid_size, dim)
        self.register_buffer("decoder_pos_embed", table[None], persistent=False)
        self.decoder_blocks = nn.Sequential(
            *(Block(dim, heads, mlp_ratio=4.0, qkv_bias=True) for _ in range(depth))
        )
        self.decoder_norm = LayerNorm(dim)
        embed = self.encoder.patch_embed
        if isinstance(embed, SpectralPatchEmbed):  # any bands: per-band weights from their wavelengths
            options = {k: v for k, v in embed.config().items() if k != "kernel_size"}
            self.decoder_pred: nn.Module = SpectralPatchHead(dim, self.patch_size, **options)
        else:
            self.decoder_pred = nn.Linear(dim, self.patch_size**2 * self.in_chans)
        nn.init.normal_(self.mask_token, std=0.02)
        linears = [self.decoder_pred] if isinstance(self.decoder_pred, nn.Linear) else []
        for m in [self.decoder_embed, *self.decoder_blocks.modules(), *linears]:
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute encoder and decoder block activations in backward to save memory."""
        self.encoder.set_grad_checkpointing(enable)
        self.grad_checkpointing = enable

    def make_noise(
        self,
        batch_size: int,
        *,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> Tensor:
        """Uniform masking noise ``(batch_size, N)``; seed ``generator`` to fix the masks.

        The noise is drawn on the generator's device (so a seeded CPU generator gives the same
        masks everywhere), then moved to ``device`` (default: the model's device).
        """
        src = generator.device if generator is not None else device
        noise = torch.rand(batch_size, self.num_patches, generator=generator, device=src)
        return noise.to(self.mask_token.device if device is None else device)

    @property
    def bands(self) -> tuple[str, ...] | None:
        """The bands a spectral encoder is set to (:func:`~rsmae.models.use_bands`); ``None``: fixed bands."""
        embed = self.encoder.patch_embed
        return embed.bands if isinstance(embed, SpectralPatchEmbed) else None

    def _check_inputs(self, images: Tensor, noise: Tensor | None, gsd: Tensor | None) -> None:
        chans = len(self.bands or ()) or self.in_chans
        if images.ndim != 4 or images.shape[1] != chans:
            fix = ("set the batch's bands with rsmae.models.use_bands(model, bands)" if self.bands else
                   "build the encoder with in_chans equal to the band count")
            raise BandError(f"images of shape {tuple(images.shape)} do not match the encoder's {chans} "
                            f"bands; pass (B, {chans}, H, W) or {fix}")
        expect = tuple(s * self.patch_size for s in self.grid_size)
        if tuple(images.shape[-2:]) != expect:
            raise ValueError(
                f"images are {tuple(images.shape[-2:])} px but the encoder was built for {expect}; "
                "crop the tiles or build the encoder with img_size matching them"
            )
        if noise is not None and tuple(noise.shape) != (images.shape[0], self.num_patches):
            raise ValueError(
                f"noise has shape {tuple(noise.shape)}, expected "
                f"{(images.shape[0], self.num_patches)}; make it with make_noise()"
            )
        if gsd is not None:
            if not self.gsd_pos_embed:
                raise ValueError("gsd was given but the model has gsd_pos_embed=False")
            if gsd.shape != (images.shape[0],):
                raise ValueError(f"gsd must have shape (B,), got {tuple(gsd.shape)}")
            if not bool(torch.isfinite(gsd).all() & (gsd > 0).all()):
                raise ValueError("gsd must be finite and positive (metres per pixel)")

    def _pos_tables(self, gsd: Tensor | None, width: int) -> Tensor | None:
        """Per-sample ``(B, N, width)`` sin-cos tables for ``gsd``, or ``None`` (fixed table)."""
        if gsd is None:
            return None
        scale = gsd.detach() / self.reference_gsd
        return sincos_pos_embed_2d(*self.grid_size, width, scale=scale)

    def _prefix_and_pos(self, batch: int, gsd: Tensor | None) -> tuple[Tensor, Tensor]:
        """Prefix tokens (cls, registers) with their position embedding; patch position table."""
        enc = self.encoder
        npt = self.num_prefix_tokens
        parts = [t.expand(batch, -1, -1) for t in (enc.cls_token, enc.reg_token) if t is not None]
        prefix = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
        if enc.no_embed_class:
            patch_pos = enc.pos_embed
        else:
            prefix = prefix + enc.pos_embed[:, :npt]
            patch_pos = enc.pos_embed[:, npt:]
        table = self._pos_tables(gsd, enc.embed_dim)
        if table is not None:
            patch_pos = table.to(patch_pos.dtype)
        return prefix, patch_pos

    def forward_encoder(
        self, images: Tensor, noise: Tensor, mask_ratio: float, gsd: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Mask, embed the visible patches and encode them with the prefix tokens.

        Args:
            images: ``(B, C, H, W)``.
            noise: ``(B, N)`` masking noise.
            mask_ratio: Fraction of patches to hide.
            gsd: Optional ``(B,)`` metres per pixel (``gsd_pos_embed`` models).

        Returns:
            ``latent (B, prefix + L, D)`` (prefix = 1 cls token by default), ``mask (B, N)``
            and ``ids_restore (B, N)``.
        """
        self._check_inputs(images, noise, gsd)
        enc = self.encoder
        ids_keep, mask, ids_restore = random_masking(noise.to(images.device), mask_ratio)
        mask = mask.to(images.dtype if images.is_floating_point() else torch.float32)
        x = embed_patch_tokens(enc.patch_embed, images, ids_keep)
        if x is None:  # unknown embedding: embed everything, keep the visible tokens
            x = _take(enc.patch_embed(images), ids_keep)
        prefix, patch_pos = self._prefix_and_pos(images.shape[0], gsd)
        x = torch.cat([prefix, x + _take(patch_pos, ids_keep)], dim=1)
        x = enc.norm_pre(enc.pos_drop(x))
        if enc.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(enc.blocks, x)
        else:
            x = enc.blocks(x)
        return enc.norm(x), mask, ids_restore

    def forward_decoder(self, latent: Tensor, ids_restore: Tensor, gsd: Tensor | None = None) -> Tensor:
        """Reconstruct all patches from the encoded visible ones.

        Args:
            latent: ``(B, prefix + L, D)`` from :meth:`forward_encoder`.
            ids_restore: ``(B, N)`` from :meth:`forward_encoder`.
            gsd: Optional ``(B,)`` metres per pixel (``gsd_pos_embed`` models).

        Returns:
            ``(B, N, P*P*C)`` predicted pixels (of the encoder's current bands for a spectral one).
        """
        npt = self.num_prefix_tokens
        x = self.decoder_embed(latent)
        batch, n = ids_restore.shape
        fill = self.mask_token.to(x.dtype).expand(batch, n - (x.shape[1] - npt), -1)
        tokens = torch.cat([x[:, npt:], fill], dim=1)
        tokens = torch.gather(tokens, 1, ids_restore.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        table = self._pos_tables(gsd, x.shape[-1])
        pos = self.decoder_pos_embed if table is None else table
        x = torch.cat([x[:, :npt], tokens + pos.to(x.dtype)], dim=1)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            x = checkpoint_seq(self.decoder_blocks, x)
        else:
            x = self.decoder_blocks(x)
        x = self.decoder_norm(x[:, npt:])
        if isinstance(self.decoder_pred, SpectralPatchHead):
            return self.decoder_pred(x, self.bands, self.encoder.patch_embed.sensor)
        return self.decoder_pred(x)

    def target(self, images: Tensor) -> Tensor:
        """Reconstruction target ``(B, N, P*P*C)``: patches, per-patch normalised if configured."""
        target = patchify(images, self.patch_size)
        if self.norm_pix_loss:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1e-6).sqrt()
        return target

    def loss(self, images: Tensor, pred: Tensor, mask: Tensor) -> Tensor:
        """MSE between ``pred`` and the target of ``images``, averaged over masked patches."""
        return masked_mse(pred, self.target(images), mask)

    def forward(
        self,
        images: Tensor,
        *,
        noise: Tensor | None = None,
        mask_ratio: float | None = None,
        gsd: Tensor | None = None,
        target: Tensor | None = None,
    ) -> MAEOutput:
        """Mask, encode, decode and score a batch.

        Args:
            images: ``(B, C, H, W)`` normalised bands.
            noise: ``(B, N)`` masking noise; fresh uniform noise when ``None``. Pass it for a
                deterministic loss.
            mask_ratio: Overrides the default ratio for this call.
            gsd: Optional ``(B,)`` metres per pixel (``gsd_pos_embed`` models only).
            target: The reconstruction target of ``images`` when already computed (an RC-MAE
                teacher reuses its student's); default :meth:`target`.

        Returns:
            :class:`MAEOutput` with ``loss == recon_loss``.
        """
        ratio = self.mask_ratio if mask_ratio is None else mask_ratio
        if noise is None:
            noise = self.make_noise(images.shape[0], device=images.device)
        latent, mask, ids_restore = self.forward_encoder(images, noise, ratio, gsd)
        pred = self.forward_decoder(latent, ids_restore, gsd)
        target = self.target(images) if target is None else target
        recon = masked_mse(pred, target, mask)
        return MAEOutput(loss=recon, pred=pred, target=target, mask=mask, recon_loss=recon)


def _check_encoder(encoder: VisionTransformer) -> None:
    """Refuse encoders the MAE cannot drive (no class token, dynamic sizes, no position table)."""
    if encoder.cls_token is None:
        raise ValueError("the MAE needs an encoder with a class token (class_token=True)")
    if encoder.dynamic_img_size:
        raise ValueError("the MAE needs a fixed grid; build the encoder with dynamic_img_size=False")
    if encoder.pos_embed is None:
        raise ValueError("the MAE needs a position table; build the encoder with create_encoder()")
