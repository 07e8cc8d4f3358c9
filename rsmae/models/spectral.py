"""Pure helpers of the wavelength-conditioned layers: band spectra, options, generator, kernel resizing.

:func:`band_spectrum` turns a band name into the central wavelength and bandwidth (µm) the weight
generators of :class:`~rsmae.models.spectral_embed.SpectralPatchEmbed` (patch kernels) and
:class:`~rsmae.models.spectral_head.SpectralPatchHead` (the MAE decoder's pixel output) read;
:func:`band_keys` checks a band list, :func:`spectral_features` and :func:`spectral_mlp` are the
generator's input encoding and MLP; :func:`resize_kernels` is FlexiViT's pseudo-inverse resize (Beyer
et al. 2023) of patch kernels to another patch size.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rsmae.bands import SENSORS, Band, Sensor, get_sensor
from rsmae.errors import BandError, ModelConfigError

__all__ = ["DEFAULT_BANDWIDTH_NM", "SPECTRAL_OPTIONS", "band_keys", "band_spectrum", "check_spectral_options",
           "resize_kernels", "resize_matrix", "spectral_features", "spectral_mlp"]

DEFAULT_BANDWIDTH_NM = 100.0  # bands without one in the registry (plain RGB cameras: ~100 nm filters)
SPECTRAL_OPTIONS = frozenset({"kernel_size", "hidden_dim", "rank", "num_freqs", "learned_bands"})


def _spectrum(band: Band) -> tuple[float, float]:
    return band.wavelength_nm / 1000.0, (band.bandwidth_nm or DEFAULT_BANDWIDTH_NM) / 1000.0


def band_spectrum(name: str, sensor: str | None = None) -> tuple[float, float] | None:
    """Central wavelength and bandwidth in µm of the band ``name``, ``None`` when no sensor has it.

    ``"sensor:band"`` looks in that sensor; a plain name in ``sensor`` first, then in every
    registered sensor, where all its meanings must agree (``"B02"`` is blue for Sentinel-2 and green
    for Landsat TM).

    Raises:
        BandError: for an unknown sensor, or a plain name that means different bands in two sensors.
    """
    if ":" in name:
        sensor_name, band_name = name.split(":", 1)
        return _spectrum(get_sensor(sensor_name).band(band_name))
    if sensor is not None:
        band = _find(get_sensor(sensor), name)
        if band is not None:
            return _spectrum(band)
    found: dict[tuple[float, float], list[str]] = {}
    for sensor_obj in SENSORS.values():
        band = _find(sensor_obj, name)
        if band is not None:
            found.setdefault(_spectrum(band), []).append(sensor_obj.name)
    if len(found) > 1:
        where = "; ".join(f"{', '.join(s)}: {w * 1000:g} nm" for (w, _), s in found.items())
        raise BandError(f"band {name!r} means different bands ({where}); name it as "
                        f"'<sensor>:{name}' or set the sensor (use_bands(model, bands, sensor=...))")
    return next(iter(found), None)


_HOW_TO_REGISTER = ("add it to a sensor of rsmae/bands.py (name, wavelength_nm, bandwidth_nm), name it as "
                    "'<sensor>:<band>', or give it a learned kernel with "
                    "patch_embed.register_band_embedding({name!r}) (or create_encoder(..., "
                    "spectral_embed={{'learned_bands': [{name!r}]}}))")


def band_keys(bands: Sequence[str], sensor: str | None,
              learned: Collection[str] = ()) -> list[str | tuple[float, float]]:
    """What generates each band's weights: a ``learned`` band's name or ``(wavelength, bandwidth)`` in µm.

    Raises:
        BandError: naming a band without wavelength or learned weights, or repeated bands.
    """
    if isinstance(bands, str) or not bands:
        raise BandError(f"bands must be a non-empty list of band names, got {bands!r}")
    keys: list[str | tuple[float, float]] = []
    for name in bands:
        key = name if name in learned else band_spectrum(name, sensor)
        if key is None:
            raise BandError(f"band {name!r} has no wavelength: no sensor of rsmae.bands "
                            f"({', '.join(SENSORS)}) knows it and it has no learned kernel; "
                            + _HOW_TO_REGISTER.format(name=name))
        keys.append(key)
    repeated = sorted({str(b) for b, k in zip(bands, keys, strict=True) if keys.count(k) > 1})
    if repeated:
        raise BandError(f"bands {list(bands)} repeat a band ({', '.join(repeated)}); give each band once")
    return keys


def spectral_mlp(num_freqs: int, hidden_dim: int, rank: int, **dd: Any) -> nn.Sequential:
    """The generator MLP: :func:`spectral_features` ``(N, 2F + 8)`` to ``rank`` layer-normed coefficients."""
    return nn.Sequential(
        nn.Linear(2 * num_freqs + 8, hidden_dim, **dd), nn.GELU(),
        nn.Linear(hidden_dim, hidden_dim, **dd), nn.GELU(),
        nn.Linear(hidden_dim, rank, **dd), nn.LayerNorm(rank, **dd))


def spectral_frequencies(num_freqs: int, device: Any = None) -> tuple[Tensor, Tensor]:
    """Frequencies of the wavelength (cycles per µm: periods 16 µm to 31 nm) and bandwidth encodings."""
    return (2.0 ** torch.linspace(-4, 5, num_freqs, device=device),
            2.0 ** torch.linspace(-3, 0, 4, device=device))  # cycles per octave of bandwidth


def spectral_features(spectra: Tensor, wavelength_freqs: Tensor, bandwidth_freqs: Tensor) -> Tensor:
    """Fourier features ``(N, 2F + 8)`` of ``(N, 2)`` wavelengths and bandwidths in µm."""
    wave = 2 * math.pi * spectra[:, :1].float() * wavelength_freqs
    width = 2 * math.pi * torch.log2(spectra[:, 1:].float()) * bandwidth_freqs
    return torch.cat([wave.sin(), wave.cos(), width.sin(), width.cos()], dim=1)


def _find(sensor: Sensor, name: str) -> Band | None:
    try:
        return sensor.band(name)
    except BandError:
        return None


def check_spectral_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """The options of a :class:`SpectralPatchEmbed` (``spectral_embed=``), checked as plain data.

    Raises:
        ModelConfigError: on keys outside :data:`SPECTRAL_OPTIONS` or values of the wrong type.
    """
    refused = sorted(map(str, set(options) - SPECTRAL_OPTIONS))
    if refused:
        raise ModelConfigError(f"spectral_embed option(s) {', '.join(map(repr, refused))} refused; "
                               f"choose from {', '.join(sorted(SPECTRAL_OPTIONS))}")
    out = dict(options)
    for key, value in out.items():
        if key == "learned_bands":
            ok = isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value)
        else:
            ok = isinstance(value, int) and not isinstance(value, bool) and value > 0
        if not ok:
            kind = "a list of band names" if key == "learned_bands" else "a positive integer"
            raise ModelConfigError(f"spectral_embed option {key}={value!r} must be {kind}")
    return out


def resize_matrix(old: int, new: int) -> Tensor:
    """The ``(new*new, old*old)`` matrix of bilinear resizing of an ``old x old`` patch to ``new x new``."""
    basis = torch.eye(old * old, dtype=torch.float64).view(old * old, 1, old, old)
    out = F.interpolate(basis, size=(new, new), mode="bilinear", align_corners=False, antialias=False)
    return out.view(old * old, new * new).T


def resize_kernels(kernels: Tensor, new: int, matrix: Tensor | None = None) -> Tensor:
    """Resize ``(..., P, P)`` kernels to ``(..., new, new)`` so tokens of resized patches are kept.

    FlexiViT's pseudo-inverse resize: with ``R`` the bilinear resize of patches (:func:`resize_matrix`),
    the new kernel ``w'`` minimises ``|R^T w' - w|``, so ``<R x, w'> ~= <x, w>``; exact when enlarging.

    Args:
        kernels: Kernels of size ``P`` in their last two dimensions.
        new: The new size.
        matrix: ``pinv(resize_matrix(P, new))`` when already computed, ``(P*P, new*new)``.
    """
    old = kernels.shape[-1]
    if old == new:
        return kernels
    if matrix is None:
        matrix = torch.linalg.pinv(resize_matrix(old, new))
    flat = kernels.reshape(-1, old * old) @ matrix.to(kernels)
    return flat.view(*kernels.shape[:-2], new, new)
