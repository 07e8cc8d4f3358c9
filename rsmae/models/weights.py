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
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor

from rsmae.errors import WeightsError
from rsmae.files import atomic_path
from rsmae.models.adapt import checkpoint_filter_fn, match_bands
from rsmae.models.keys import load_checked
from rsmae.models.timm_cfg import ENCODER_KWARGS, attach_meta, refused_encoder_kwargs
from rsmae.models.vit import create_encoder

__all__ = [
    "ENCODER_KWARGS",
    "FORMAT_VERSION",
    "BackboneMeta",
    "load_backbone",
    "peek_backbone_meta",
    "read_backbone_meta",
    "read_weights",
    "save_backbone",
]

_logger = logging.getLogger(__name__)

META_KEY = "rsmae"
# 1: the first files (no version field); 2: adds format_version, gsd_pos_embed and reference_gsd.
FORMAT_VERSION = 2


@dataclasses.dataclass
class BackboneMeta:
    """Everything needed to rebuild an encoder and feed it correctly; travels with the weights.

    Attributes:
        preset: Encoder preset (:data:`~rsmae.models.vit.ENCODER_PRESETS`).
        img_size: Input size in pixels.
        patch_size: Patch size in pixels.
        in_chans: Number of input bands (``len(bands)``).
        bands: Band names in input-channel order.
        sensor: Registry sensor of the bands (``None`` if unknown).
        mean: Per-band mean of the pretraining data, in the units of the stored pixel values,
            so that ``(x - mean) / std`` is the model input; ``None`` when unknown.
        std: Per-band standard deviation, same units.
        gsd: Metres per pixel of the pretraining tiles (``None`` if unknown).
        encoder_kwargs: Further :func:`~rsmae.models.vit.create_encoder` arguments (JSON values).
        source: Where the weights came from.
        gsd_pos_embed: The encoder was trained with position embeddings scaled by each sample's
            GSD (``MaskedAutoencoder(gsd_pos_embed=True)``); feed it the GSD to keep that meaning.
        reference_gsd: GSD (metres per pixel) at which the scaled table equals the fixed one.
        format_version: Version of this metadata layout (:data:`FORMAT_VERSION`).
    """

    preset: str
    img_size: int
    patch_size: int
    in_chans: int
    bands: list[str]
    sensor: str | None
    mean: list[float] | None
    std: list[float] | None
    gsd: float | None
    encoder_kwargs: dict = dataclasses.field(default_factory=dict)
    source: str = ""
    gsd_pos_embed: bool = False
    reference_gsd: float = 10.0
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        if self.format_version > FORMAT_VERSION:
            raise WeightsError(
                f"backbone metadata of format version {self.format_version}, newer than this rsmae "
                f"reads ({FORMAT_VERSION}); upgrade rsmae"
            )
        _check_encoder_kwargs(self.encoder_kwargs)
        self.bands = list(self.bands)
        if len(self.bands) != self.in_chans:
            raise WeightsError(f"in_chans={self.in_chans} but {len(self.bands)} bands {self.bands}")
        for name in ("mean", "std"):
            stats = getattr(self, name)
            if stats is not None:
                if len(stats) != self.in_chans:
                    raise WeightsError(f"{name} has {len(stats)} values for {self.in_chans} bands")
                setattr(self, name, [float(v) for v in stats])

    def to_json(self) -> str:
        """Serialise to a JSON string (raises ``WeightsError`` on non-JSON encoder arguments)."""
        try:
            return json.dumps(dataclasses.asdict(self), sort_keys=True)
        except TypeError as err:
            raise WeightsError(
                f"backbone metadata is not JSON-serialisable ({err}); encoder_kwargs must hold "
                "plain values (numbers, strings, lists), not classes or functions"
            ) from err

    @classmethod
    def from_json(cls, s: str) -> BackboneMeta:
        """Parse :meth:`to_json` output; keys that are not fields (of a version this rsmae reads) are refused.

        Metadata without ``format_version`` (written before versioning) reads as version 1 with
        the defaults of the fields added since.

        Raises:
            WeightsError: when the text is not a JSON object, lacks required fields, holds other keys
                (also in ``encoder_kwargs``: :data:`ENCODER_KWARGS`) or is of a newer format version.
        """
        try:
            data = json.loads(s)
        except json.JSONDecodeError as err:
            raise WeightsError(f"backbone metadata is not valid JSON: {err}") from err
        if not isinstance(data, dict):
            raise WeightsError("backbone metadata is not a JSON object")
        version = data.setdefault("format_version", 1)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(map(str, set(data) - names))
        if unknown and not (isinstance(version, int) and version > FORMAT_VERSION):  # newer: "upgrade"
            raise WeightsError(f"backbone metadata key(s) {', '.join(map(repr, unknown))} refused: not "
                               "fields of its format version; remove them, or re-export with save_backbone")
        try:
            return cls(**{k: v for k, v in data.items() if k in names})
        except TypeError as err:
            raise WeightsError(f"backbone metadata is incomplete: {err}") from err


