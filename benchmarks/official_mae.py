"""Baseline for the speed benchmark: the code path of the official MAE / RC-MAE, any band count.

A re-implementation (written for this benchmark, not copied) of the structure of
facebookresearch/mae ``models_mae.py`` and youngwanLEE/rc-mae ``engine_pretrain.py``:

- the patch embedding runs over *all* patches, the position table is added to all of them, then
  the visible tokens are gathered with ``torch.gather`` on a ``repeat``-ed index;
- the binary mask is built as ones, zeroed for the kept slots, and unshuffled with a gather;
- timm ``Block`` s with the non-fused attention path (``fused_attn = False``: explicit
  ``q @ k^T``, softmax, ``@ v``);
- mask tokens are ``repeat``-ed, unshuffled with a gather, the decoder runs over all tokens and
  its head predicts all patches;
- the loss is computed over all patches, then masked;
- RC-MAE: the teacher (eval mode, no grad) gets the same shuffle; the EMA update is a Python loop
  of ``mul_``/``add_`` per parameter; the optimiser is ``torch.optim.AdamW`` with default options.

Parameter names match :class:`rsmae.models.MaskedAutoencoder` once its ``encoder.`` prefix is
stripped, so the same weights can be loaded in both and the losses compared.
"""

from __future__ import annotations

import copy

import torch
from timm.layers import PatchEmbed
from timm.models.vision_transformer import Block
from torch import Tensor, nn

from rsmae.models.vit import sincos_pos_embed_2d


