"""Pretraining one backbone for any sensor (issue 24): the task's spectral options, band dropout per batch.

``PretrainTask(patch_embed="spectral")`` builds the encoder on a
:class:`~rsmae.models.spectral_embed.SpectralPatchEmbed` set to the data's bands (``data_info``), and
its MAE decoder predicts the pixels of whatever bands a batch holds
(:class:`~rsmae.models.spectral_head.SpectralPatchHead`). With ``band_dropout={"p_keep_min": ...,
"p_keep_max": ...}`` every training batch keeps a random subset of its bands
(:func:`~rsmae.augment.drop_bands`), drawn from the batch's own generator after its augmentation and
masks (those stay what they are without dropout), so a resumed run draws the same subsets. The kept
band names travel in the batch as ``batch["bands"]``; :func:`batch_bands` sets them on the model for
the forward. Validation batches keep all their bands.

Stores of different band sets (:mod:`rsmae.data.mixed`) give batches of one store group each, carrying
the group's band names (sensor-qualified) and statistics: the task normalises each batch with its own
group's ``mean``/``std`` and sets its bands; a fixed (``"conv"``) embedding refuses such a mix
(:func:`check_mixed_bands`).
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from torch import nn

from rsmae.augment import drop_bands
from rsmae.errors import ModelConfigError
from rsmae.models import use_bands

__all__ = ["BAND_DROPOUT_KEYS", "PATCH_EMBEDS", "batch_bands", "check_band_dropout", "check_mixed_bands",
           "drop_batch_bands", "encoder_band_args"]

PATCH_EMBEDS = ("conv", "spectral")  # of a pretraining task: timm's conv, or kernels from wavelengths
BAND_DROPOUT_KEYS = ("p_keep_min", "p_keep_max")


def encoder_band_args(patch_embed: str, data_info: Mapping[str, Any] | None) -> dict[str, Any]:
    """The :func:`~rsmae.models.create_encoder` arguments of the patch embedding (none for ``"conv"``).

    Raises:
        ModelConfigError: for a patch embedding outside :data:`PATCH_EMBEDS`, or ``"conv"`` on a mix of
            stores of different bands (:func:`check_mixed_bands`).
    """
    if patch_embed not in PATCH_EMBEDS:
        raise ModelConfigError(f"patch_embed={patch_embed!r}; choose one of {', '.join(PATCH_EMBEDS)} "
                               "(model.patch_embed)")
    check_mixed_bands(data_info, patch_embed)
    if patch_embed == "conv":
        return {}
    info = data_info or {}  # without data: the bands are set in setup()
    return {"patch_embed": "spectral", "bands": info.get("bands"), "sensor": info.get("sensor")}


def check_mixed_bands(data_info: Mapping[str, Any] | None, patch_embed: str) -> None:
    """Refuse a fixed patch embedding on store groups of different bands (``data_info["groups"]``).

    Raises:
        ModelConfigError: naming each group's stores and bands, and ``model.patch_embed: spectral``.
    """
    groups = (data_info or {}).get("groups") or []
    if patch_embed == "spectral" or len({tuple(g["bands"]) for g in groups}) <= 1:
        return
    where = "; ".join(f"{g['name']} ({', '.join(map(str, g['stores']))}): {', '.join(g['bands'])}"
                      for g in groups)
    raise ModelConfigError(f"the stores hold different bands ({where}); a fixed patch embedding "
                           f"(model.patch_embed: {patch_embed}) takes one band set. Set model.patch_embed: "
                           "spectral (kernels from each band's wavelength: one encoder for every band set), "
                           "or pretrain on stores of one band set")


def check_band_dropout(options: Mapping[str, Any] | None, patch_embed: str) -> dict[str, float] | None:
    """``band_dropout`` checked as plain data: ``{"p_keep_min", "p_keep_max"}`` fractions, or ``None`` (off).

    Raises:
        ModelConfigError: for other keys, values outside ``0 <= p_keep_min <= p_keep_max <= 1``, or a
            patch embedding with fixed bands.
    """
    if not options:
        return None
    if patch_embed != "spectral":
        raise ModelConfigError(f"band_dropout needs patch_embed='spectral' (got {patch_embed!r}): an "
                               "encoder with fixed bands cannot take a subset of them")
    refused = sorted(map(str, set(options) - set(BAND_DROPOUT_KEYS)))
    if refused:
        raise ModelConfigError(f"band_dropout key(s) {', '.join(refused)} refused; give "
                               f"{' and '.join(BAND_DROPOUT_KEYS)}")
    out = {"p_keep_min": float(options.get("p_keep_min", 0.0)),
           "p_keep_max": float(options.get("p_keep_max", 1.0))}
    if not 0.0 <= out["p_keep_min"] <= out["p_keep_max"] <= 1.0:
        raise ModelConfigError(f"band_dropout {out}: need 0 <= p_keep_min <= p_keep_max <= 1")
    return out


def drop_batch_bands(batch: dict[str, Any], bands: list[str], generator: torch.Generator,
                     options: Mapping[str, float]) -> dict[str, Any]:
    """``batch`` keeping a random subset of its ``bands`` (:func:`~rsmae.augment.drop_bands`), named in it."""
    images, kept = drop_bands(batch["image"], bands, generator, **options)
    return {**batch, "image": images, "bands": kept}


def batch_bands(model: nn.Module, batch: Mapping[str, Any], *, spectral: bool) -> AbstractContextManager:
    """Inside the block a ``spectral`` ``model`` takes the bands of ``batch["bands"]``.

    A batch without them, or a model of fixed bands (a mix of same-band groups names them too): as it is.
    """
    bands = batch.get("bands")
    return use_bands(model, bands) if spectral and bands is not None else nullcontext(model)
