"""Change-detection models: a Siamese ViT with a light multi-scale decoder, the FC-Siam-diff U-Net.

Both take a pair ``(B, 2, C, H, W)`` (torchgeo's ``(B, T, C, H, W)``) and return change logits
``(B, H, W)``.

:class:`SiameseViT` runs one timm ``VisionTransformer`` (one parameter set) on both dates at once
(the dates stacked on the batch axis), takes features from several depths with timm's
``forward_intermediates``, fuses each level by difference (``|f1 - f2|`` and ``f2 - f1``) or by
concatenation, and decodes them ViTDet/UPerNet-style: each level is projected and resampled to its
own stride (4, 8, 16, 32 px for four levels), merged top-down as in an FPN, fused at the finest
stride and upsampled progressively (x2 per stage) back to full resolution.

:class:`FCSiamDiff` is Caye Daudt et al. (2018)'s fully convolutional Siamese U-Net whose skips
carry ``|f1 - f2|``: the from-scratch baseline every change table needs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

__all__ = ["FCSiamDiff", "SiameseViT", "change_loss", "feature_indices"]

Fusion = Literal["diff", "concat"]


def feature_indices(depth: int, levels: int = 4) -> list[int]:
    """Evenly spaced block indices, the last block included (``depth=12`` -> ``[2, 5, 8, 11]``)."""
    levels = max(1, min(levels, depth))
    return sorted({round((i + 1) * depth / levels) - 1 for i in range(levels)})


def _conv(cin: int, cout: int, k: int = 3) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


def fuse(f1: Tensor, f2: Tensor, fusion: Fusion) -> Tensor:
    """``cat(|f1 - f2|, f2 - f1)`` (``"diff"``) or ``cat(f1, f2)`` (``"concat"``) on channels."""
    if fusion == "diff":
        return torch.cat([(f1 - f2).abs(), f2 - f1], dim=1)
    if fusion == "concat":
        return torch.cat([f1, f2], dim=1)
    raise ValueError(f"fusion={fusion!r}; choose 'diff' or 'concat'")


class SiameseViT(nn.Module):
    """A shared-weight ViT on both dates, fused multi-level features, a light FPN decoder.

    Args:
        encoder: A timm ``VisionTransformer`` (e.g. :func:`rsmae.load_backbone`); its patch size
            must be a power of two.
        fusion: ``"diff"`` or ``"concat"``.
        indices: Block indices whose outputs are decoded; default four evenly spaced, the last
            block included (:func:`feature_indices`).
        decoder_dim: Width of the decoder at the feature strides (halved per upsampling stage,
            at least 16).
    """

    def __init__(self, encoder: VisionTransformer, fusion: Fusion = "diff",
                 indices: Sequence[int] | None = None, decoder_dim: int = 64) -> None:
        super().__init__()
        fuse(torch.zeros(1, 1), torch.zeros(1, 1), fusion)  # validate early
        self.encoder, self.fusion = encoder, fusion
        depth = len(encoder.blocks)
        self.indices = list(indices) if indices is not None else feature_indices(depth)
        if not self.indices or any(i < 0 or i >= depth for i in self.indices):
            raise ValueError(f"feature indices {self.indices} must lie in 0..{depth - 1}")
        patch = encoder.patch_embed.patch_size[0]
        if patch & (patch - 1):
            raise ValueError(f"patch size {patch} is not a power of two; the decoder upsamples by 2")
        levels, dim = len(self.indices), encoder.embed_dim
        # level i (shallow -> deep) gets scale 2^(levels - 2 - i): strides patch/4 ... patch*2
        self.scales = [2.0 ** (levels - 2 - i) for i in range(levels)]
        self.lateral = nn.ModuleList(self._resample(2 * dim, decoder_dim, s) for s in self.scales)
        self.fuse_conv = _conv(levels * decoder_dim, decoder_dim)
        finest = patch / max(self.scales)
        stages = []
        width = decoder_dim
        for _ in range(max(0, round(math.log2(finest)))):
            stages.append(_conv(width, max(width // 2, 16)))
            width = max(width // 2, 16)
        self.up = nn.ModuleList(stages)
        self.head = nn.Conv2d(width, 1, 1)

    @staticmethod
    def _resample(cin: int, cout: int, scale: float) -> nn.Module:
        layers: list[nn.Module] = [_conv(cin, cout, 1)]
        if scale > 1:
            layers += [nn.Upsample(scale_factor=scale, mode="bilinear", align_corners=False),
                       _conv(cout, cout)]
        elif scale < 1:
            layers.append(nn.MaxPool2d(round(1 / scale)))
        return nn.Sequential(*layers)

    def features(self, pair: Tensor) -> list[Tensor]:
        """Fused features per level, ``(B, 2 * embed_dim, h, w)``, both dates in one encoder call."""
        b = pair.shape[0]
        stacked = pair.transpose(0, 1).flatten(0, 1)  # (2B, C, H, W): date 1 then date 2
        feats = self.encoder.forward_intermediates(stacked, indices=self.indices, stop_early=True,
                                                   intermediates_only=True)
        return [fuse(f[:b], f[b:], self.fusion) for f in feats]

    def forward(self, pair: Tensor) -> Tensor:
        """Change logits ``(B, H, W)`` for pairs ``(B, 2, C, H, W)``."""
        height, width = pair.shape[-2:]
        levels = [lat(f) for lat, f in zip(self.lateral, self.features(pair), strict=True)]
        for i in range(len(levels) - 2, -1, -1):  # FPN top-down: deep context into fine levels
            levels[i] = levels[i] + F.interpolate(levels[i + 1], size=levels[i].shape[-2:], mode="bilinear",
                                                  align_corners=False)
        size = levels[0].shape[-2:]
        x = self.fuse_conv(torch.cat([F.interpolate(v, size=size, mode="bilinear", align_corners=False)
                                      if v.shape[-2:] != size else v for v in levels], dim=1))
        for stage in self.up:
            x = stage(F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False))
        x = self.head(x)
        if x.shape[-2:] != (height, width):
            x = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False)
        return x[:, 0]


class FCSiamDiff(nn.Module):
    """FC-Siam-diff (Caye Daudt et al., 2018): a Siamese U-Net whose skips are ``|f1 - f2|``.

    Four encoder stages (16, 32, 64, 128 channels; two or three 3x3 conv-BN-ReLU-dropout each,
    max-pooling between) shared by both dates; the decoder upsamples with transposed convolutions
    and concatenates the absolute difference of the dates' skip features. About 1.35 M parameters.
    Inputs of any size (padded to a multiple of 16 inside).

    Args:
        in_chans: Bands per date.
        dropout: Dropout after every convolution (0.2 in the paper).
    """

    widths = (16, 32, 64, 128)
    convs = (2, 2, 3, 3)

    def __init__(self, in_chans: int, dropout: float = 0.2) -> None:
        super().__init__()
        self.encoder = nn.ModuleList()
        cin = in_chans
        for width, n in zip(self.widths, self.convs, strict=True):
            self.encoder.append(self._block([cin] + [width] * n, dropout))
            cin = width
        self.upconv = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for i in range(len(self.widths) - 1, -1, -1):
            width, n = self.widths[i], self.convs[i]
            self.upconv.append(nn.ConvTranspose2d(cin, cin, 3, stride=2, padding=1, output_padding=1))
            out = self.widths[i - 1] if i > 0 else self.widths[0]
            self.decoder.append(self._block([cin + width] + [width] * (n - 1) + [out], dropout))
            cin = out
        self.head = nn.Conv2d(cin, 1, 1)

    @staticmethod
    def _block(channels: list[int], dropout: float) -> nn.Sequential:
        layers: list[nn.Module] = []
        for cin, cout in zip(channels[:-1], channels[1:], strict=True):
            layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                       nn.Dropout2d(dropout)]
        return nn.Sequential(*layers)

    def _encode(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        skips = []
        for block in self.encoder:
            x = block(x)
            skips.append(x)
            x = F.max_pool2d(x, 2)
        return x, skips

    def forward(self, pair: Tensor) -> Tensor:
        """Change logits ``(B, H, W)`` for pairs ``(B, 2, C, H, W)``."""
        height, width = pair.shape[-2:]
        ph, pw = -height % 16, -width % 16
        if ph or pw:
            pair = F.pad(pair.flatten(1, 2), (0, pw, 0, ph), mode="replicate").unflatten(1, pair.shape[1:3])
        b = pair.shape[0]
        x, skips = self._encode(pair.transpose(0, 1).flatten(0, 1))  # both dates in one call
        x = x[b:]  # the deepest features of date 2 start the decoder, as in the paper
        for up, block, skip in zip(self.upconv, self.decoder, reversed(skips), strict=True):
            x = block(torch.cat([up(x), (skip[:b] - skip[b:]).abs()], dim=1))
        return self.head(x)[:, 0, :height, :width]


def change_loss(logits: Tensor, mask: Tensor, *, pos_weight: float = 1.0, dice_weight: float = 0.0,
                ignore_index: int = 255) -> Tensor:
    """BCE with a positive-class weight, plus optionally soft Dice, over labelled pixels only.

    Args:
        logits: ``(B, H, W)`` change logits.
        mask: ``(B, H, W)`` integer labels (1 change, 0 no change, ``ignore_index`` unlabelled).
        pos_weight: Weight of change pixels in the BCE (e.g. no-change / change pixel ratio, or
            its square root, for 1-4 % change).
        dice_weight: Weight of the soft-Dice term of the change class (0 = BCE only).
        ignore_index: Label of pixels left out.

    Returns:
        The scalar loss (0, still differentiable, when no pixel is labelled).
    """
    valid = mask != ignore_index
    if not bool(valid.any()):
        return logits.sum() * 0.0
    x = logits[valid]
    target = mask[valid].to(x.dtype)
    weight = torch.tensor(pos_weight, dtype=x.dtype, device=x.device)
    loss = F.binary_cross_entropy_with_logits(x, target, pos_weight=weight)
    if dice_weight:
        prob = torch.sigmoid(x)
        dice = 1 - (2 * (prob * target).sum() + 1) / (prob.sum() + target.sum() + 1)
        loss = loss + dice_weight * dice
    return loss
