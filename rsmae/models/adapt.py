"""Fit foreign weights to an encoder: one pure checkpoint filter and patch kernels mapped by band.

:func:`checkpoint_filter_fn` is the single place that turns a state dict (rsmae, official MAE, timm,
torchgeo, Lightning) into the key names and shapes of an rsmae encoder. Official MAE and torchgeo
ViTs already use timm's names (``patch_embed.proj``, ``cls_token``, ``pos_embed``, ``blocks.N.*``,
``norm``), so no renaming is needed beyond prefixes.

Patch-embedding kernels are matched by band *name* through :mod:`rsmae.bands`, never by position
(:func:`adapt_patch_embed`). Prefix stripping, preset inference and checked loading work on key
names and live in :mod:`rsmae.models.keys`; they are re-exported here.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence

import torch
from timm.layers import resample_abs_pos_embed, resample_patch_embed
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor

from rsmae.band_match import BandMatch, match_bands
from rsmae.errors import WeightsError
from rsmae.models.keys import DROPPED as DROPPED
from rsmae.models.keys import PATCH_KEY, infer_preset, load_checked, strip_prefixes
from rsmae.models.keys import PREFIXES as PREFIXES
from rsmae.models.layers import sincos_pos_embed_2d

__all__ = [
    "BandMatch",
    "adapt_patch_embed",
    "checkpoint_filter_fn",
    "infer_preset",
    "load_checked",
    "match_bands",
    "strip_prefixes",
]

_logger = logging.getLogger(__name__)


def adapt_patch_embed(
    weight: Tensor,
    src_bands: Sequence[str],
    dst_bands: Sequence[str],
    sensor: str | None = None,
    *,
    src_sensor: str | None = None,
) -> tuple[Tensor, dict]:
    """Map patch-embedding kernels ``(D, C_src, P, P)`` to other bands ``(D, C_dst, P, P)`` by name.

    Bands in both lists are copied (see :func:`match_bands`; RGB weights land on the destination
    sensor's red, green and blue bands); extra source bands are dropped; destination bands without
    a source take the mean of the copied kernels. Then the whole kernel is multiplied by
    ``C_src / C_dst`` (the factor of timm's ``adapt_input_conv``).

    Why that rescale: neighbouring spectral bands are strongly correlated and mostly vary together
    (brightness), so a patch response is close to ``sum_c W_c * x``. The source sums ``C_src``
    kernels, the destination ``C_dst`` (copied plus mean stand-ins, each about the mean kernel), so
    ``C_src / C_dst`` keeps the response, and the pre-norm activations, at their pretrained size.
    Rescaling only the stand-ins cannot do that when every source band is copied (RGB into 13
    bands): it forces them to zero, and a frozen encoder (linear probe, kNN) would ignore the new
    bands. A pure reordering has ``C_src == C_dst``, factor 1, and stays exact.

    Args:
        weight: Source kernels ``(D, C_src, P, P)``.
        src_bands: The ``C_src`` source band names, in channel order.
        dst_bands: The ``C_dst`` destination band names, in channel order.
        sensor: Sensor of the destination bands (inferred when ``None``).
        src_sensor: Sensor of the source bands (inferred when ``None``).

    Returns:
        The new kernels and a report ``{"copied", "initialised", "dropped", "mapping", "scale"}``:
        destination bands copied and initialised, source bands dropped, destination -> source
        names, and the factor applied.

    Raises:
        WeightsError: when ``weight`` is not ``(D, len(src_bands), P, P)``.
        BandError: on unknown bands or when no band can be paired.
    """
    if weight.ndim != 4 or weight.shape[1] != len(src_bands):
        raise WeightsError(
            f"patch kernels of shape {tuple(weight.shape)} do not hold the {len(src_bands)} "
            f"source bands {list(src_bands)}; expected (D, {len(src_bands)}, P, P)"
        )
    match = match_bands(src_bands, dst_bands, src_sensor=src_sensor, dst_sensor=sensor)
    dst_idx = sorted(match.pairs)
    src_idx = [match.pairs[j] for j in dst_idx]
    w = weight.detach().float()
    out = w[:, src_idx].mean(dim=1, keepdim=True).repeat(1, len(match.dst), 1, 1)
    out[:, dst_idx] = w[:, src_idx]
    scale = len(match.src) / len(match.dst)
    out = out * scale
    report = {
        "copied": [match.dst[j] for j in dst_idx],
        "initialised": [n for j, n in enumerate(match.dst) if j not in match.pairs],
        "dropped": [n for i, n in enumerate(match.src) if i not in src_idx],
        "mapping": {match.dst[j]: match.src[match.pairs[j]] for j in dst_idx},
        "scale": scale,
    }
    _logger.info(
        "patch embedding adapted %s -> %s: copied %s, initialised from their mean %s, dropped %s, "
        "scaled by %.4g",
        match.src_sensor.name,
        match.dst_sensor.name,
        report["mapping"],
        report["initialised"],
        report["dropped"],
        scale,
    )
    return out.to(weight.dtype), report



def _sincos_layout(table: Tensor, grid: tuple[int, int]) -> str | None:
    """``"xy"`` (rsmae and official MAE: columns first) or ``"yx"`` (rows first), else None."""
    dim = table.shape[-1]
    if dim % 4:
        return None
    ref = sincos_pos_embed_2d(grid[0], grid[1], dim)
    half = dim // 2
    swapped = torch.cat([ref[:, half:], ref[:, :half]], dim=1)
    for layout, cand in (("xy", ref), ("yx", swapped)):
        if torch.allclose(table.float(), cand, atol=1e-4):
            return layout
    return None


def _resample_pos_embed(pos: Tensor, model: VisionTransformer) -> Tensor:
    """Fit ``pos`` to the model's grid: regenerate a sin-cos table, else interpolate bicubically."""
    n_prefix = 0 if getattr(model, "no_embed_class", False) else model.num_prefix_tokens
    new_grid = tuple(model.patch_embed.grid_size)
    n_old = pos.shape[1] - n_prefix
    side = math.isqrt(n_old)
    if side * side != n_old:
        raise WeightsError(
            f"pos_embed with {n_old} patch positions is not a square grid; cannot resample it to {new_grid}"
        )
    layout = _sincos_layout(pos[0, n_prefix:], (side, side))
    if layout is None:
        _logger.info("pos_embed interpolated (bicubic) from %s to %s", (side, side), new_grid)
        return resample_abs_pos_embed(
            pos, new_size=list(new_grid), old_size=[side, side], num_prefix_tokens=n_prefix
        )
    table = sincos_pos_embed_2d(new_grid[0], new_grid[1], pos.shape[-1])
    if layout == "yx":
        half = pos.shape[-1] // 2
        table = torch.cat([table[:, half:], table[:, :half]], dim=1)
    _logger.info("sin-cos pos_embed (%s layout) regenerated for grid %s", layout, new_grid)
    return torch.cat([pos[:, :n_prefix], table[None].to(pos.dtype)], dim=1)


def _fit_patch_kernels(
    key: str,
    value: Tensor,
    target: Tensor,
    src_bands: Sequence[str] | None,
    dst_bands: Sequence[str] | None,
    sensors: tuple[str | None, str | None],
) -> Tensor:
    """Adapt one patch-embedding kernel to the model's bands and patch size."""
    if src_bands is not None and dst_bands is not None:
        match = match_bands(src_bands, dst_bands, src_sensor=sensors[0], dst_sensor=sensors[1])
        if not match.identity:
            if key != PATCH_KEY:
                raise WeightsError(
                    f"cannot adapt the bands of {key!r} (a grouped patch embedding); load it "
                    "with its own bands"
                )
            value, _ = adapt_patch_embed(value, src_bands, dst_bands, sensors[1], src_sensor=sensors[0])
    if value.shape[1] != target.shape[1]:
        raise WeightsError(
            f"{key} holds {value.shape[1]} input bands but the model takes {target.shape[1]}; "
            "pass src_bands and dst_bands so kernels can be mapped by band name"
        )
    if value.shape[-2:] != target.shape[-2:]:
        size = tuple(target.shape[-2:])
        _logger.info("patch kernels %s resampled to %s", tuple(value.shape[-2:]), size)
        value = resample_patch_embed(value, list(target.shape[-2:]))
    return value


def checkpoint_filter_fn(
    state_dict: Mapping[str, Tensor],
    model: VisionTransformer,
    *,
    src_bands: Sequence[str] | None = None,
    dst_bands: Sequence[str] | None = None,
    sensor: str | None = None,
    src_sensor: str | None = None,
    prefix: str | None = None,
) -> dict[str, Tensor]:
    """Turn any ViT checkpoint state dict into one that fits ``model`` (pure: returns a new dict).

    Strips wrapper prefixes and drops decoder / mask-token / head keys (:func:`strip_prefixes`),
    maps patch kernels by band name (:func:`adapt_patch_embed`) and resamples them to the model's
    patch size (``timm.layers.resample_patch_embed``), and fits ``pos_embed`` to the model's grid:
    a 2D sin-cos table (rsmae or official-MAE layout) is regenerated exactly, a learned one is
    interpolated (``timm.layers.resample_abs_pos_embed``). Keys the model lacks are passed through
    so the loader can report them.

    Args:
        state_dict: The checkpoint's tensors.
        model: The encoder to fit.
        src_bands: Band names of the checkpoint's input channels.
        dst_bands: Band names of the model's input channels.
        sensor: Sensor of ``dst_bands`` (inferred when ``None``).
        src_sensor: Sensor of ``src_bands`` (inferred when ``None``).
        prefix: Keep only keys under this prefix (e.g. ``"teacher.encoder."``).

    Returns:
        The filtered state dict.

    Raises:
        WeightsError: when kernels or position embeddings cannot be fitted.
        BandError: when bands cannot be mapped.
    """
    target = model.state_dict()
    out: dict[str, Tensor] = {}
    for key, value in strip_prefixes(state_dict, prefix=prefix).items():
        ref = target.get(key)
        if key.startswith("patch_embed.") and ref is not None and value.ndim == 4 == ref.ndim:
            value = _fit_patch_kernels(key, value, ref, src_bands, dst_bands, (src_sensor, sensor))
        elif key == "pos_embed" and ref is not None and value.shape != ref.shape:
            value = _resample_pos_embed(value, model)
        out[key] = value
    return out
