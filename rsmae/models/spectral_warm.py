"""Warm-start the any-sensor encoder from a fixed-band rsmae backbone (issue 24).

A conv backbone (:func:`~rsmae.models.weights.save_backbone`, ``patch_embed="conv"``) holds one patch
kernel per band of its input channels. Loaded with :func:`load_spectral_backbone` (weights format
``"rsmae_spectral"``), every other tensor maps by key (``pos_embed`` refitted to another image size)
and the kernels become a :class:`~rsmae.models.spectral_embed.SpectralPatchEmbed`: our generator's
output layers are fitted so each band with a wavelength generates its kernel
(:func:`~rsmae.models.spectral_fit.fit_output_layers`, exact), a band without one (SAR, DEM) gets it
as a learned kernel. On the backbone's own bands the encoder then computes what the backbone did (the
mean over bands times ``C`` is the conv's sum); other bands get the generator's blend of the fitted
kernels, a warm start rather than a trained kernel. A spectral backbone loads as it is.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor

from rsmae.errors import WeightsError
from rsmae.models.adapt import checkpoint_filter_fn
from rsmae.models.keys import PATCH_KEY, load_checked
from rsmae.models.meta import BackboneMeta, parse_meta
from rsmae.models.spectral import band_spectrum, check_spectral_options
from rsmae.models.spectral_embed import SpectralPatchEmbed
from rsmae.models.spectral_fit import default_rank, fit_output_layers, target_raw
from rsmae.models.timm_cfg import attach_meta
from rsmae.models.weights import build_encoder, load_backbone, read_weights, retarget

__all__ = ["load_spectral_backbone"]


def _fit_conv_kernels(embed: SpectralPatchEmbed, meta: BackboneMeta, state: Mapping[str, Tensor]) -> None:
    """Make ``embed`` generate the conv kernels of ``state`` for the backbone's bands (``meta.bands``)."""
    kernel, n = state[PATCH_KEY].float(), meta.in_chans
    conv_bias = state.get("patch_embed.proj.bias", torch.zeros(kernel.shape[0])).float()
    raw = target_raw(kernel.transpose(0, 1), n, meta.patch_size)  # (C, D, P, P)
    spectra = [band_spectrum(b, meta.sensor) for b in meta.bands]
    keep = [i for i, s in enumerate(spectra) if s is not None]
    if keep:
        fit_output_layers(embed, [s for s in spectra if s is not None], raw[keep],
                          conv_bias.expand(len(keep), -1))
    with torch.no_grad():
        for i, (name, spectrum) in enumerate(zip(meta.bands, spectra, strict=True)):
            if spectrum is None:
                embed.learned_kernels[name].copy_(raw[i].flatten())
                if name in embed.learned_biases:
                    embed.learned_biases[name].copy_(conv_bias)


def load_spectral_backbone(path: str | Path, *, bands: Sequence[str] | None = None,
                           sensor: str | None = None, img_size: int | None = None, strict: bool = True,
                           seed: int = 0) -> VisionTransformer:
    """Load an rsmae backbone file as an any-sensor encoder (see :mod:`rsmae.models.spectral_warm`).

    Args:
        path: The backbone file.
        bands: Bands of the data to feed (default the backbone's); any bands with a wavelength.
        sensor: Sensor of ``bands``.
        img_size: Input size, when not the saved one.
        strict: Require every encoder tensor.
        seed: Seed of the initialisation of our generator's MLP (the fit is done on top of it).

    Raises:
        WeightsError: naming ``path`` when it is not a conv or spectral backbone, or does not load.
    """
    path = Path(path)
    state, file_meta = read_weights(path)
    meta = parse_meta(path, file_meta)
    if meta.patch_embed == "spectral":
        return load_backbone(path, bands=bands, sensor=sensor, img_size=img_size, strict=strict)
    if meta.patch_embed != "conv" or PATCH_KEY not in state:
        raise WeightsError(f"{path}: a {meta.patch_embed!r} patch embedding; only conv backbones (one kernel "
                           "per band) warm-start the spectral embedding: load it with load_backbone")
    learned = [b for b in meta.bands if band_spectrum(b, meta.sensor) is None]
    kwargs = dict(meta.encoder_kwargs)
    options = check_spectral_options({"kernel_size": meta.patch_size, "learned_bands": learned,
                                      "rank": default_rank(meta.in_chans - len(learned))})
    spectral = dataclasses.replace(meta, patch_embed="spectral",
                                   encoder_kwargs={**kwargs, "spectral_embed": options})
    dst = dataclasses.replace(retarget(spectral, bands, sensor), img_size=img_size or meta.img_size)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_encoder(dst)
    _fit_conv_kernels(model.patch_embed, meta, state)
    filtered = checkpoint_filter_fn({k: v for k, v in state.items() if not k.startswith("patch_embed.")},
                                    model)
    filtered.update({f"patch_embed.{k}": v for k, v in model.patch_embed.state_dict().items()})
    load_checked(model, filtered, str(path), strict=strict)
    dst = dataclasses.replace(dst, encoder_kwargs={**kwargs, "spectral_embed": model.patch_embed.config()},
                              source=f"{meta.source} (conv kernels fitted into the spectral embedding)")
    return attach_meta(model, dst)
