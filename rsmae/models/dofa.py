"""DOFA and Copernicus-FM state dicts (torchgeo's key layout) as rsmae any-sensor backbones.

torchgeo's ``DOFA`` and ``CopernicusFM`` are ViTs with timm's ``Block``: ``cls_token``, ``pos_embed``
(fixed sin-cos), ``blocks.N.*`` and the final ``norm`` (``fc_norm`` with ``global_pool=True``) load by
key into an rsmae encoder whose patch embedding is a
:class:`~rsmae.models.spectral_embed.SpectralPatchEmbed`; ``pos_embed`` is refitted to the grid when
the image or patch size differs (:func:`~rsmae.models.adapt.checkpoint_filter_fn`).

Their kernel generators (:mod:`rsmae.models.wavegen`) differ from ours: a transformer over the band
set (a band's kernel depends on the bands it comes with) against our per-band MLP (a band's kernel
depends on that band alone), and no tensor has a counterpart of the same shape. So the design is
"generate and fit": the file's generator gives the kernels and bias of the loaded band set (``bands``,
default the 13 Sentinel-2 L1C bands) and of every sensor of :mod:`rsmae.bands` (each with its own
bands), a band taking its kernel from the first of these sets that holds its spectrum; then our
generator's output layers are fitted to them (:func:`~rsmae.models.spectral_fit.fit_output_layers`;
``rank`` defaults to twice the band count, so the fit is exact). On the loaded band set and on each sensor's
full set the embedding then equals the file's: our mean over bands times ``C`` is their sum. Two
differences stay: their conv pads by one pixel (each patch starts one pixel up and left), ours does
not; other band sets use kernels fitted for their own sets, not regenerated for the new set.

Copernicus-FM adds metadata encodings (longitude/latitude, time, area) to the position table. For
unknown metadata (NaN) they are the constant ``coord_fc(coord_token) + scale_fc(scale_token) +
time_fc(time_token)``, folded into ``cls_token`` and the patch bias; known metadata cannot be fed.
Its variable (language-embedding) generator has no counterpart: bands without a wavelength need a
learned kernel (``register_band_embedding``). Its LayerNorms use eps 1e-5, ours 1e-6.

Every key of the file is mapped or reported (:func:`map_keys`, logged on load).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor

from rsmae.bands import SENSORS, get_sensor
from rsmae.errors import ModelConfigError, WeightsError
from rsmae.models.adapt import checkpoint_filter_fn
from rsmae.models.foreign import ForeignTarget
from rsmae.models.keys import PREFIXES, load_checked
from rsmae.models.layers import ENCODER_PRESETS
from rsmae.models.meta import BackboneMeta
from rsmae.models.spectral import band_keys, band_spectrum, check_spectral_options
from rsmae.models.spectral_fit import default_rank, fit_output_layers, target_raw
from rsmae.models.timm_cfg import attach_meta
from rsmae.models.vit import create_encoder
from rsmae.models.wavegen import WaveGenerator
from rsmae.models.weights import read_weights

__all__ = ["KeyReport", "WAVE_FORMATS", "load_copernicusfm", "load_dofa", "map_keys", "wave_format"]

_logger = logging.getLogger(__name__)

# format -> prefix of its spectral kernel generator
WAVE_FORMATS = {"dofa": "patch_embed.", "copernicusfm": "patch_embed_spectral."}
_MARKER = "weight_generator.fc_weight.weight"
_META_KEYS = ("coord_token", "scale_token", "time_token", "coord_fc.", "scale_fc.", "time_fc.")
_DEFAULT_SENSOR = "s2-l1c"
_GENERATOR = "kernel generator: kernels generated for the bands, rsmae's generator fitted to them"
_FOLDED = ("metadata encoding: its value for unknown metadata folded into cls_token and the patch "
           "bias; known metadata (lon/lat, time, area) cannot be fed")
_VARIABLE = ("variable (language-embedding) generator: no counterpart; give bands without a wavelength "
             "a learned kernel (register_band_embedding)")


@dataclasses.dataclass
class KeyReport:
    """What became of each key of a file.

    Attributes:
        mapped: File key -> encoder key it was loaded into.
        reported: File key -> why it was not loaded as is (used to generate kernels, folded, dropped).
    """

    mapped: dict[str, str] = dataclasses.field(default_factory=dict)
    reported: dict[str, str] = dataclasses.field(default_factory=dict)

    def unaccounted(self, keys: Sequence[str]) -> list[str]:
        """Keys of ``keys`` neither mapped nor reported."""
        return [k for k in keys if k not in self.mapped and k not in self.reported]


def _strip_wrappers(key: str) -> str:
    while key.startswith(PREFIXES):
        key = key[len(next(p for p in PREFIXES if key.startswith(p))):]
    return key


def wave_format(names: Iterable[str]) -> str | None:
    """``"dofa"`` or ``"copernicusfm"`` when the state-dict keys ``names`` hold its kernel generator."""
    stripped = {_strip_wrappers(n) for n in names}
    return next((f for f, p in WAVE_FORMATS.items() if f"{p}{_MARKER}" in stripped), None)


def _check_format(names: Sequence[str], fmt: str, path: Path) -> None:
    """Refuse a file that is not of ``fmt``, naming the file and the format it looks like."""
    if f"{WAVE_FORMATS[fmt]}{_MARKER}" in names:
        return
    other = next((f for f, p in WAVE_FORMATS.items() if f"{p}{_MARKER}" in names), None)
    hint = (f"it looks like {other!r} weights: load it with format {other!r}" if other else
            "a plain ViT (patch_embed.proj.weight): use format 'timm', 'torchgeo' or 'rsmae'"
            if "patch_embed.proj.weight" in names else "check the file")
    raise WeightsError(f"{path}: not {fmt!r} weights in torchgeo's key layout (no "
                       f"{WAVE_FORMATS[fmt]}{_MARKER}; keys look like {list(names)[:4]}); {hint}")


def _classify(name: str, fmt: str, has_norm: bool) -> tuple[str | None, str | None]:
    """``(encoder key, None)`` for a mapped key, ``(None, reason)`` for a reported one."""
    if name.startswith(WAVE_FORMATS[fmt]):
        return None, _GENERATOR
    if fmt == "copernicusfm" and name.startswith("patch_embed_variable."):
        return None, _VARIABLE
    if fmt == "copernicusfm" and name.startswith(_META_KEYS):
        return None, _FOLDED
    if name in ("cls_token", "pos_embed") or name.startswith(("blocks.", "norm.")):
        return name, None
    if name.startswith("fc_norm."):  # theirs normalises the pooled token, ours every token
        return (None, "dropped: the file has norm too") if has_norm else ("norm." + name[8:], None)
    if name.startswith("head."):
        return None, "dropped: classifier head, not part of the encoder"
    return None, f"unknown: no part of a {fmt} ViT"


def map_keys(state: Mapping[str, Tensor], fmt: str, path: str | Path = "<state dict>"
             ) -> tuple[dict[str, Tensor], dict[str, Tensor], KeyReport]:
    """Split a DOFA or Copernicus-FM state dict into encoder tensors and the rest (pure).

    Args:
        state: The file's tensors (wrapper prefixes such as ``model.`` are looked through).
        fmt: ``"dofa"`` or ``"copernicusfm"``.
        path: Named in errors.

    Returns:
        The encoder tensors under rsmae's names, the other tensors under their stripped names
        (generator, metadata encoding...), and the report of every original key.

    Raises:
        WeightsError: naming ``path`` when the file is not of ``fmt``.
    """
    names = {key: _strip_wrappers(key) for key in state}
    _check_format(list(names.values()), fmt, Path(path))
    has_norm = any(n.startswith("norm.") for n in names.values())
    encoder: dict[str, Tensor] = {}
    rest: dict[str, Tensor] = {}
    report = KeyReport()
    for key, name in names.items():
        dst, reason = _classify(name, fmt, has_norm)
        if dst is not None:
            encoder[dst], report.mapped[key] = state[key], dst
        else:
            rest[name], report.reported[key] = state[key], str(reason)
    return encoder, rest, report


def _metadata_constant(rest: Mapping[str, Tensor]) -> Tensor:
    """Copernicus-FM's metadata encoding for unknown metadata: ``sum fc(token)`` over coord, scale, time."""
    total = 0
    for part, token in (("coord", "coord_token"), ("scale", "scale_token"), ("time", "time_token")):
        weight, bias = rest[f"{part}_fc.weight"].float(), rest[f"{part}_fc.bias"].float()
        total = total + rest[token].float().reshape(-1) @ weight.T + bias
    return torch.as_tensor(total)


