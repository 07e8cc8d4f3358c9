"""A patch embedding whose kernel for each band is generated from the band's wavelength (issue 24).

One backbone for any sensor, in the spirit of DOFA's wave-dynamic layer (Xiong et al. 2024): the
central wavelength and bandwidth of a band (from :mod:`rsmae.bands`, in µm) go through a Fourier
encoding and a small MLP that outputs the band's ``(D, P, P)`` kernel and a ``(D,)`` bias, and::

    token = mean_c conv(x_c, kernel_c) + mean_c bias_c

Summing over bands makes the tokens independent of the band order, and a band's kernel depends on
that band alone, so a subset of bands is embedded exactly as the same model fed only those bands. The
mean (not the sum, nor ``sum / sqrt(C)``) keeps the token scale independent of ``C`` for real pixels:
neighbouring bands are strongly correlated and so are the kernels the generator gives nearby
wavelengths. On standardised EuroSAT tiles a fresh embedding's token std is 0.58 for 1 band and
0.42 for 13 (``sum / sqrt(C)``: 0.58 to 1.50); only independent band responses would shrink it as
``1/sqrt(C)``. :class:`~rsmae.models.patch_embed.GroupedPatchEmbed` averages its groups for the same
reason.

Band names say which wavelengths the channels hold: ``"B04"`` (in the embedding's ``sensor``),
``"landsat-oli:B4"`` (any registered sensor), or a name registered with a learned kernel
(:meth:`SpectralPatchEmbed.register_band_embedding`, for bands without a wavelength: SAR, DEM...).
The encoder stays a plain timm ``VisionTransformer`` (``model(x)`` as usual): the embedding holds the
bands of its input channels, set at construction (``create_encoder(..., patch_embed="spectral",
bands=[...])``, ``load_backbone(path, bands=[...])``) and changed per batch with :func:`use_bands`.

Kernels are generated at ``kernel_size`` and resized to the patch size by the pseudo-inverse resize
of FlexiViT (Beyer et al. 2023, :func:`resize_kernels`). In eval mode without autograd the kernels of
each band tuple are cached; ``train()``, ``.to()`` and any in-place parameter update (an optimizer
step, ``load_state_dict``) drop the cache. With autograd on nothing is cached, so gradients reach the
generator in eval mode too (Hessians of :mod:`rsmae.landscape`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import to_2tuple
from timm.layers.format import Format, nchw_to
from torch import Tensor, nn

from rsmae.errors import BandError, ModelConfigError
from rsmae.models.spectral import (
    DEFAULT_BANDWIDTH_NM,
    SPECTRAL_OPTIONS,
    band_keys,
    band_spectrum,
    check_spectral_options,
    resize_kernels,
    resize_matrix,
    spectral_features,
    spectral_frequencies,
    spectral_mlp,
)

__all__ = ["DEFAULT_BANDWIDTH_NM", "SPECTRAL_OPTIONS", "SpectralPatchEmbed", "band_spectrum",
           "check_spectral_options", "resize_kernels", "resize_matrix", "set_bands", "use_bands"]

_logger = logging.getLogger(__name__)

class SpectralPatchEmbed(nn.Module):
    """Patch embedding with one generated kernel per band: see :mod:`rsmae.models.spectral_embed`.

    Accepts the keyword arguments timm's ``VisionTransformer`` passes to its ``embed_layer``; bind the
    others with :func:`functools.partial` (``create_encoder(patch_embed="spectral")`` does this).

    Args:
        bands: Band names of the input channels (``None``: set later, :func:`use_bands`).
        sensor: Sensor of plain band names (``None``: any sensor where the name is unambiguous).
        kernel_size: Size of the generated kernels (default: the patch size); other patch sizes
            resize them.
        learned_bands: Bands without a wavelength, given learned kernels.
        hidden_dim: Width of the generator MLP.
        rank: Kernels are combinations of ``rank`` learned kernels (the generator's last layer).
        num_freqs: Fourier frequencies of the wavelength encoding.
    """

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        patch_size: int | tuple[int, int] = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        norm_layer: Callable[..., nn.Module] | None = None,
        flatten: bool = True,
        output_fmt: str | None = None,
        bias: bool = True,
        strict_img_size: bool = True,
        dynamic_img_pad: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        bands: Sequence[str] | None = None,
        sensor: str | None = None,
        kernel_size: int | None = None,
        learned_bands: Sequence[str] = (),
        hidden_dim: int = 128,
        rank: int = 32,
        num_freqs: int = 8,
    ) -> None:
        super().__init__()
        dd: dict[str, Any] = {"device": device, "dtype": dtype}
        self.embed_dim, self.in_chans, self.sensor = embed_dim, in_chans, sensor
        self.bands: tuple[str, ...] | None = None
        self.hidden_dim, self.rank, self.num_freqs = hidden_dim, rank, num_freqs
        self.set_input_size(img_size, patch_size)
        self.kernel_size = int(kernel_size or self.patch_size[0])
        self.flatten = flatten if output_fmt is None else False
        self.output_fmt = Format(output_fmt) if output_fmt is not None else Format.NCHW
        self.strict_img_size, self.dynamic_img_pad = strict_img_size, dynamic_img_pad
        wave_freqs, width_freqs = spectral_frequencies(num_freqs, device)
        self.register_buffer("wavelength_freqs", wave_freqs, persistent=False)
        self.register_buffer("bandwidth_freqs", width_freqs, persistent=False)
        self.hyper = spectral_mlp(num_freqs, hidden_dim, rank, **dd)
        self.to_kernel = nn.Linear(rank, embed_dim * self.kernel_size**2, **dd)
        self.to_bias = nn.Linear(rank, embed_dim, **dd) if bias else None
        self.learned_kernels = nn.ParameterDict()
        self.learned_biases = nn.ParameterDict()
        self.norm = norm_layer(embed_dim, **dd) if norm_layer else nn.Identity()
        self._cache: dict[tuple, tuple[Tensor, Tensor | None]] = {}
        self._cache_sig: tuple = ()
        self._pinv: dict[tuple[int, int], Tensor] = {}
        self.init_weights()
        for name in learned_bands:
            self.register_band_embedding(name)
        if bands is not None:
            self.set_bands(bands, sensor=sensor)
            if len(self.bands or ()) != in_chans:
                raise BandError(f"in_chans={in_chans} but {len(bands)} bands {list(bands)}; "
                                "pass one name per channel")

    # ------------------------------------------------------------------ timm PatchEmbed interface
    def set_input_size(self, img_size: Any = None, patch_size: Any = None) -> None:
        """Set the image and patch size (timm's ``VisionTransformer.set_input_size`` calls this)."""
        if patch_size is not None:
            patch = to_2tuple(patch_size)
            if patch[0] != patch[1]:
                raise ModelConfigError(f"SpectralPatchEmbed needs square patches, got {patch}")
            self.patch_size = tuple(int(p) for p in patch)
        self.img_size = to_2tuple(img_size) if img_size is not None else self.img_size
        self.grid_size = (self.img_size[0] // self.patch_size[0], self.img_size[1] // self.patch_size[1])
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.clear_cache()

    def feat_ratio(self, as_scalar: bool = True) -> int | tuple[int, int]:
        """Reduction factor of the token grid."""
        return max(self.patch_size) if as_scalar else self.patch_size

    def dynamic_feat_size(self, img_size: tuple[int, int]) -> tuple[int, int]:
        """Token grid of an image of ``img_size`` (with dynamic padding when enabled)."""
        div = (lambda a, b: -(-a // b)) if self.dynamic_img_pad else (lambda a, b: a // b)
        return div(img_size[0], self.patch_size[0]), div(img_size[1], self.patch_size[1])

    def init_weights(self) -> None:
        """Initialise the generator (timm's ``init_weights`` calls this after its own Linear init).

        Generated kernels start with elements of std ``1/(K sqrt(3))`` (PyTorch's conv init for one
        band's fan-in ``K*K``), biases at zero.
        """
        for layer in self.hyper:
            if hasattr(layer, "reset_parameters"):
                layer.reset_parameters()
        nn.init.normal_(self.to_kernel.weight, std=(3 * self.rank) ** -0.5)
        nn.init.zeros_(self.to_kernel.bias)
        if self.to_bias is not None:
            nn.init.zeros_(self.to_bias.weight)
            nn.init.zeros_(self.to_bias.bias)
        for param in self.learned_kernels.values():
            nn.init.normal_(param, std=3**-0.5)
        for param in self.learned_biases.values():
            nn.init.zeros_(param)

    # ------------------------------------------------------------------ bands
    def config(self) -> dict[str, Any]:
        """The options that rebuild this embedding (``spectral_embed=`` of ``create_encoder``)."""
        return {"kernel_size": self.kernel_size, "hidden_dim": self.hidden_dim, "rank": self.rank,
                "num_freqs": self.num_freqs, "learned_bands": list(self.learned_kernels)}

    def register_band_embedding(self, name: str) -> None:
        """Give the band ``name``, which has no wavelength, a learned kernel and bias.

        Register before building the optimizer (the new parameters must be in it).

        Raises:
            BandError: when the name is not a plain name or has a wavelength in a registered sensor.
        """
        if not isinstance(name, str) or not name or "." in name or ":" in name:
            raise BandError(f"learned band name {name!r} must be a non-empty string without '.' or ':'")
        if name in self.learned_kernels:
            return
        try:
            spectrum = band_spectrum(name)
        except BandError:  # several meanings: it has wavelengths
            spectrum = (0.0, 0.0)
        if spectrum is not None:
            raise BandError(f"band {name!r} has a wavelength in rsmae.bands; it needs no learned kernel")
        like: dict[str, Any] = {"device": self.to_kernel.weight.device, "dtype": self.to_kernel.weight.dtype}
        self.learned_kernels[name] = nn.Parameter(torch.randn(self.to_kernel.out_features, **like) * 3**-0.5)
        if self.to_bias is not None:
            self.learned_biases[name] = nn.Parameter(torch.zeros(self.embed_dim, **like))
        self.clear_cache()
        _logger.info("band %r has a learned patch kernel", name)

    def set_bands(self, bands: Sequence[str], *, sensor: str | None = None) -> None:
        """Set the bands of the input channels (``sensor``: of plain names; ``None`` keeps the current one).

        Raises:
            BandError: naming a band without wavelength or learned kernel, or repeated bands.
        """
        sensor = sensor if sensor is not None else self.sensor
        self._keys(bands, sensor)
        self.bands, self.sensor, self.in_chans = tuple(bands), sensor, len(bands)

    def _keys(self, bands: Sequence[str], sensor: str | None) -> list[str | tuple[float, float]]:
        """What generates each band's kernel: a learned band's name or ``(wavelength, bandwidth)`` in µm."""
        return band_keys(bands, sensor, self.learned_kernels)

    # ------------------------------------------------------------------ kernels
    def band_kernels(self, bands: Sequence[str]) -> tuple[Tensor, Tensor | None]:
        """Each band's kernel ``(C, D, P, P)`` at the patch size and bias ``(C, D)`` (``None``: no bias)."""
        keys = self._keys(bands, self.sensor)
        spectra = sorted({k for k in keys if isinstance(k, tuple)})  # one generator batch per band set
        raw: dict[Any, tuple[Tensor, Tensor | None]] = {}
        if spectra:
            ref = self.to_kernel.weight
            coeffs = self.hyper(self._features(torch.tensor(spectra, device=ref.device)).to(ref.dtype))
            kernels = self.to_kernel(coeffs)
            biases = self.to_bias(coeffs) if self.to_bias is not None else None
            for i, key in enumerate(spectra):
                raw[key] = (kernels[i], None if biases is None else biases[i])
        for key in keys:
            if isinstance(key, str):
                bias = self.learned_biases[key] if self.to_bias is not None else None
                raw[key] = (self.learned_kernels[key], bias)
        k = self.kernel_size
        out = torch.stack([raw[key][0] for key in keys]).view(len(keys), self.embed_dim, k, k) / k
        if self.patch_size[0] != k:
            out = resize_kernels(out, self.patch_size[0], self._pinv_matrix(k, self.patch_size[0]))
        bias = None if self.to_bias is None else torch.stack([raw[key][1] for key in keys])
        return out, bias

    def _features(self, spectra: Tensor) -> Tensor:
        """Fourier features ``(N, 2F + 8)`` of ``(N, 2)`` wavelengths and bandwidths in µm."""
        return spectral_features(spectra, self.wavelength_freqs, self.bandwidth_freqs)

    def _pinv_matrix(self, old: int, new: int) -> Tensor:
        if (old, new) not in self._pinv:
            self._pinv[(old, new)] = torch.linalg.pinv(resize_matrix(old, new))
        return self._pinv[(old, new)]

    def conv_params(self, bands: Sequence[str]) -> tuple[Tensor, Tensor | None]:
        """The conv weight ``(D, C, P, P)`` (band kernels divided by ``C``) and bias ``(D,)`` of ``bands``.

        Cached per band tuple in eval mode without autograd.
        """
        cacheable = not self.training and not torch.is_grad_enabled()
        key = (tuple(bands), self.sensor, self.patch_size)
        if cacheable:
            sig = tuple((p.data_ptr(), p._version) for p in self.parameters())
            if sig != self._cache_sig:
                self._cache, self._cache_sig = {}, sig
            if key in self._cache:
                return self._cache[key]
        kernels, biases = self.band_kernels(bands)
        out = (kernels.transpose(0, 1) / len(bands), None if biases is None else biases.mean(0))
        if cacheable:
            self._cache[key] = out
        return out

    def clear_cache(self) -> None:
        """Drop the cached kernels (done on ``train()``, ``.to()`` and parameter updates)."""
        self._cache, self._cache_sig = {}, ()

    def train(self, mode: bool = True) -> SpectralPatchEmbed:
        """Switch mode and drop the cached kernels."""
        self.clear_cache()
        return super().train(mode)

    def _apply(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> SpectralPatchEmbed:
        self.clear_cache()
        self._pinv = {}
        return super()._apply(fn, *args, **kwargs)

    # ------------------------------------------------------------------ forward
    def forward(self, x: Tensor, bands: Sequence[str] | None = None) -> Tensor:
        """Embed ``(B, C, H, W)`` into ``(B, N, D)`` tokens (or timm's grid format).

        Args:
            x: Images whose channels are ``bands``.
            bands: Band names of the ``C`` channels; ``None``: the embedding's current bands.
        """
        bands = self._check_input(x, bands)
        h, w = x.shape[-2:]
        p = self.patch_size[0]
        if self.dynamic_img_pad:
            x = F.pad(x, (0, (p - w % p) % p, 0, (p - h % p) % p))
        weight, bias = self.conv_params(bands)
        out = F.conv2d(x, weight, bias, stride=p)
        if self.flatten:
            out = out.flatten(2).transpose(1, 2)
        elif self.output_fmt != Format.NCHW:
            out = nchw_to(out, self.output_fmt)
        return self.norm(out)

    def _check_input(self, x: Tensor, bands: Sequence[str] | None) -> Sequence[str]:
        bands = self.bands if bands is None else bands
        if bands is None:
            raise BandError("SpectralPatchEmbed needs the band names of its input channels: build the "
                            "encoder with bands=[...], load it with load_backbone(path, bands=[...]), or "
                            "set them with rsmae.models.use_bands(model, bands)")
        if x.shape[1] != len(bands):
            raise BandError(f"input has {x.shape[1]} channels but the bands are {list(bands)}; set the bands "
                            "of this batch with rsmae.models.use_bands(model, bands)")
        h, w = x.shape[-2:]
        if self.strict_img_size and (h, w) != tuple(self.img_size):
            raise ValueError(f"input size {(h, w)} != model img_size {self.img_size}")
        return bands


def set_bands(model: nn.Module, bands: Sequence[str], *, sensor: str | None = None) -> None:
    """Set the bands of every :class:`SpectralPatchEmbed` in ``model`` (an encoder, an MAE, an RC-MAE).

    Raises:
        ModelConfigError: when ``model`` has no spectral patch embedding.
        BandError: for a band without wavelength or learned kernel.
    """
    embeds = [m for m in model.modules() if isinstance(m, SpectralPatchEmbed)]
    if not embeds:
        raise ModelConfigError(f"{type(model).__name__} has no spectral patch embedding; its bands are fixed "
                               "(build it with create_encoder(..., patch_embed='spectral'))")
    for embed in embeds:
        embed.set_bands(bands, sensor=sensor)


@contextmanager
def use_bands(model: nn.Module, bands: Sequence[str], *, sensor: str | None = None) -> Iterator[nn.Module]:
    """Feed ``model`` images of ``bands`` inside the block (:func:`set_bands`), then restore its bands.

    ::

        with use_bands(encoder, ["B04", "B03", "B02"], sensor="landsat-oli"):
            features = encoder.forward_features(rgb)
    """
    embeds = [m for m in model.modules() if isinstance(m, SpectralPatchEmbed)]
    saved = [(e.bands, e.sensor, e.in_chans) for e in embeds]
    set_bands(model, bands, sensor=sensor)
    try:
        yield model
    finally:
        for embed, (old, old_sensor, chans) in zip(embeds, saved, strict=True):
            embed.bands, embed.sensor, embed.in_chans = old, old_sensor, chans
