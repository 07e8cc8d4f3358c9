"""The encoder: a plain timm ``VisionTransformer`` for any band count, fixed sin-cos positions.

The 2D sin-cos position embedding is fixed (as in MAE), so other code (timm, torchgeo, Lightning)
can take the encoder as is.

Every preset of :data:`ENCODER_PRESETS` is a timm-registered model named ``rsmae_<preset>``
(``rsmae_vit_small``...), so timm's factory builds it::

    timm.create_model("rsmae_vit_small", in_chans=13, img_size=128, patch_size=16)
    timm.create_model("rsmae_vit_small", in_chans=13, pretrained=True,
                      pretrained_cfg_overlay=dict(file="backbone.safetensors"))
    timm.create_model("rsmae_vit_small", in_chans=13, features_only=True)  # per-block NCHW maps

An rsmae backbone file given as the pretrained file fixes what it was trained with: its band count,
image and patch size and encoder arguments are the defaults (explicit arguments still win, e.g.
``patch_size=16`` resamples a patch-8 file), and the model carries its bands and statistics
(``model.rsmae_meta``, and ``pretrained_cfg`` ``bands``/``mean``/``std``). A name's tag can hold the
architecture (:func:`~rsmae.models.timm_cfg.timm_model_name`): ``rsmae_vit_small.img_size=64,patch_size=8``.

Pretrained files go through :func:`~rsmae.models.adapt.checkpoint_filter_fn` (prefixes, patch and
position-table resampling). Band mapping needs band names, which a timm state dict lacks: load
files of other bands with :func:`~rsmae.models.load_backbone` (``bands=``).

``patch_embed="spectral"`` builds the patch embedding as a
:class:`~rsmae.models.spectral_embed.SpectralPatchEmbed`: kernels generated from the bands' wavelengths,
so one encoder takes any bands (``bands=[...]`` at creation, :func:`~rsmae.models.spectral_embed.use_bands`
per batch); ``model(x)`` and every timm feature path are unchanged.

The models are registered with timm when :mod:`rsmae.models` is imported; ``import rsmae`` does that
as soon as timm is imported (:mod:`rsmae`).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import timm
import torch
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

from rsmae.errors import ModelConfigError, WeightsError
from rsmae.models.adapt import checkpoint_filter_fn
from rsmae.models.layers import ENCODER_PRESETS, sincos_pos_embed_2d
from rsmae.models.meta import peek_backbone_meta
from rsmae.models.patch_embed import GroupedPatchEmbed
from rsmae.models.spectral import check_spectral_options
from rsmae.models.spectral_embed import SpectralPatchEmbed
from rsmae.models.timm_cfg import ENCODER_KWARGS, PATCH_EMBEDS, TIMM_PREFIX, attach_meta, parse_model_tag

if TYPE_CHECKING:
    from rsmae.models.meta import BackboneMeta

__all__ = [
    "ENCODER_KWARGS",
    "ENCODER_PRESETS",
    "TIMM_PREFIX",
    "create_encoder",
    "fused_attention_pays",
    "set_fused_attention",
    "sincos_pos_embed_2d",
]

def _sincos_vit(**kwargs: Any) -> VisionTransformer:
    """A ``VisionTransformer`` whose ``pos_embed`` is the fixed sin-cos table (class slot zero)."""
    model = VisionTransformer(**kwargs)
    grid_h, grid_w = model.patch_embed.grid_size
    table = sincos_pos_embed_2d(grid_h, grid_w, model.embed_dim)
    with torch.no_grad():
        model.pos_embed.zero_()
        model.pos_embed[0, model.num_prefix_tokens :] = table
    model.pos_embed.requires_grad_(False)
    return model


def _pretrained_filter(state_dict: dict[str, Tensor], model: VisionTransformer) -> dict[str, Tensor]:
    """The ``pretrained_filter_fn`` of timm: :func:`~rsmae.models.adapt.checkpoint_filter_fn`, no bands."""
    try:
        return checkpoint_filter_fn(state_dict, model)
    except WeightsError as err:
        raise WeightsError(
            f"{err}. timm.create_model cannot map bands (a state dict has no band names): load the "
            "file with rsmae.models.load_backbone(path, bands=...) or get_weights(name).load(bands=...)"
        ) from err


def _create_rsmae_vit(variant: str, pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
    """Build a registered preset with timm's ``build_model_with_cfg`` (pretrained file, features_only).

    ``pretrained_cfg`` mean/std are set per input channel to 0 and 1, neutral for timm's
    ``resolve_data_config`` until a backbone file's statistics replace them
    (:func:`~rsmae.models.timm_cfg.attach_meta`): a bare architecture has no data statistics, and
    ImageNet's would be wrong for any other bands.
    """
    chans = int(kwargs.get("in_chans", 13))
    size = kwargs.get("img_size", 128)
    size = (size, size) if isinstance(size, int) else tuple(size)
    overlay = {"input_size": (chans, *size), "mean": (0.0,) * chans, "std": (1.0,) * chans}
    overlay.update(kwargs.pop("pretrained_cfg_overlay", None) or {})
    depth = int(kwargs.get("depth", 12))
    return build_model_with_cfg(
        _sincos_vit,
        variant,
        pretrained,
        pretrained_cfg_overlay=overlay,
        pretrained_filter_fn=_pretrained_filter,
        feature_cfg={"out_indices": kwargs.pop("out_indices", depth), "feature_cls": "getter"},
        **kwargs,
    )


def _cfg(**kwargs: Any) -> dict[str, Any]:
    """Default cfg of a preset: 13 bands (Sentinel-2 L1C) at 128 px, no downloadable weights."""
    return {
        "url": "",
        "num_classes": 0,
        "input_size": (13, 128, 128),
        "mean": (0.0,) * 13,  # neutral: the real statistics live in the backbone's metadata
        "std": (1.0,) * 13,
        "crop_pct": 1.0,  # tiles are used whole
        "first_conv": "patch_embed.proj",
        "classifier": "head",
        "fixed_input_size": True,
        "license": "mit",
        **kwargs,
    }


default_cfgs = generate_default_cfgs({f"{TIMM_PREFIX}{name}": _cfg() for name in ENCODER_PRESETS})


def _preset(name: str, pretrained: bool, kwargs: dict[str, Any]) -> VisionTransformer:
    """Build preset ``name``: its sizes, then a pretrained backbone file's, the name's tag, the caller's.

    A string ``pretrained_cfg`` is the tag of the name (``rsmae_vit_small.<tag>``): the architecture
    (:func:`~rsmae.models.timm_cfg.parse_model_tag`), kept as ``pretrained_cfg["tag"]``.
    """
    variant = f"{TIMM_PREFIX}{name}"
    cfg = kwargs.pop("pretrained_cfg", None)
    overlay = dict(kwargs.pop("pretrained_cfg_overlay", None) or {})
    args: dict[str, Any] = {**ENCODER_PRESETS[name], "patch_size": 16}
    meta = _file_meta(name, overlay, cfg) if pretrained else None
    if meta is not None:
        args.update(in_chans=meta.in_chans, img_size=meta.img_size, patch_size=meta.patch_size,
                    **meta.encoder_kwargs)
        if meta.patch_embed == "spectral":
            args.update(patch_embed="spectral", bands=meta.bands, sensor=meta.sensor)
    if isinstance(cfg, str):
        args.update(parse_model_tag(cfg, variant))
        overlay["tag"], cfg = cfg, None
    args.update(kwargs)
    _set_embed_layer(variant, args)
    model = _create_rsmae_vit(variant, pretrained, pretrained_cfg=cfg, pretrained_cfg_overlay=overlay, **args)
    if meta is not None:  # the file's metadata, at the sizes built (a resampled file says so)
        img, patch = (args[k] if isinstance(args[k], int) else args[k][0] for k in ("img_size", "patch_size"))
        attach_meta(model, dataclasses.replace(meta, img_size=int(img), patch_size=int(patch)))
    return model


def _set_embed_layer(variant: str, args: dict[str, Any]) -> None:
    """Turn the patch-embedding arguments in ``args`` into timm's ``embed_layer`` (in place).

    ``patch_embed`` (:data:`~rsmae.models.timm_cfg.PATCH_EMBEDS`, default ``"conv"``, ``"grouped"``
    when ``band_groups`` are given); ``bands``, ``sensor`` and ``spectral_embed`` (options) belong to
    ``"spectral"``.
    """
    kind = args.pop("patch_embed", None) or "conv"
    groups = args.pop("band_groups", None)
    popped = {k: args.pop(k, None) for k in ("bands", "sensor", "spectral_embed")}
    spectral = {k: v for k, v in popped.items() if v is not None}
    if kind not in PATCH_EMBEDS:
        raise ModelConfigError(f"{variant}: unknown patch_embed {kind!r}; choose one of "
                               f"{', '.join(PATCH_EMBEDS)}")
    if spectral and kind != "spectral":
        raise ModelConfigError(f"{variant}: {', '.join(spectral)} are options of patch_embed='spectral', "
                               f"not {kind!r}")
    if (kind == "grouped") != (groups is not None) and kind != "conv":
        raise ModelConfigError(f"{variant}: patch_embed={kind!r} and band_groups={groups!r} do not go "
                               "together; band_groups make a grouped embedding")
    if "embed_layer" in args and (groups is not None or kind == "spectral"):
        raise ModelConfigError(f"{variant}: pass either band_groups / patch_embed or embed_layer, not both")
    if groups is not None:
        args["embed_layer"] = functools.partial(GroupedPatchEmbed, groups=[list(g) for g in groups])
    elif kind == "spectral":
        options = check_spectral_options(spectral.pop("spectral_embed", {}))
        args["embed_layer"] = functools.partial(SpectralPatchEmbed, **spectral, **options)


def _file_meta(name: str, overlay: Mapping[str, Any], cfg: Any) -> BackboneMeta | None:
    """The metadata of the pretrained file when it is an rsmae backbone of preset ``name``, else ``None``.

    Raises:
        WeightsError: naming the file when its metadata is refused or it holds another preset.
    """
    file = overlay.get("file") or (cfg.get("file") if isinstance(cfg, Mapping) else None)
    if not file:
        return None
    meta = peek_backbone_meta(file)
    if meta is not None and meta.preset != name:
        raise WeightsError(f"{file}: a {meta.preset} backbone, not {name}; create it as "
                           f"timm.create_model('{TIMM_PREFIX}{meta.preset}', pretrained=True, ...)")
    return meta


@register_model
def rsmae_vit_test(pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
    """Tiny test ViT (64 wide, 2 blocks, 2 heads): for tests only."""
    return _preset("vit_test", pretrained, kwargs)


@register_model
def rsmae_vit_tiny(pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
    """ViT-Ti (192 wide, 12 blocks, 3 heads)."""
    return _preset("vit_tiny", pretrained, kwargs)


@register_model
def rsmae_vit_small(pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
    """ViT-S (384 wide, 12 blocks, 6 heads)."""
    return _preset("vit_small", pretrained, kwargs)


@register_model
def rsmae_vit_base(pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
    """ViT-B (768 wide, 12 blocks, 12 heads)."""
    return _preset("vit_base", pretrained, kwargs)


@register_model
def rsmae_vit_large(pretrained: bool = False, **kwargs: Any) -> VisionTransformer:
    """ViT-L (1024 wide, 24 blocks, 16 heads)."""
    return _preset("vit_large", pretrained, kwargs)


def create_encoder(
    preset: str = "vit_small",
    *,
    in_chans: int,
    img_size: int = 128,
    patch_size: int = 16,
    band_groups: Sequence[Sequence[int]] | None = None,
    patch_embed: str = "conv",
    bands: Sequence[str] | None = None,
    sensor: str | None = None,
    **overrides: Any,
) -> VisionTransformer:
    """Create a timm ViT encoder with a fixed sin-cos position embedding.

    A thin wrapper over ``timm.create_model(f"rsmae_{preset}", ...)``.

    Args:
        preset: One of :data:`ENCODER_PRESETS`.
        in_chans: Number of input bands (any count).
        img_size: Input size in pixels.
        patch_size: Patch size in pixels.
        band_groups: Channel indices of spectral band groups; when given, the patch embedding is
            a :class:`~rsmae.models.patch_embed.GroupedPatchEmbed` (one kernel per group).
        patch_embed: ``"conv"`` (timm's), ``"grouped"`` (with ``band_groups``) or ``"spectral"``: a
            :class:`~rsmae.models.spectral_embed.SpectralPatchEmbed` whose kernels are generated from
            the bands' wavelengths, so the encoder takes any bands; ``model(x)`` embeds ``x`` as the
            embedding's current ``bands``, changed per batch with
            :func:`~rsmae.models.spectral_embed.use_bands`. Its options go in
            ``spectral_embed={...}`` (:data:`~rsmae.models.spectral.SPECTRAL_OPTIONS`).
        bands: For ``"spectral"``: band names of the ``in_chans`` input channels.
        sensor: For ``"spectral"``: the sensor of plain band names (``"B04"``).
        **overrides: Any other ``VisionTransformer`` argument (``depth``, ``drop_path_rate``,
            ``embed_layer``...) or ``timm.create_model`` option (``features_only``...).

    Returns:
        A ``VisionTransformer`` with ``num_classes=0`` (features out), a class token, and a
        non-trainable ``pos_embed`` holding the sin-cos table (class token slot zero).
    """
    if preset not in ENCODER_PRESETS:
        raise ModelConfigError(
            f"unknown encoder preset {preset!r}; choose one of {', '.join(ENCODER_PRESETS)} "
            "(model.preset in a pretraining config)"
        )
    kwargs: dict[str, Any] = {"num_classes": 0, **overrides}
    extra = {"band_groups": band_groups, "bands": bands, "sensor": sensor}
    kwargs.update({k: v for k, v in extra.items() if v is not None})
    if patch_embed != "conv":
        kwargs["patch_embed"] = patch_embed
    return timm.create_model(
        f"{TIMM_PREFIX}{preset}", in_chans=in_chans, img_size=img_size, patch_size=patch_size, **kwargs
    )


def set_fused_attention(module: nn.Module, enabled: bool) -> int:
    """Switch every timm attention layer in ``module`` between fused SDPA and the plain math path.

    timm's ``Attention`` runs ``F.scaled_dot_product_attention`` when ``fused_attn`` is set and
    ``softmax(q @ k^T) @ v`` otherwise; both give the same result. The math path is what
    double backward (Hessian-vector products) needs, and on CPUs it is faster for ViT sequence
    lengths under bf16 autocast (``benchmarks/bench_pretrain.py``).

    Args:
        module: Any module holding timm attention layers (an encoder, an MAE, an RC-MAE).
        enabled: ``True`` for fused SDPA, ``False`` for the math path.

    Returns:
        The number of attention layers switched.
    """
    count = 0
    for layer in module.modules():
        if hasattr(layer, "fused_attn"):
            layer.fused_attn = bool(enabled)
            count += 1
    return count


def fused_attention_pays(device: torch.device | str) -> bool:
    """Whether fused SDPA is the faster attention on ``device``: on CUDA yes, on CPU no.

    On CUDA the flash and memory-efficient kernels save time and the memory of the attention
    matrix. On the CPU the fused kernel is no faster in fp32 and much slower in bf16 at ViT
    sequence lengths (17-257 tokens): measured 73 vs 115 img/s for an MAE ViT-S/16 step on a
    2-core AVX512-BF16 CPU.
    """
    return torch.device(device).type == "cuda"
