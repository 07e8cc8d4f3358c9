"""Patches: cutting images into patches, spectral band groups, embedding selected patches only.

:func:`patchify` / :func:`unpatchify` convert between images and flattened patches for any band
count (re-exported by :mod:`rsmae.models.mae`).

:class:`GroupedPatchEmbed` is a drop-in ``embed_layer`` for timm's ``VisionTransformer``: bands are
split into groups (for Sentinel-2, e.g. the 10 m, 20 m and 60 m bands), each group has its own
patch kernel and a learned group embedding, and the groups are averaged into one token per patch,
so the token grid (and everything downstream, the MAE included) is unchanged.

:func:`embed_patch_tokens` embeds a chosen subset of patches (the visible ones of an MAE) without
running the kernel over the whole image. It understands timm's ``PatchEmbed``,
:class:`GroupedPatchEmbed` and :class:`~rsmae.models.spectral_embed.SpectralPatchEmbed`; for any other
embedding it returns ``None`` and the caller embeds the
whole image and gathers.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import PatchEmbed, to_2tuple
from timm.layers.format import Format, nchw_to
from torch import Tensor, nn

from rsmae.errors import BandError
from rsmae.models.spectral_embed import SpectralPatchEmbed

__all__ = ["GroupedPatchEmbed", "embed_patch_tokens", "extract_patches", "patchify", "unpatchify"]

_logger = logging.getLogger(__name__)


def _check_groups(groups: Sequence[Sequence[int]], in_chans: int) -> list[list[int]]:
    """Validate band groups: non-empty, disjoint channel indices in ``[0, in_chans)``."""
    if not groups:
        raise BandError("band groups are empty; pass e.g. groups=[[0, 1, 2], [3, 4]]")
    seen: set[int] = set()
    out: list[list[int]] = []
    for i, group in enumerate(groups):
        group = [int(c) for c in group]
        if not group:
            raise BandError(f"band group {i} is empty; remove it or give it channel indices")
        bad = [c for c in group if not 0 <= c < in_chans]
        if bad:
            raise BandError(
                f"band group {i} has channel indices {bad} outside [0, {in_chans}); "
                f"use indices of the {in_chans} input bands"
            )
        dup = seen.intersection(group)
        if dup or len(set(group)) != len(group):
            raise BandError(
                f"band group {i} repeats channel(s) {sorted(dup) or group}; each band may "
                "belong to one group only"
            )
        seen.update(group)
        out.append(group)
    unused = sorted(set(range(in_chans)) - seen)
    if unused:
        _logger.warning("band groups leave channels %s unused; they are ignored", unused)
    return out


class GroupedPatchEmbed(nn.Module):
    """Patch embedding with one kernel per spectral band group, averaged into one token.

    ``token = mean_g(conv_g(x[:, groups[g]]) + group_embed[g])``. The mean (not the sum) keeps the
    token scale independent of the number of groups; with a single group of all bands it is timm's
    ``PatchEmbed`` plus a constant. While every group is present the group embeddings act as one
    shared bias; they identify the groups once groups can be missing (band dropout) and keep
    checkpoints compatible with a token-per-group variant.

    Accepts every keyword argument timm's ``VisionTransformer`` passes to its ``embed_layer``; bind
    ``groups`` with :func:`functools.partial` (``create_encoder(band_groups=...)`` does this).

    Attributes:
        groups: Channel indices of each group.
        patch_size: ``(P, P)``.
        img_size: ``(H, W)``.
        grid_size: ``(H // P, W // P)``.
        num_patches: Number of patches.
        projs: One ``Conv2d`` per group.
        group_embed: ``(G, D)`` learned group embeddings.
    """

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        patch_size: int | tuple[int, int] = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        norm_layer: Callable[..., nn.Module] | None = None,
        flatten: bool = True,
        output_fmt: str | None = None,
        bias: bool = True,
        strict_img_size: bool = True,
        dynamic_img_pad: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        groups: Sequence[Sequence[int]],
    ) -> None:
        super().__init__()
        dd: dict[str, Any] = {"device": device, "dtype": dtype}
        self.groups = _check_groups(groups, in_chans)
        self.in_chans = in_chans
        self.patch_size = to_2tuple(patch_size)
        self.img_size = to_2tuple(img_size)
        self.grid_size = (
            self.img_size[0] // self.patch_size[0],
            self.img_size[1] // self.patch_size[1],
        )
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.flatten = flatten if output_fmt is None else False
        self.output_fmt = Format(output_fmt) if output_fmt is not None else Format.NCHW
        self.strict_img_size = strict_img_size
        self.dynamic_img_pad = dynamic_img_pad
        self.projs = nn.ModuleList(
            nn.Conv2d(len(g), embed_dim, self.patch_size, stride=self.patch_size, bias=bias, **dd)
            for g in self.groups
        )
        self.group_embed = nn.Parameter(torch.zeros(len(self.groups), embed_dim, **dd))
        self.norm = norm_layer(embed_dim, **dd) if norm_layer else nn.Identity()
        for i, g in enumerate(self.groups):
            self.register_buffer(f"_idx{i}", torch.tensor(g, device=device), persistent=False)

    def feat_ratio(self, as_scalar: bool = True) -> int | tuple[int, int]:
        """Reduction factor of the token grid (timm ``PatchEmbed`` interface)."""
        return max(self.patch_size) if as_scalar else self.patch_size

    def init_weights(self) -> None:
        """Initialise the group embeddings (called by timm's ``init_weights``)."""
        nn.init.trunc_normal_(self.group_embed, std=0.02)

    def _group_index(self, i: int) -> Tensor:
        return getattr(self, f"_idx{i}")

    def _check_input(self, x: Tensor) -> Tensor:
        if x.shape[1] != self.in_chans:
            raise BandError(
                f"GroupedPatchEmbed expects {self.in_chans} bands, got {x.shape[1]}; "
                "build the encoder with in_chans matching the data"
            )
        h, w = x.shape[-2:]
        ph, pw = self.patch_size
        if self.strict_img_size and (h, w) != self.img_size:
            raise ValueError(f"input size {(h, w)} != model img_size {self.img_size}")
        if self.dynamic_img_pad:
            x = F.pad(x, (0, (pw - w % pw) % pw, 0, (ph - h % ph) % ph))
        return x

    def forward(self, x: Tensor) -> Tensor:
        """Embed ``(B, C, H, W)`` into ``(B, N, D)`` (or the grid format timm asked for)."""
        x = self._check_input(x)
        out = None
        for i, proj in enumerate(self.projs):
            y = proj(x.index_select(1, self._group_index(i)))
            y = y + self.group_embed[i].view(1, -1, 1, 1)
            out = y if out is None else out + y
        out = out / len(self.projs)
        if self.flatten:
            out = out.flatten(2).transpose(1, 2)
        elif self.output_fmt != Format.NCHW:
            out = nchw_to(out, self.output_fmt)
        return self.norm(out)

    def embed_patches(self, patches: Tensor) -> Tensor:
        """Embed already extracted patches ``(B, L, C, P, P)`` into ``(B, L, D)``."""
        out = None
        for i, proj in enumerate(self.projs):
            sel = patches.index_select(2, self._group_index(i)).flatten(2)
            y = F.linear(sel, proj.weight.flatten(1), proj.bias) + self.group_embed[i]
            out = y if out is None else out + y
        return self.norm(out / len(self.projs))


def patchify(images: Tensor, patch_size: int) -> Tensor:
    """Cut images into flattened patches (pixel order ``p, q, c`` as in the official MAE).

    Args:
        images: ``(B, C, H, W)``, any ``C``; ``H`` and ``W`` multiples of ``patch_size``.
        patch_size: Patch size ``P``.

    Returns:
        ``(B, N, P*P*C)`` with patches in row-major order.
    """
    b, c, h, w = images.shape
    p = patch_size
    if h % p or w % p:
        raise ValueError(f"image size {h}x{w} is not a multiple of the patch size {p}")
    x = images.reshape(b, c, h // p, p, w // p, p)
    return torch.einsum("nchpwq->nhwpqc", x).reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(patches: Tensor, patch_size: int, channels: int, grid: tuple[int, int]) -> Tensor:
    """Inverse of :func:`patchify`.

    Args:
        patches: ``(B, N, P*P*C)``.
        patch_size: Patch size ``P``.
        channels: Band count ``C``.
        grid: ``(rows, cols)`` of patches, ``rows * cols == N``.

    Returns:
        ``(B, C, rows*P, cols*P)`` images.
    """
    b, n, d = patches.shape
    gh, gw = grid
    p = patch_size
    if gh * gw != n or p * p * channels != d:
        raise ValueError(
            f"patches of shape {tuple(patches.shape)} do not fit grid {grid}, "
            f"patch size {p} and {channels} channels"
        )
    x = patches.reshape(b, gh, gw, p, p, channels)
    return torch.einsum("nhwpqc->nchpwq", x).reshape(b, channels, gh * p, gw * p)


def extract_patches(images: Tensor, ids: Tensor, patch_size: int) -> Tensor:
    """Gather the patches ``ids`` of every image, copying only those pixels.

    Args:
        images: ``(B, C, H, W)`` with ``H`` and ``W`` multiples of ``patch_size``.
        ids: ``(B, L)`` row-major patch indices per sample.
        patch_size: Patch size ``P``.

    Returns:
        ``(B, L, C, P, P)`` patches (the layout of a ``Conv2d`` kernel).
    """
    b, c, h, w = images.shape
    p = patch_size
    gw = w // p
    grid = images.view(b, c, h // p, p, gw, p)
    rows, cols = ids.div(gw, rounding_mode="floor"), ids.remainder(gw)
    batch = torch.arange(b, device=images.device).unsqueeze(1)
    return grid[batch, :, rows, :, cols, :]  # advanced dims first: (B, L, C, P, P)


def _is_plain_conv_embed(patch_embed: nn.Module) -> bool:
    if type(patch_embed) is not PatchEmbed or patch_embed.dynamic_img_pad:
        return False
    proj = patch_embed.proj
    p = patch_embed.patch_size
    return (
        isinstance(proj, nn.Conv2d)
        and tuple(proj.kernel_size) == tuple(p)
        and tuple(proj.stride) == tuple(p)
        and proj.padding in ((0, 0), "valid")
        and proj.groups == 1
        and p[0] == p[1]
    )


def embed_patch_tokens(patch_embed: nn.Module, images: Tensor, ids: Tensor) -> Tensor | None:
    """Embed only the patches ``ids`` of ``images`` with the weights of ``patch_embed``.

    Equivalent to ``patch_embed(images)`` followed by gathering tokens ``ids``, without computing
    the others.

    Args:
        patch_embed: timm ``PatchEmbed``, :class:`GroupedPatchEmbed` or a ``SpectralPatchEmbed``
            (its current bands).
        images: ``(B, C, H, W)``.
        ids: ``(B, L)`` patch indices.

    Returns:
        ``(B, L, D)`` tokens, or ``None`` when ``patch_embed`` is of another kind (then embed the
        whole image and gather).
    """
    if isinstance(patch_embed, GroupedPatchEmbed):
        if patch_embed.dynamic_img_pad:
            return None
        patch_embed._check_input(images)
        patches = extract_patches(images, ids, patch_embed.patch_size[0])
        return patch_embed.embed_patches(patches)
    if isinstance(patch_embed, SpectralPatchEmbed) and not patch_embed.dynamic_img_pad:
        weight, bias = patch_embed.conv_params(patch_embed._check_input(images, None))
        patches = extract_patches(images, ids, patch_embed.patch_size[0]).flatten(2)
        return patch_embed.norm(F.linear(patches, weight.flatten(1), bias))
    if not _is_plain_conv_embed(patch_embed):
        return None
    proj = patch_embed.proj
    patches = extract_patches(images, ids, patch_embed.patch_size[0]).flatten(2)
    return patch_embed.norm(F.linear(patches, proj.weight.flatten(1), proj.bias))
