"""The MAE decoder's pixel output for any bands: per-band weights generated from the band's wavelength.

With a :class:`~rsmae.models.spectral_embed.SpectralPatchEmbed` encoder a batch may hold any bands,
so the decoder's last layer cannot be a fixed ``Linear(dim, P*P*C)``. :class:`SpectralPatchHead` is
that layer with one ``(P*P, dim)`` weight and ``(P*P,)`` bias per band, generated like the encoder's
patch kernels (the output side of DOFA's wave-dynamic layer, Xiong et al. 2024)::

    coeffs_c = MLP(fourier(wavelength_c, bandwidth_c))            # (rank,), layer-normed
    W_c = coeffs_c @ basis,  b_c = coeffs_c @ bias_basis          # (P*P, dim), (P*P,)
    pred[..., (p, q, c)] = W_c[(p, q)] . token + b_c[(p, q)]

The output is laid out as :func:`~rsmae.models.patch_embed.patchify` lays out the target (pixel
order ``p, q, c``), so the loss (per-patch normalised over its ``P*P*C`` values) is unchanged. A
band's prediction depends on that band alone: a subset of bands is predicted exactly as the same
model asked for only those bands. Bands without a wavelength (SAR, DEM) get learned weights, as the
encoder's learned kernels (same names).

The generator has its own parameters (not the encoder's): the MAE decoder is dropped after
pretraining, the exported backbone holds only the encoder.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rsmae.models.spectral import band_keys, spectral_features, spectral_frequencies, spectral_mlp

__all__ = ["SpectralPatchHead"]


class SpectralPatchHead(nn.Module):
    """Decoder tokens ``(B, N, dim)`` to ``(B, N, P*P*C)`` pixels of whatever bands are asked for.

    Args:
        dim: Decoder width.
        patch_size: ``P``.
        learned_bands: Bands without a wavelength, given learned weights.
        hidden_dim: Width of the generator MLP.
        rank: Weights are combinations of ``rank`` learned ``(P*P, dim)`` bases.
        num_freqs: Fourier frequencies of the wavelength encoding.
    """

    def __init__(self, dim: int, patch_size: int, *, learned_bands: Sequence[str] = (), hidden_dim: int = 128,
                 rank: int = 32, num_freqs: int = 8) -> None:
        super().__init__()
        self.dim, self.patch_size, self.rank = dim, int(patch_size), rank
        self.pixels = self.patch_size**2
        wave_freqs, width_freqs = spectral_frequencies(num_freqs)
        self.register_buffer("wavelength_freqs", wave_freqs, persistent=False)
        self.register_buffer("bandwidth_freqs", width_freqs, persistent=False)
        self.hyper = spectral_mlp(num_freqs, hidden_dim, rank)
        self.to_weight = nn.Linear(rank, self.pixels * dim)
        self.to_bias = nn.Linear(rank, self.pixels)
        self.learned_weights = nn.ParameterDict(
            {name: nn.Parameter(torch.empty(self.pixels * dim)) for name in learned_bands})
        self.learned_biases = nn.ParameterDict(
            {name: nn.Parameter(torch.empty(self.pixels)) for name in learned_bands})
        self.init_weights()

    def init_weights(self) -> None:
        """Each band's weight starts xavier-like (std ``sqrt(2 / (dim + P*P))``), its bias at zero.

        The generator's coefficients are layer-normed (unit variance over ``rank``), so the basis has
        std ``sqrt(2 / (dim + P*P) / rank)``.
        """
        std = math.sqrt(2.0 / (self.dim + self.pixels))
        for layer in self.hyper:
            if hasattr(layer, "reset_parameters"):
                layer.reset_parameters()
        nn.init.normal_(self.to_weight.weight, std=std / math.sqrt(self.rank))
        nn.init.zeros_(self.to_weight.bias)
        nn.init.zeros_(self.to_bias.weight)
        nn.init.zeros_(self.to_bias.bias)
        for param in self.learned_weights.values():
            nn.init.normal_(param, std=std)
        for param in self.learned_biases.values():
            nn.init.zeros_(param)

    def band_weights(self, bands: Sequence[str], sensor: str | None = None) -> tuple[Tensor, Tensor]:
        """Each band's weight ``(C, P*P, dim)`` and bias ``(C, P*P)``.

        Raises:
            BandError: naming a band without wavelength or learned weights, or repeated bands.
        """
        keys = band_keys(bands, sensor, self.learned_weights)
        spectra = sorted({k for k in keys if isinstance(k, tuple)})
        raw: dict[Any, tuple[Tensor, Tensor]] = {}
        if spectra:
            ref = self.to_weight.weight
            feats = spectral_features(torch.tensor(spectra, device=ref.device), self.wavelength_freqs,
                                      self.bandwidth_freqs)
            coeffs = self.hyper(feats.to(ref.dtype))
            weights, biases = self.to_weight(coeffs), self.to_bias(coeffs)
            raw.update({key: (weights[i], biases[i]) for i, key in enumerate(spectra)})
        for key in keys:
            if isinstance(key, str):
                raw[key] = (self.learned_weights[key], self.learned_biases[key])
        weight = torch.stack([raw[key][0] for key in keys]).view(len(keys), self.pixels, self.dim)
        return weight, torch.stack([raw[key][1] for key in keys])

    def forward(self, x: Tensor, bands: Sequence[str], sensor: str | None = None) -> Tensor:
        """Predict ``(B, N, P*P*C)`` pixels of ``bands`` (pixel order ``p, q, c``) from ``(B, N, dim)``."""
        weight, bias = self.band_weights(bands, sensor)
        weight = weight.transpose(0, 1).reshape(self.pixels * len(bands), self.dim)  # rows (p, q, c)
        return F.linear(x, weight.to(x.dtype), bias.t().reshape(-1).to(x.dtype))