def _band_sets(bands: Sequence[str], sensor: str | None) -> list[list[tuple[float, float]]]:
    """Spectra of the loaded bands, then of each registered sensor's bands with a wavelength."""
    sets = [[k for k in band_keys(bands, sensor) if isinstance(k, tuple)]]
    for name, sensor_obj in SENSORS.items():
        spectra = [band_spectrum(f"{name}:{b.name}") for b in sensor_obj.bands]
        sets.append([s for s in spectra if s is not None])
    return [s for s in sets if s]


def _targets(gen: WaveGenerator, sets: Sequence[Sequence[tuple[float, float]]], kernel_size: int,
             shift: Tensor | None) -> tuple[list[tuple[float, float]], Tensor, Tensor]:
    """Each distinct spectrum's raw kernel and bias, from the first band set holding it."""
    spectra: list[tuple[float, float]] = []
    raws: list[Tensor] = []
    biases: list[Tensor] = []
    for band_set in sets:
        kernels, bias = gen(band_set)
        if shift is not None:
            bias = bias + shift
        for spectrum, kernel in zip(band_set, target_raw(kernels, len(band_set), kernel_size), strict=True):
            if spectrum not in spectra:
                spectra.append(spectrum)
                raws.append(kernel)
                biases.append(bias)
    return spectra, torch.stack(raws), torch.stack(biases)


