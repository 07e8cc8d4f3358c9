"""DOFA's and Copernicus-FM's patch-kernel generator, rebuilt from a state dict to generate kernels.

DOFA (Xiong et al. 2024, torchgeo's ``torchgeo/models/dofa.py``) and Copernicus-FM (Wang et al. 2025,
``torchgeo/models/copernicusfm.py``) generate the patch kernel of each band from its wavelength with
one generator under a prefix (``patch_embed.`` in DOFA, ``patch_embed_spectral.`` in Copernicus-FM)::

    <prefix>fclayer.w1 / w2                        residual MLP on the wavelength encoding (dim E = 128)
    <prefix>weight_generator.weight_tokens         (128, E) learned tokens
    <prefix>weight_generator.bias_token            (1, E)
    <prefix>weight_generator.transformer_encoder.layers.N.*   post-norm encoder layers, 4 heads, GELU
    <prefix>weight_generator.fc_weight             E -> K*K*D: one band's kernel, laid out (K, K, D)
    <prefix>weight_generator.fc_bias               E -> D: one bias for the whole band set

The band tokens attend to each other, so a band's kernel depends on the band set it comes with; the
kernels and bias are multiplied by 0.01 and the conv *sums* over bands. The wavelength encoding is
DOFA's 1D sin-cos of the wavelength in nm, or Copernicus-FM's Fourier expansion of wavelength and
bandwidth in nm. :class:`WaveGenerator` rebuilds the generator from the tensors (plain torch, no torchgeo
import) and gives ``(kernels (C, D, K, K), bias (D,))`` for a band set, as the conv of those models
uses them. Nothing here is learned or fitted: :mod:`rsmae.models.dofa` fits rsmae's generator to them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from rsmae.errors import WeightsError

__all__ = ["GENERATOR_HEADS", "WaveGenerator", "copernicus_encoding", "dofa_encoding"]

GENERATOR_HEADS = 4  # TransformerWeightGenerator's num_heads in both models (not in the state dict)
_SCALER = 0.01  # DynamicPatchEmbed.scaler / DOFAEmbedding.scaler


def dofa_encoding(wavelengths_um: Tensor, dim: int) -> Tensor:
    """DOFA's ``position_embedding(dim, wavelengths * 1000)``: sin-cos of wavelengths in nm, ``(C, dim)``."""
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float32) / (dim / 2.0))
    out = (wavelengths_um.float() * 1000).reshape(-1, 1) * omega
    return torch.cat([out.sin(), out.cos()], dim=1)


def _fourier(x: Tensor, lower: float, upper: float, dim: int) -> Tensor:
    """Copernicus-FM's ``FourierExpansion(lower, upper)(x, dim)`` (computed in float64)."""
    periods = torch.logspace(math.log10(lower), math.log10(upper), dim // 2, dtype=torch.float64)
    prod = x.double().reshape(-1, 1) * (2 * math.pi / periods)
    return torch.cat([prod.sin(), prod.cos()], dim=1).float()


def copernicus_encoding(wavelengths_um: Tensor, bandwidths_um: Tensor, dim: int) -> Tensor:
    """Copernicus-FM's spectral encoding: Fourier expansions of wavelength and bandwidth in nm, summed."""
    return (_fourier(wavelengths_um * 1000, 100, 1e9, dim)
            + _fourier(bandwidths_um * 1000, 1, 1e9, dim))


def _linear(state: Mapping[str, Tensor], key: str) -> nn.Linear:
    weight = state[f"{key}.weight"]
    layer = nn.Linear(weight.shape[1], weight.shape[0])
    layer.load_state_dict({"weight": weight, "bias": state[f"{key}.bias"]})
    return layer


class WaveGenerator(nn.Module):
    """The kernel generator of a DOFA or Copernicus-FM state dict (see :mod:`rsmae.models.wavegen`).

    Args:
        state: The generator's tensors with the prefix removed (``fclayer.w1.weight``...).
        encoding: ``"dofa"`` (wavelength only) or ``"copernicusfm"`` (wavelength and bandwidth).
        embed_dim: Width ``D`` of the ViT (from ``cls_token``).

    Raises:
        WeightsError: when a tensor is missing or the shapes do not fit together.
    """

    def __init__(self, state: Mapping[str, Tensor], encoding: str, embed_dim: int) -> None:
        super().__init__()
        self.encoding = encoding
        try:
            self.tokens = nn.Parameter(state["weight_generator.weight_tokens"].float(), requires_grad=False)
            self.bias_token = nn.Parameter(state["weight_generator.bias_token"].float(), requires_grad=False)
            self.w1, self.w2 = _linear(state, "fclayer.w1"), _linear(state, "fclayer.w2")
            self.fc_weight = _linear(state, "weight_generator.fc_weight")
            self.fc_bias = _linear(state, "weight_generator.fc_bias")
            self.encoder = self._encoder(state)
        except (KeyError, RuntimeError) as err:
            raise WeightsError(f"the kernel generator is incomplete or mis-shaped ({err})") from err
        self.dim, self.embed_dim = int(self.tokens.shape[1]), int(embed_dim)
        kk = self.fc_weight.out_features // self.embed_dim
        self.kernel_size = math.isqrt(kk)
        if self.kernel_size**2 * self.embed_dim != self.fc_weight.out_features:
            raise WeightsError(f"fc_weight gives {self.fc_weight.out_features} values per band, not "
                               f"K*K*{embed_dim}")
        self.eval()

    @staticmethod
    def _encoder(state: Mapping[str, Tensor]) -> nn.TransformerEncoder:
        prefix = "weight_generator.transformer_encoder."
        sub = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        depth = len({k.split(".")[1] for k in sub if k.startswith("layers.")})
        dim, hidden = sub["layers.0.linear1.weight"].shape[1], sub["layers.0.linear1.weight"].shape[0]
        layer = nn.TransformerEncoderLayer(d_model=dim, nhead=GENERATOR_HEADS, dim_feedforward=hidden,
                                           dropout=0.0, activation="gelu", norm_first=False)
        encoder = nn.TransformerEncoder(layer, num_layers=depth, enable_nested_tensor=False)
        encoder.load_state_dict(sub)
        return encoder

    @torch.no_grad()
    def forward(self, spectra: Sequence[tuple[float, float]]) -> tuple[Tensor, Tensor]:
        """Kernels ``(C, D, K, K)`` and bias ``(D,)`` of a band set, as the model's conv uses them.

        Args:
            spectra: ``(wavelength, bandwidth)`` in µm of each band of the set, in channel order.
        """
        spec = torch.tensor(list(spectra), dtype=torch.float64)
        if self.encoding == "dofa":
            waves = dofa_encoding(spec[:, 0], self.dim)
        else:
            waves = copernicus_encoding(spec[:, 0], spec[:, 1], self.dim)
        waves = waves + torch.relu(self.w2(torch.relu(self.w1(waves))))
        x = torch.cat([self.tokens, waves, self.bias_token], dim=0)
        out = self.encoder(x)
        weight = self.fc_weight(out[len(self.tokens):-1] + waves)
        bias = self.fc_bias(out[-1])
        k, d = self.kernel_size, self.embed_dim
        kernels = weight.view(len(spec), k, k, d).permute(0, 3, 1, 2) * _SCALER
        return kernels.contiguous(), bias.view(d) * _SCALER
