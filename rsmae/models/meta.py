"""What travels with a backbone's weights (:class:`BackboneMeta`) and reading it from a file's header.

No model is built here: :mod:`rsmae.models.vit` reads a file's metadata to set the defaults of a
timm model, and :mod:`rsmae.models.weights` loads and saves whole backbones on top of both.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path

from safetensors import safe_open

from rsmae.errors import WeightsError
from rsmae.models.timm_cfg import ENCODER_KWARGS, PATCH_EMBEDS, refused_encoder_kwargs

__all__ = ["FORMAT_VERSION", "META_KEY", "BackboneMeta", "check_encoder_kwargs", "parse_meta",
           "peek_backbone_meta", "read_backbone_meta"]

META_KEY = "rsmae"
# 1: the first files (no version field); 2: adds format_version, gsd_pos_embed and reference_gsd;
# 3: adds patch_embed, for spectral backbones only: conv and grouped ones stay version 2 (to_json).
FORMAT_VERSION = 3


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
        patch_embed: The patch embedding (:data:`~rsmae.models.timm_cfg.PATCH_EMBEDS`): ``"conv"``
            (timm's), ``"grouped"`` (set from ``band_groups`` in ``encoder_kwargs``), or ``"spectral"``
            (kernels generated from band wavelengths, options in ``encoder_kwargs["spectral_embed"]``):
            such a backbone takes any bands with a wavelength; ``bands`` are those it is built for.
        format_version: Version of this metadata layout (:data:`FORMAT_VERSION`; conv and grouped
            backbones stay at 2, the last layout change concerns spectral ones).
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
    patch_embed: str = "conv"
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        if self.format_version > FORMAT_VERSION:
            raise WeightsError(
                f"backbone metadata of format version {self.format_version}, newer than this rsmae "
                f"reads ({FORMAT_VERSION}); upgrade rsmae"
            )
        check_encoder_kwargs(self.encoder_kwargs)
        self._check_patch_embed()
        self.bands = list(self.bands)
        if len(self.bands) != self.in_chans:
            raise WeightsError(f"in_chans={self.in_chans} but {len(self.bands)} bands {self.bands}")
        for name in ("mean", "std"):
            stats = getattr(self, name)
            if stats is not None:
                if len(stats) != self.in_chans:
                    raise WeightsError(f"{name} has {len(stats)} values for {self.in_chans} bands")
                setattr(self, name, [float(v) for v in stats])

    def _check_patch_embed(self) -> None:
        grouped = self.encoder_kwargs.get("band_groups") is not None
        if grouped and self.patch_embed == "conv":
            self.patch_embed = "grouped"
        if self.patch_embed not in PATCH_EMBEDS:
            raise WeightsError(f"backbone metadata patch_embed={self.patch_embed!r} is none of "
                               f"{', '.join(PATCH_EMBEDS)}; upgrade rsmae or fix the metadata")
        if (self.patch_embed == "grouped") != grouped:
            raise WeightsError(f"backbone metadata patch_embed={self.patch_embed!r} but band_groups "
                               f"{'given' if grouped else 'missing'} in encoder_kwargs; they go together")
        if "spectral_embed" in self.encoder_kwargs and self.patch_embed != "spectral":
            raise WeightsError(f"backbone metadata holds spectral_embed options but patch_embed="
                               f"{self.patch_embed!r}; set patch_embed='spectral' or drop them")
        if self.patch_embed != "spectral":  # the version-2 layout holds conv and grouped backbones
            self.format_version = min(self.format_version, 2)

    def to_json(self) -> str:
        """Serialise to a JSON string (raises ``WeightsError`` on non-JSON encoder arguments).

        Conv and grouped backbones keep the version-2 layout (no ``patch_embed``), so rsmae releases
        before version 3 still read them; spectral ones are version 3.
        """
        data = dataclasses.asdict(self)
        if self.patch_embed == "spectral":
            data["format_version"] = max(self.format_version, 3)
        else:
            del data["patch_embed"]
        try:
            return json.dumps(data, sort_keys=True)
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


def check_encoder_kwargs(kwargs: object) -> None:
    """Refuse ``encoder_kwargs`` other than an object of :data:`ENCODER_KWARGS` keys."""
    if not isinstance(kwargs, Mapping):
        raise WeightsError(f"backbone metadata encoder_kwargs is a {type(kwargs).__name__}, not an object")
    refused = refused_encoder_kwargs(kwargs)
    if refused:
        raise WeightsError(
            f"backbone metadata encoder_kwargs key(s) {', '.join(map(repr, refused))} refused: only "
            f"{', '.join(sorted(ENCODER_KWARGS))} may build the encoder, never timm options that fetch or "
            "read files; remove them, or re-export the backbone with save_backbone")


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
    return parse_meta(path, file_meta)


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
    return parse_meta(Path(path), file_meta) if META_KEY in file_meta else None


def parse_meta(path: Path, file_meta: Mapping[str, str]) -> BackboneMeta:
    """The :class:`BackboneMeta` in a safetensors header's metadata ``file_meta`` of ``path``.

    Raises:
        WeightsError: naming ``path`` when it holds no rsmae metadata or refused metadata.
    """
    if META_KEY not in file_meta:
        raise WeightsError(
            f"{path}: no rsmae metadata; it was not written by save_backbone. Use "
            "load_official_mae, load_timm_weights or load_torchgeo_vit for foreign weights"
        )
    try:
        return BackboneMeta.from_json(file_meta[META_KEY])
    except WeightsError as err:
        raise WeightsError(f"{path}: {err}") from err