def _preset(encoder: Mapping[str, Tensor], preset: str | None, path: Path) -> str:
    if preset is not None:
        return preset
    if "cls_token" not in encoder:
        raise WeightsError(f"{path}: no cls_token, so no ViT width; the file is incomplete")
    width = int(encoder["cls_token"].shape[-1])
    depth = len({k.split(".")[1] for k in encoder if k.startswith("blocks.")})
    for name, cfg in ENCODER_PRESETS.items():
        if cfg["embed_dim"] == width and cfg["depth"] == depth:
            return name
    raise WeightsError(f"{path}: no encoder preset has embed_dim={width} and depth={depth}; pass preset= "
                       "and encoder_kwargs= (embed_dim, depth, num_heads)")


def _spectral_options(into: ForeignTarget, kernel_size: int, n_spectra: int) -> tuple[dict, dict]:
    """The encoder arguments and spectral options: the file's kernel size, :func:`default_rank`."""
    kwargs = dict(into.encoder_kwargs or {})
    options = check_spectral_options(kwargs.pop("spectral_embed", None) or {})
    if options.setdefault("kernel_size", kernel_size) != kernel_size:
        raise ModelConfigError(f"spectral_embed kernel_size={options['kernel_size']} but the file's kernels "
                               f"are {kernel_size} px; leave kernel_size out (patch_size resizes them)")
    options.setdefault("rank", default_rank(n_spectra))
    return kwargs, options


