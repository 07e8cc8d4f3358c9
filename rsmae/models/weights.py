"""The reusable backbone: save an encoder with its metadata, load it back.

A backbone file is a safetensors file of the encoder's state dict whose metadata holds a
:class:`BackboneMeta` as JSON under the key ``"rsmae"``: bands, normalisation statistics, patch and
image size, GSD, the GSD position-embedding settings the encoder was trained with, the encoder's
construction arguments and the metadata's ``format_version`` (:data:`FORMAT_VERSION`; files written
before versioning read as version 1, with the settings' defaults). Loading builds the encoder from that
metadata, so the file alone is enough. Foreign weights (official MAE, timm, torchgeo) load through
:mod:`rsmae.models.foreign` and the same filter (:func:`~rsmae.models.adapt.checkpoint_filter_fn`);
every load reports missing and unexpected keys and fails loudly when the backbone did not load.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor

from rsmae.errors import BandError, WeightsError
from rsmae.files import atomic_path
from rsmae.models.adapt import checkpoint_filter_fn, match_bands
from rsmae.models.keys import load_checked
from rsmae.models.meta import (
    FORMAT_VERSION,
    META_KEY,
    BackboneMeta,
    parse_meta,
    peek_backbone_meta,
    read_backbone_meta,
)
from rsmae.models.spectral_embed import SpectralPatchEmbed
from rsmae.models.timm_cfg import ENCODER_KWARGS, attach_meta
from rsmae.models.vit import create_encoder

__all__ = [
    "ENCODER_KWARGS",
    "FORMAT_VERSION",
    "BackboneMeta",
    "build_encoder",
    "load_backbone",
    "peek_backbone_meta",
    "read_backbone_meta",
    "read_weights",
    "save_backbone",
]

_logger = logging.getLogger(__name__)

def read_weights(path: str | Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Read tensors from a safetensors or PyTorch file (``torch.load(weights_only=True)``).

    PyTorch checkpoints may wrap the state dict under ``"model"``, ``"state_dict"``,
    ``"model_state_dict"`` or ``"module"`` (official MAE uses ``"model"``, Lightning
    ``"state_dict"``).

    Returns:
        The tensors and the file's string metadata (empty for PyTorch files).

    Raises:
        WeightsError: naming ``path`` when it is missing, unreadable or holds no tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such weights file; check the path")
    with path.open("rb") as fh:
        head = fh.read(9)
    if len(head) == 9 and head[8:9] == b"{":  # safetensors: u64 header length, then JSON
        try:
            with safe_open(str(path), framework="pt") as f:
                return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
        except Exception as err:
            raise WeightsError(f"{path}: not a readable safetensors file ({err})") from err
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise WeightsError(
            f"{path}: not a weights file, or it holds objects other than tensors (read with "
            f"torch.load(weights_only=True)): {err}"
        ) from err
    return _find_state_dict(obj, path), {}


def _find_state_dict(obj: Any, path: Path) -> dict[str, Tensor]:
    """The tensors of ``obj`` or of its first nested state dict."""
    for _ in range(3):
        if not isinstance(obj, Mapping):
            break
        tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, Tensor)}
        if tensors:
            return tensors
        wrappers = ("model", "state_dict", "model_state_dict", "module")
        inner = next((obj[k] for k in wrappers if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    keys = list(obj)[:8] if isinstance(obj, Mapping) else type(obj).__name__
    raise WeightsError(
        f"{path}: no state dict found (top level: {keys}); expected tensors, or a checkpoint "
        "with them under 'model' or 'state_dict'"
    )


def save_backbone(encoder: VisionTransformer, path: str | Path, meta: BackboneMeta) -> Path:
    """Write ``encoder`` and ``meta`` to a safetensors file, atomically (:func:`~rsmae.files.atomic_path`).

    A spectral patch embedding (:class:`~rsmae.models.spectral_embed.SpectralPatchEmbed`) is recorded
    from the encoder itself: ``patch_embed="spectral"`` and its options (learned bands included).

    Raises:
        WeightsError: when ``meta`` does not describe ``encoder`` (it could not be rebuilt).
    """
    path = Path(path)
    state = {k: v.detach().cpu().contiguous() for k, v in encoder.state_dict().items()}
    embed = getattr(encoder, "patch_embed", None)
    if isinstance(embed, SpectralPatchEmbed):
        meta = dataclasses.replace(meta, patch_embed="spectral",
                                   encoder_kwargs={**meta.encoder_kwargs, "spectral_embed": embed.config()})
    meta = dataclasses.replace(meta, format_version=FORMAT_VERSION)  # written in today's layout
    _check_meta_builds(meta, state)
    try:
        with atomic_path(path) as tmp:
            save_file(state, str(tmp), metadata={META_KEY: meta.to_json(), "format": "pt"})
    except (OSError, SafetensorError) as err:
        raise WeightsError(f"{path}: cannot write the backbone there ({err}); choose another --out") from err
    _logger.info("saved backbone %s (bands %s) to %s", meta.preset, meta.bands, path)
    return path


def build_encoder(meta: BackboneMeta) -> VisionTransformer:
    """A freshly initialised encoder of the architecture ``meta`` describes (patch embedding included)."""
    spectral = meta.patch_embed == "spectral"
    return create_encoder(
        meta.preset,
        in_chans=meta.in_chans,
        img_size=meta.img_size,
        patch_size=meta.patch_size,
        **({"patch_embed": "spectral", "bands": meta.bands, "sensor": meta.sensor} if spectral else {}),
        **meta.encoder_kwargs,
    )


def _check_meta_builds(meta: BackboneMeta, state: Mapping[str, Tensor]) -> None:
    """Refuse metadata that would rebuild an encoder of another shape."""
    meta.to_json()
    with torch.device("meta"):
        ref = build_encoder(meta).state_dict()
    diff = sorted(set(ref) ^ set(state)) or [k for k in ref if tuple(ref[k].shape) != tuple(state[k].shape)]
    if diff:
        raise WeightsError(
            f"backbone metadata ({meta.preset}, in_chans={meta.in_chans}, img_size={meta.img_size}"
            f", patch_size={meta.patch_size}, {meta.encoder_kwargs}) does not rebuild this "
            f"encoder: keys or shapes differ at {diff[:5]}; put the encoder's arguments in meta"
        )


def retarget(meta: BackboneMeta, bands: Sequence[str] | None, sensor: str | None) -> BackboneMeta:
    """Metadata for the same backbone on other bands (statistics kept only for the same bands)."""
    if bands is None:
        return meta
    if meta.patch_embed == "spectral":
        return _retarget_spectral(meta, bands, sensor)
    match = match_bands(meta.bands, bands, src_sensor=meta.sensor, dst_sensor=sensor)
    if match.identity:
        return meta
    if meta.encoder_kwargs.get("band_groups") is not None:
        raise WeightsError("band adaptation of a band-grouped patch embedding is not supported")
    mean = std = None
    if match.same_bands and meta.mean is not None and meta.std is not None:
        mean = [meta.mean[match.pairs[j]] for j in range(len(match.dst))]
        std = [meta.std[match.pairs[j]] for j in range(len(match.dst))]
    elif meta.mean is not None:
        _logger.warning("no statistics for bands %s; compute them from the data", list(match.dst))
    return dataclasses.replace(
        meta,
        bands=list(match.dst),
        in_chans=len(match.dst),
        sensor=match.dst_sensor.name,
        mean=mean,
        std=std,
        source=f"{meta.source} (bands adapted from {meta.bands})",
    )


def _retarget_spectral(meta: BackboneMeta, bands: Sequence[str], sensor: str | None) -> BackboneMeta:
    """A spectral backbone on any bands: only the names and, for the same bands, statistics change."""
    sensor = meta.sensor if sensor is None else sensor
    if list(bands) == meta.bands and sensor == meta.sensor:
        return meta
    index = {name: i for i, name in enumerate(meta.bands)}
    pairs: list[int] | None = None
    if sensor == meta.sensor and all(b in index for b in bands):
        pairs = [index[b] for b in bands]
    else:
        try:
            match = match_bands(meta.bands, bands, src_sensor=meta.sensor, dst_sensor=sensor)
            pairs = [match.pairs[j] for j in range(len(bands))] if match.same_bands else None
        except BandError:  # sensor-qualified or learned bands: no registry pairing
            pairs = None
    mean = std = None
    if pairs is not None and meta.mean is not None and meta.std is not None:
        mean, std = [meta.mean[i] for i in pairs], [meta.std[i] for i in pairs]
    elif meta.mean is not None:
        _logger.warning("no statistics for bands %s; compute them from the data", list(bands))
    return dataclasses.replace(meta, bands=list(bands), in_chans=len(bands), sensor=sensor, mean=mean,
                               std=std, source=f"{meta.source} (bands {meta.bands} -> {list(bands)})")


def build_and_load(
    state: Mapping[str, Tensor],
    path: Path,
    src: BackboneMeta,
    dst: BackboneMeta,
    *,
    strict: bool,
    optional: frozenset[str] = frozenset(),
) -> VisionTransformer:
    """Build the encoder ``dst`` describes and load ``state`` (bands ``src.bands``) into it."""
    model = build_encoder(dst)
    try:
        filtered = checkpoint_filter_fn(
            state,
            model,
            src_bands=src.bands,
            dst_bands=dst.bands,
            sensor=dst.sensor,
            src_sensor=src.sensor,
        )
    except WeightsError as err:
        raise WeightsError(f"{path}: {err}") from err
    load_checked(model, filtered, str(path), strict=strict, optional=optional)
    return attach_meta(model, dst)


def load_backbone(
    path: str | Path,
    *,
    bands: Sequence[str] | None = None,
    sensor: str | None = None,
    img_size: int | None = None,
    strict: bool = True,
) -> VisionTransformer:
    """Load a backbone written by :func:`save_backbone`.

    Args:
        path: The safetensors file.
        bands: Bands of the data to feed; when they differ from the saved bands (other set or
            order) the patch kernels are mapped by band name and the metadata updated. A spectral
            backbone (``patch_embed="spectral"``) takes any bands with a wavelength (or a learned
            kernel) and generates their kernels.
        sensor: Sensor of ``bands`` (default: the saved sensor, else inferred).
        img_size: Input size, when not the saved one (position embeddings are resampled).
        strict: Require every encoder tensor; with ``False`` load what fits (but not nothing).

    Returns:
        The encoder, with ``rsmae_meta`` and ``pretrained_cfg`` (bands, statistics) attributes.

    Raises:
        WeightsError: naming ``path`` when it is not a backbone file or did not load.
        BandError: when ``bands`` cannot be mapped to the saved bands.
    """
    path = Path(path)
    state, file_meta = read_weights(path)
    meta = parse_meta(path, file_meta)
    dst = retarget(meta, bands, sensor)
    if img_size is not None:
        dst = dataclasses.replace(dst, img_size=img_size)
    return build_and_load(state, path, meta, dst, strict=strict)