class OfficialMAE(nn.Module):
    """MAE with the official code path (see module docstring)."""

    def __init__(
        self,
        img_size: int = 128,
        patch_size: int = 16,
        in_chans: int = 13,
        embed_dim: int = 384,
        depth: int = 12,
        num_heads: int = 6,
        decoder_dim: int = 256,
        decoder_depth: int = 4,
        decoder_heads: int = 8,
        norm_pix_loss: bool = True,
    ) -> None:
        super().__init__()
        self.patch_size, self.in_chans, self.norm_pix_loss = patch_size, in_chans, norm_pix_loss
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        n = self.patch_embed.num_patches
        grid = self.patch_embed.grid_size
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, n + 1, embed_dim), requires_grad=False)
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, 4.0, qkv_bias=True) for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.decoder_embed = nn.Linear(embed_dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        self.decoder_pos_embed = nn.Parameter(torch.zeros(1, n + 1, decoder_dim), requires_grad=False)
        self.decoder_blocks = nn.ModuleList(
            Block(decoder_dim, decoder_heads, 4.0, qkv_bias=True) for _ in range(decoder_depth)
        )
        self.decoder_norm = nn.LayerNorm(decoder_dim, eps=1e-6)
        self.decoder_pred = nn.Linear(decoder_dim, patch_size**2 * in_chans)
        with torch.no_grad():
            self.pos_embed[0, 1:] = sincos_pos_embed_2d(*grid, embed_dim)
            self.decoder_pos_embed[0, 1:] = sincos_pos_embed_2d(*grid, decoder_dim)
        for m in self.modules():
            if hasattr(m, "fused_attn"):
                m.fused_attn = False

    def patchify(self, imgs: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, N, P*P*C)."""
        p, c = self.patch_size, imgs.shape[1]
        h, w = imgs.shape[2] // p, imgs.shape[3] // p
        x = imgs.reshape(imgs.shape[0], c, h, p, w, p)
        x = torch.einsum("nchpwq->nhwpqc", x)
        return x.reshape(imgs.shape[0], h * w, p * p * c)

    def random_masking(self, x: Tensor, mask_ratio: float, noise: Tensor) -> tuple:
        """Gather the kept tokens; binary mask and inverse permutation."""
        n, length, d = x.shape
        len_keep = int(length * (1 - mask_ratio))
        ids_shuffle = torch.argsort(noise, dim=1)
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        ids_keep = ids_shuffle[:, :len_keep]
        x_masked = torch.gather(x, dim=1, index=ids_keep.unsqueeze(-1).repeat(1, 1, d))
        mask = torch.ones([n, length], device=x.device)
        mask[:, :len_keep] = 0
        mask = torch.gather(mask, dim=1, index=ids_restore)
        return x_masked, mask, ids_restore

    def forward_encoder(self, x: Tensor, mask_ratio: float, noise: Tensor) -> tuple:
        """Embed all patches, keep the visible ones, encode."""
        x = self.patch_embed(x)
        x = x + self.pos_embed[:, 1:, :]
        x, mask, ids_restore = self.random_masking(x, mask_ratio, noise)
        cls_token = self.cls_token + self.pos_embed[:, :1, :]
        x = torch.cat((cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x), mask, ids_restore

    def forward_decoder(self, x: Tensor, ids_restore: Tensor) -> Tensor:
        """Decode all tokens, predict all patches."""
        x = self.decoder_embed(x)
        mask_tokens = self.mask_token.repeat(x.shape[0], ids_restore.shape[1] + 1 - x.shape[1], 1)
        x_ = torch.cat([x[:, 1:, :], mask_tokens], dim=1)
        x_ = torch.gather(x_, dim=1, index=ids_restore.unsqueeze(-1).repeat(1, 1, x.shape[2]))
        x = torch.cat([x[:, :1, :], x_], dim=1)
        x = x + self.decoder_pos_embed
        for blk in self.decoder_blocks:
            x = blk(x)
        x = self.decoder_norm(x)
        x = self.decoder_pred(x)
        return x[:, 1:, :]

    def forward_loss(self, imgs: Tensor, pred: Tensor, mask: Tensor) -> Tensor:
        """Loss over all patches, then masked."""
        target = self.patchify(imgs)
        if self.norm_pix_loss:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1.0e-6) ** 0.5
        loss = (pred - target) ** 2
        loss = loss.mean(dim=-1)
        return (loss * mask).sum() / mask.sum()

    def forward(
        self, imgs: Tensor, mask_ratio: float = 0.75, noise: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Loss, prediction and mask."""
        if noise is None:
            noise = torch.rand(imgs.shape[0], self.patch_embed.num_patches, device=imgs.device)
        latent, mask, ids_restore = self.forward_encoder(imgs, mask_ratio, noise)
        pred = self.forward_decoder(latent, ids_restore)
        return self.forward_loss(imgs, pred, mask), pred, mask


class OfficialRCMAE(nn.Module):
    """RC-MAE with the official code path: student, EMA teacher in eval mode, same shuffle."""

    def __init__(self, student: OfficialMAE, gamma: float = 1.0) -> None:
        super().__init__()
        self.student, self.gamma = student, gamma
        self.teacher = copy.deepcopy(student)
        for p in self.teacher.parameters():
            p.requires_grad = False

    def forward(self, imgs: Tensor, mask_ratio: float = 0.75, noise: Tensor | None = None) -> Tensor:
        """Student loss plus gamma x consistency with the teacher on masked patches."""
        if noise is None:
            noise = torch.rand(imgs.shape[0], self.student.patch_embed.num_patches)
        s_loss, s_pred, s_mask = self.student(imgs, mask_ratio, noise)
        with torch.no_grad():
            self.teacher.eval()
            latent, _, ids_restore = self.teacher.forward_encoder(imgs, mask_ratio, noise)
            t_pred = self.teacher.forward_decoder(latent, ids_restore)
        cons = ((s_pred - t_pred.detach()) ** 2).mean(dim=-1)
        cons = (cons * s_mask).sum() / s_mask.sum()
        return s_loss + self.gamma * cons

    @torch.no_grad()
    def update_teacher(self, momentum: float) -> None:
        """EMA step, one parameter at a time."""
        for param_q, param_k in zip(self.student.parameters(), self.teacher.parameters(), strict=True):
            param_k.data.mul_(momentum).add_((1 - momentum) * param_q.detach().data)