def _check_encoder_kwargs(kwargs: object) -> None:
    """Refuse ``encoder_kwargs`` other than an object of :data:`ENCODER_KWARGS` keys."""
    if not isinstance(kwargs, Mapping):
        raise WeightsError(f"backbone metadata encoder_kwargs is a {type(kwargs).__name__}, not an object")
    refused = refused_encoder_kwargs(kwargs)
    if refused:
        raise WeightsError(
            f"backbone metadata encoder_kwargs key(s) {', '.join(map(repr, refused))} refused: only "
            f"{', '.join(sorted(ENCODER_KWARGS))} may build the encoder, never timm options that fetch or "
            "read files; remove them, or re-export the backbone with save_backbone")


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


def read_backbone_meta(path: str | Path) -> BackboneMeta:
    """The :class:`BackboneMeta` of a backbone file, read from its header (no tensors loaded).

    Raises:
        WeightsError: naming ``path`` when it is missing, not a safetensors file or not a backbone
            (a Lightning checkpoint, foreign weights), with the fix.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such weights file; check the path")
    try:
        with safe_open(str(path), framework="pt") as f:
            file_meta = dict(f.metadata() or {})
    except Exception as err:
        hint = (" A pretraining checkpoint? Export its encoder with pipelines/export.py CKPT --out "
                "backbone.safetensors" if path.suffix == ".ckpt" else "")
        raise WeightsError(f"{path}: not a backbone file (not safetensors: {err}).{hint}") from err
    return _parse_meta(path, file_meta)


def peek_backbone_meta(path: str | Path) -> BackboneMeta | None:
    """The :class:`BackboneMeta` of an rsmae backbone file; ``None`` for any other file (header only).

    Raises:
        WeightsError: naming ``path`` when it is a backbone file whose metadata is refused.
    """
    try:
        with safe_open(str(path), framework="pt") as f:
            file_meta = dict(f.metadata() or {})
    except Exception:  # a .pth, a missing file: not ours, timm reports it
        return None
    return _parse_meta(Path(path), file_meta) if META_KEY in file_meta else None


def _parse_meta(path: Path, file_meta: Mapping[str, str]) -> BackboneMeta:
    if META_KEY not in file_meta:
        raise WeightsError(
            f"{path}: no rsmae metadata; it was not written by save_backbone. Use "
            "load_official_mae, load_timm_weights or load_torchgeo_vit for foreign weights"
        )
    try:
        return BackboneMeta.from_json(file_meta[META_KEY])
    except WeightsError as err:
        raise WeightsError(f"{path}: {err}") from err


def save_backbone(encoder: VisionTransformer, path: str | Path, meta: BackboneMeta) -> Path:
    """Write ``encoder`` and ``meta`` to a safetensors file, atomically (:func:`~rsmae.files.atomic_path`).

    Raises:
        WeightsError: when ``meta`` does not describe ``encoder`` (it could not be rebuilt).
    """
    path = Path(path)
    state = {k: v.detach().cpu().contiguous() for k, v in encoder.state_dict().items()}
    meta = dataclasses.replace(meta, format_version=FORMAT_VERSION)  # written in today's layout
    _check_meta_builds(meta, state)
    try:
        with atomic_path(path) as tmp:
            save_file(state, str(tmp), metadata={META_KEY: meta.to_json(), "format": "pt"})
    except (OSError, SafetensorError) as err:
        raise WeightsError(f"{path}: cannot write the backbone there ({err}); choose another --out") from err
    _logger.info("saved backbone %s (bands %s) to %s", meta.preset, meta.bands, path)
    return path


def _build(meta: BackboneMeta) -> VisionTransformer:
    return create_encoder(
        meta.preset,
        in_chans=meta.in_chans,
        img_size=meta.img_size,
        patch_size=meta.patch_size,
        **meta.encoder_kwargs,
    )


def _check_meta_builds(meta: BackboneMeta, state: Mapping[str, Tensor]) -> None:
    """Refuse metadata that would rebuild an encoder of another shape."""
    meta.to_json()
    with torch.device("meta"):
        ref = _build(meta).state_dict()
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
    model = _build(dst)
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
            order) the patch kernels are mapped by band name and the metadata updated.
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
    meta = _parse_meta(path, file_meta)
    dst = retarget(meta, bands, sensor)
    if img_size is not None:
        dst = dataclasses.replace(dst, img_size=img_size)
    return build_and_load(state, path, meta, dst, strict=strict)