def _load_wave(path: str | Path, fmt: str, into: ForeignTarget, seed: int) -> VisionTransformer:
    """Load a DOFA or Copernicus-FM file into an rsmae encoder with a spectral patch embedding."""
    path = Path(path)
    state, _ = read_weights(path)
    encoder, rest, report = map_keys(state, fmt, path)
    unknown = [k for k, why in report.reported.items() if why.startswith("unknown")]
    if unknown and into.strict:
        raise WeightsError(f"{path}: keys {unknown[:6]} are no part of a {fmt} ViT; pass strict=False to "
                           "ignore them")
    preset = _preset(encoder, into.preset, path)
    prefix = len(WAVE_FORMATS[fmt])
    gen_state = {k[prefix:]: v for k, v in rest.items() if k.startswith(WAVE_FORMATS[fmt])}
    try:
        gen = WaveGenerator(gen_state, fmt, int(encoder["cls_token"].shape[-1]))
    except WeightsError as err:
        raise WeightsError(f"{path}: {err}") from err
    shift = _metadata_constant(rest) if fmt == "copernicusfm" else None
    if shift is not None:
        encoder["cls_token"] = encoder["cls_token"] + shift.to(encoder["cls_token"].dtype)
    bands = list(into.bands) if into.bands is not None else list(get_sensor(_DEFAULT_SENSOR).names)
    sensor = into.sensor if into.bands is not None else _DEFAULT_SENSOR
    spectra, raw, biases = _targets(gen, _band_sets(bands, sensor), gen.kernel_size, shift)
    kwargs, options = _spectral_options(into, gen.kernel_size, len(spectra))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = create_encoder(preset, in_chans=len(bands), img_size=into.img_size,
                               patch_size=into.patch_size or gen.kernel_size, patch_embed="spectral",
                               bands=bands, sensor=sensor, spectral_embed=options, **kwargs)
    fit_output_layers(model.patch_embed, spectra, raw, biases)
    filtered = checkpoint_filter_fn(encoder, model)
    filtered.update({f"patch_embed.{k}": v for k, v in model.patch_embed.state_dict().items()})
    load_checked(model, filtered, str(path), strict=into.strict, optional={"norm.weight", "norm.bias"})
    _logger.info("%s: %d keys mapped by name, %d reported (%s)", path, len(report.mapped),
                 len(report.reported), sorted({why.split(":")[0] for why in report.reported.values()}))
    meta = BackboneMeta(preset=preset, img_size=into.img_size, patch_size=model.patch_embed.patch_size[0],
                        in_chans=len(bands), bands=bands, sensor=sensor, mean=None, std=None, gsd=None,
                        encoder_kwargs={**kwargs, "spectral_embed": model.patch_embed.config()},
                        source=f"{fmt} {path.name}", patch_embed="spectral")
    return attach_meta(model, meta)


def load_dofa(path: str | Path, *, seed: int = 0, **target: Any) -> VisionTransformer:
    """Load a DOFA state dict (torchgeo's ``DOFA`` keys) as an rsmae any-sensor encoder.

    See :mod:`rsmae.models.dofa` for what maps and what is generated and fitted. Nothing is downloaded.

    Args:
        path: The ``.pth`` (or safetensors) file.
        seed: Seed of the initialisation of our generator's MLP (the fit is done on top of it).
        **target: :class:`~rsmae.models.foreign.ForeignTarget` options: ``bands`` (default the 13
            Sentinel-2 L1C bands; any bands with a wavelength), ``sensor``, ``preset`` (inferred from
            width and depth), ``img_size``, ``patch_size`` (default the file's kernel size),
            ``encoder_kwargs`` (``spectral_embed`` options), ``strict``.

    Returns:
        The encoder with ``rsmae_meta`` (``patch_embed="spectral"``, no statistics: DOFA's depend on
        the sensor).

    Raises:
        WeightsError: naming ``path`` when it is not DOFA weights or does not load.
        BandError: naming a band without a wavelength.
    """
    return _load_wave(path, "dofa", ForeignTarget(**target), seed)


def load_copernicusfm(path: str | Path, *, seed: int = 0, **target: Any) -> VisionTransformer:
    """Load a Copernicus-FM state dict (torchgeo's ``CopernicusFM`` keys) as an rsmae any-sensor encoder.

    As :func:`load_dofa`; its spectral generator is used, its metadata encoding folded in for unknown
    metadata, its variable generator reported unused (:mod:`rsmae.models.dofa`).
    """
    return _load_wave(path, "copernicusfm", ForeignTarget(**target), seed)
