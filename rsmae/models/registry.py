"""Named backbone weights, in the spirit of torchgeo's ``WeightsEnum``: file, hash, bands, statistics.

An entry (:class:`Weights`) names a weights file (a local path, or a URL that rsmae never fetches:
download it yourself and register the local copy), its SHA-256, the encoder preset, the bands in
input-channel order, their statistics and the transforms a user applies before the encoder. Entries
are registered by name (:func:`register_weights`, or :func:`register_backbone` for a
``backbone.safetensors`` written by :func:`~rsmae.models.save_backbone`, whose metadata fills the
entry) and loaded by name (``get_weights(name).load(bands=...)``), which checks the hash first::

    register_backbone("runs/mae_tiny/logs/version_0/backbone.safetensors", name="mae-tiny-s2")
    encoder = get_weights("mae-tiny-s2").load(bands=["B04", "B03", "B02"])

The registry is a plain dict of this module, filled only by explicit calls (nothing at import).

:data:`WEIGHTS_FORMATS` is the one table of weights formats (an rsmae backbone, an official MAE
``.pth``, timm or torchgeo ViT weights, DOFA and Copernicus-FM state dicts and a fixed-band rsmae
backbone, the last three loading into the wavelength-conditioned patch embedding:
:mod:`rsmae.models.dofa`, :mod:`rsmae.models.spectral_warm`) and their loaders;
:func:`load_weights` loads a file of any of them. ``"official_mae"`` is a deprecated spelling of ``"mae"``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from timm.models.vision_transformer import VisionTransformer

from rsmae.errors import WeightsError
from rsmae.models.dofa import load_copernicusfm, load_dofa
from rsmae.models.foreign import load_official_mae, load_timm_weights, load_torchgeo_vit
from rsmae.models.spectral_warm import load_spectral_backbone
from rsmae.models.weights import load_backbone, read_backbone_meta

__all__ = [
    "FORMATS",
    "WEIGHTS_FORMATS",
    "Weights",
    "WeightsFormat",
    "get_weights",
    "list_weights",
    "load_weights",
    "register_backbone",
    "register_weights",
    "sha256_file",
    "weights_format",
]

_logger = logging.getLogger(__name__)
_REGISTRY: dict[str, Weights] = {}


@dataclasses.dataclass(frozen=True)
class WeightsFormat:
    """One layout of weights files and its loader.

    Attributes:
        name: The format's one spelling.
        description: What files of this format are.
        loader: ``loader(path, *, bands, sensor, img_size, ...)`` -> an encoder with ``rsmae_meta``.
        foreign: The file carries no rsmae metadata: its patch kernels are resampled to a given
            ``patch_size``, and its own bands can be named (``src_bands``, timm and torchgeo).
        source_bands: The loader takes ``src_bands`` / ``src_sensor``.
    """

    name: str
    description: str
    loader: Callable[..., VisionTransformer]
    foreign: bool = True
    source_bands: bool = False


WEIGHTS_FORMATS: dict[str, WeightsFormat] = {
    "rsmae": WeightsFormat("rsmae", "an rsmae backbone file (save_backbone)", load_backbone, foreign=False),
    "mae": WeightsFormat("mae", "an official facebookresearch/mae .pth (R, G, B)", load_official_mae),
    "timm": WeightsFormat("timm", "timm ViT weights (R, G, B unless src_bands)", load_timm_weights,
                          source_bands=True),
    "torchgeo": WeightsFormat("torchgeo", "torchgeo's Sentinel-2 ViT weights (13 L1C bands)",
                              load_torchgeo_vit, source_bands=True),
    "dofa": WeightsFormat("dofa", "a DOFA state dict in torchgeo's keys (any bands with a wavelength)",
                          load_dofa),
    "copernicusfm": WeightsFormat("copernicusfm", "a Copernicus-FM state dict in torchgeo's keys (its "
                                  "spectral generator; any bands with a wavelength)", load_copernicusfm),
    "rsmae_spectral": WeightsFormat("rsmae_spectral", "an rsmae backbone file loaded as an any-sensor "
                                    "encoder (conv kernels fitted into the spectral embedding)",
                                    load_spectral_backbone, foreign=False),
}
FORMATS = tuple(WEIGHTS_FORMATS)
_DEPRECATED_SPELLINGS = {"official_mae": "mae"}


def weights_format(name: str, *, what: str = "weights") -> WeightsFormat:
    """The format ``name`` of :data:`WEIGHTS_FORMATS` (a deprecated spelling warns and is accepted).

    Args:
        name: A key of :data:`WEIGHTS_FORMATS` (``"official_mae"``: deprecated spelling of ``"mae"``).
        what: What the error names (a file, a registry entry).

    Raises:
        WeightsError: naming ``what`` and the formats when ``name`` is none of them.
    """
    if name in _DEPRECATED_SPELLINGS:
        warnings.warn(f"weights format {name!r} is deprecated; write {_DEPRECATED_SPELLINGS[name]!r}",
                      DeprecationWarning, stacklevel=3)
        name = _DEPRECATED_SPELLINGS[name]
    if name not in WEIGHTS_FORMATS:
        raise WeightsError(f"{what}: unknown format {name!r}; choose one of {', '.join(FORMATS)}")
    return WEIGHTS_FORMATS[name]


def load_weights(path: str | Path, format: str, *, bands: Sequence[str] | None = None,
                 sensor: str | None = None, img_size: int | None = None, patch_size: int | None = None,
                 **kwargs: Any) -> VisionTransformer:
    """Load a weights file of ``format`` (:data:`WEIGHTS_FORMATS`) adapted by band name to ``bands``.

    Args:
        path: The file.
        format: Its format (:func:`weights_format`).
        bands: Bands of the data to feed (``None``: the file's own).
        sensor: Sensor of ``bands``.
        img_size: Input size (``None``: the loader's default).
        patch_size: Foreign kernels are resampled to it; an rsmae backbone keeps its own (not passed).
        **kwargs: Further arguments of the format's loader (``preset``, ``strict``, ``src_bands``...).

    Raises:
        WeightsError: naming ``path`` when the format is unknown or the weights do not load.
    """
    fmt = weights_format(format, what=str(path))
    if img_size is not None:
        kwargs["img_size"] = img_size
    if patch_size is not None and fmt.foreign:
        kwargs["patch_size"] = patch_size
    return fmt.loader(path, bands=bands, sensor=sensor, **kwargs)


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclasses.dataclass(frozen=True)
class Weights:
    """One named weights file and what feeding it needs.

    Attributes:
        name: Registry name.
        file: Local path, or a URL (never fetched: download it and register the local file).
        sha256: Hex SHA-256 of the file; checked on every load (``None``: not checked, logged).
        preset: Encoder preset.
        bands: Band names in input-channel order.
        sensor: Sensor of ``bands`` (``None`` if unknown).
        mean: Per-band mean in the units of the pixel values (``None`` if unknown).
        std: Per-band standard deviation, same units.
        transforms: What to apply before the encoder, e.g. ``{"normalize": "(x - mean) / std"}``.
        format: ``"rsmae"`` (a backbone file) or a foreign layout: ``"mae"``, ``"timm"``, ``"torchgeo"``,
            ``"dofa"``, ``"copernicusfm"``.
    """

    name: str
    file: str
    sha256: str | None
    preset: str
    bands: tuple[str, ...]
    sensor: str | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    transforms: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    format: str = "rsmae"

    def path(self) -> Path:
        """The local file, its hash checked.

        Raises:
            WeightsError: naming the file when it is a URL, missing, or its hash differs.
        """
        if "://" in self.file:
            raise WeightsError(f"weights {self.name!r}: {self.file} is a URL and rsmae never downloads; "
                               "fetch it yourself and register the local file (file=PATH)")
        path = Path(self.file)
        if not path.is_file():
            raise WeightsError(f"weights {self.name!r}: {path}: no such file; fix the path it was "
                               "registered with")
        if self.sha256 is None:
            _logger.warning("weights %r: no sha256 registered; %s is not checked", self.name, path)
            return path
        actual = sha256_file(path)
        if actual != self.sha256.lower():
            raise WeightsError(f"weights {self.name!r}: {path} has sha256 {actual}, expected {self.sha256}; "
                               "the file changed or is corrupt: fetch it again, or register its new hash")
        return path

    def load(self, *, bands: Sequence[str] | None = None, sensor: str | None = None,
             img_size: int | None = None, strict: bool = True) -> VisionTransformer:
        """Load the encoder (hash checked), adapted by band name to ``bands`` when given."""
        fmt = weights_format(self.format, what=f"weights {self.name!r}")
        extra: dict[str, Any] = {"strict": strict}
        if fmt.foreign:
            extra["preset"] = self.preset
        if fmt.source_bands:
            extra.update(src_bands=self.bands, src_sensor=self.sensor)
        return load_weights(self.path(), fmt.name, bands=bands, sensor=sensor, img_size=img_size, **extra)


def register_weights(name: str, file: str | Path, *, overwrite: bool = False, **fields: Any) -> Weights:
    """Register weights under ``name`` (a :class:`Weights` entry) and return the entry.

    Args:
        name: Registry name.
        file: Local path or URL (:attr:`Weights.file`).
        overwrite: Replace an entry of the same name.
        **fields: The other :class:`Weights` fields, by keyword: ``sha256``, ``preset`` and ``bands``
            (required), ``sensor``, ``mean``, ``std``, ``transforms``, ``format`` (default ``"rsmae"``).

    Raises:
        WeightsError: when ``name`` is taken (pass ``overwrite=True``) or ``format`` is unknown.
        TypeError: when a required field is missing or a field is unknown.
    """
    fields["format"] = weights_format(fields.get("format", "rsmae"), what=f"weights {name!r}").name
    if name in _REGISTRY and not overwrite:
        raise WeightsError(f"weights {name!r} are already registered ({_REGISTRY[name].file}); pass "
                           "overwrite=True or another name")
    for key in ("bands", "mean", "std"):
        if fields.get(key) is not None:
            fields[key] = tuple(fields[key])
    fields["transforms"] = dict(fields.get("transforms") or {})
    entry = Weights(name=name, file=str(file), **fields)
    _REGISTRY[name] = entry
    return entry


def register_backbone(path: str | Path, name: str | None = None, *, sha256: str | None = None,
                      overwrite: bool = False) -> Weights:
    """Register a backbone file written by :func:`~rsmae.models.save_backbone`; its metadata fills the entry.

    Args:
        path: The ``backbone.safetensors``.
        name: Registry name (default: the file's stem).
        sha256: Expected hash (default: computed from the file now, so later changes are caught).
        overwrite: Replace an entry of the same name.
    """
    meta = read_backbone_meta(path)
    transforms = {"normalize": "(x - mean) / std", "gsd_pos_embed": meta.gsd_pos_embed,
                  "reference_gsd": meta.reference_gsd}
    return register_weights(name or Path(path).stem, path, sha256=sha256 or sha256_file(path),
                            preset=meta.preset, bands=meta.bands, sensor=meta.sensor, mean=meta.mean,
                            std=meta.std, transforms=transforms, overwrite=overwrite)


def get_weights(name: str) -> Weights:
    """The registered entry ``name``.

    Raises:
        WeightsError: listing the registered names when ``name`` is not one.
    """
    if name not in _REGISTRY:
        known = ", ".join(sorted(_REGISTRY)) or "none yet"
        raise WeightsError(f"no weights named {name!r} (registered: {known}); register them with "
                           "register_weights or register_backbone")
    return _REGISTRY[name]


def list_weights() -> list[str]:
    """Registered names, sorted."""
    return sorted(_REGISTRY)
