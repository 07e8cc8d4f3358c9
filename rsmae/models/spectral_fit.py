"""Fit the output layers of a :class:`~rsmae.models.spectral_embed.SpectralPatchEmbed` to given kernels.

A warm start of the wavelength-conditioned embedding from weights whose patch kernels come from
elsewhere (DOFA's or Copernicus-FM's generator, a fixed-band backbone's conv) needs, for a list of
band spectra, the embedding to generate given kernels and biases. The generator is
``coeffs = hyper(features(spectrum))`` (an MLP ending in a LayerNorm of width ``rank``) followed by the
linear layers ``to_kernel`` and ``to_bias``. :func:`fit_output_layers` keeps the MLP as initialised
and solves the two linear layers in closed form (min-norm kernel ridge regression, ridge relative
``1e-10``): with ``rank >= N`` spectra the fit is exact up to rounding (the LayerNorm's ``rank``
outputs sum to zero, so ``rank`` coefficients and the bias column span at most ``rank`` dimensions).
Other wavelengths get the blend of the fitted kernels that the MLP's features give them, a warm
start for fine-tuning rather than the source model's kernel. Give it room: with ``rank`` about ``N``
the design is ill-conditioned and kernels of other wavelengths blow up (31 registered spectra from a
tiny DOFA, rank 32: their largest values a median 5 times the fitted kernels', up to 19 times); with
``rank >= 2N`` they keep the fitted kernels' scale (rank 62: 1.1 times) and the fit stays exact
(:func:`default_rank`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from torch import Tensor

from rsmae.errors import WeightsError
from rsmae.models.spectral import spectral_features
from rsmae.models.spectral_embed import SpectralPatchEmbed

__all__ = ["RIDGE", "default_rank", "fit_output_layers", "target_raw"]

_logger = logging.getLogger(__name__)
RIDGE = 1e-10  # relative to the mean squared norm of the design rows


def default_rank(n_spectra: int) -> int:
    """The generator rank a fit to ``n_spectra`` bands gets unless set: twice the band count, at least 64."""
    return max(64, 2 * n_spectra)


def target_raw(conv_kernels: Tensor, n_bands: int, kernel_size: int) -> Tensor:
    """The raw generator output that makes a set of ``n_bands`` bands use ``conv_kernels`` in its conv.

    :meth:`SpectralPatchEmbed.band_kernels` divides the generator's output by the kernel size and
    :meth:`SpectralPatchEmbed.conv_params` averages over the set's bands, where DOFA, Copernicus-FM and
    a plain conv sum: the raw output is ``conv_kernel * kernel_size * n_bands``.
    """
    return conv_kernels * (kernel_size * n_bands)


@torch.no_grad()
def fit_output_layers(embed: SpectralPatchEmbed, spectra: Sequence[tuple[float, float]], raw: Tensor,
                      biases: Tensor | None) -> float:
    """Solve ``embed.to_kernel`` and ``embed.to_bias`` so the spectra generate ``raw`` and ``biases``.

    Args:
        embed: The embedding (its ``hyper`` MLP is kept; its output layers are overwritten).
        spectra: ``(wavelength, bandwidth)`` in µm of ``N`` distinct bands.
        raw: Raw generator outputs ``(N, D, K, K)`` at ``embed.kernel_size`` (:func:`target_raw`).
        biases: ``(N, D)`` biases, or ``None`` when the embedding has none.

    Returns:
        The largest absolute fit error relative to the largest target value (0 when exact).

    Raises:
        WeightsError: when the shapes do not fit the embedding.
    """
    k, n = embed.kernel_size, len(spectra)
    if tuple(raw.shape) != (n, embed.embed_dim, k, k):
        raise WeightsError(f"kernels of shape {tuple(raw.shape)} do not fit the spectral embedding: "
                           f"expected ({n}, {embed.embed_dim}, {k}, {k})")
    ref = embed.to_kernel.weight
    feats = spectral_features(torch.tensor(list(spectra), device=ref.device), embed.wavelength_freqs,
                              embed.bandwidth_freqs)
    coeffs = embed.hyper(feats.to(ref.dtype)).double()
    design = torch.cat([coeffs, torch.ones(n, 1, dtype=torch.float64, device=ref.device)], dim=1)
    parts = [raw.reshape(n, -1)]
    if embed.to_bias is not None:
        if biases is None:
            raise WeightsError("the spectral embedding has a bias but the source kernels come without one")
        parts.append(biases.reshape(n, -1))
    target = torch.cat(parts, dim=1).double().to(ref.device)
    gram = design @ design.T
    ridge = RIDGE * float(gram.diagonal().mean())
    eye = torch.eye(n, dtype=gram.dtype, device=gram.device)
    solution = design.T @ torch.linalg.solve(gram + ridge * eye, target)
    split = raw[0].numel()
    embed.to_kernel.weight.copy_(solution[:-1, :split].T)
    embed.to_kernel.bias.copy_(solution[-1, :split])
    if embed.to_bias is not None:
        embed.to_bias.weight.copy_(solution[:-1, split:].T)
        embed.to_bias.bias.copy_(solution[-1, split:])
    embed.clear_cache()
    error = float((design @ solution - target).abs().max() / target.abs().max().clamp_min(1e-12))
    bad = error > 1e-3
    _logger.log(logging.WARNING if bad else logging.INFO, "spectral generator fitted to %d bands (rank %d): "
                "largest relative error %.2g%s", n, embed.rank, error,
                "; raise spectral_embed rank to twice the band count" if bad else "")
    return error
