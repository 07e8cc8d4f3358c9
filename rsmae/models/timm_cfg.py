"""How an rsmae encoder is described to timm: a model name that rebuilds it, and a ``pretrained_cfg``.

A tool that keeps only a timm model name (torchgeo's ``ClassificationTask(model=...)`` saves just that in
its checkpoint's hyper-parameters) rebuilds the same encoder when the name carries the architecture. The
name is the preset's registered timm model plus a tag of ``key=value`` pairs (Python literals) holding
the image and patch size and every encoder argument (:data:`ENCODER_KWARGS`)::

    timm_model_name("vit_small", img_size=128, patch_size=8)  # 'rsmae_vit_small.img_size=128,patch_size=8'
    timm.create_model("rsmae_vit_small.img_size=128,patch_size=8", in_chans=13)

The tag is parsed as data (``ast.literal_eval`` of each value, keys from an allow-list), never run.
:func:`attach_meta` puts a backbone's bands and statistics on a model, in timm's ``pretrained_cfg`` too.
"""

from __future__ import annotations

import ast
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from torch import nn

from rsmae.errors import ModelConfigError

if TYPE_CHECKING:
    from rsmae.models.weights import BackboneMeta

__all__ = ["ENCODER_KWARGS", "PATCH_EMBEDS", "TIMM_PREFIX", "attach_meta", "parse_model_tag",
           "refused_encoder_kwargs", "timm_model_name"]

TIMM_PREFIX = "rsmae_"  # timm name of a preset: rsmae_vit_small...
# encoder_kwargs a backbone file, a checkpoint or a model name may hold: plain VisionTransformer sizes and
# options, band_groups, spectral_embed (options of the spectral patch embedding). They are data: timm
# options (pretrained_cfg_overlay, checkpoint_path...) would fetch or read files; refused.
ENCODER_KWARGS = frozenset({"band_groups", "embed_dim", "depth", "num_heads", "mlp_ratio", "qkv_bias",
    "qk_norm", "proj_bias", "scale_attn_norm", "scale_mlp_norm", "init_values", "class_token",
    "no_embed_class", "reg_tokens", "pre_norm", "final_norm", "fc_norm", "global_pool",
    "pool_include_prefix", "dynamic_img_size", "dynamic_img_pad", "drop_rate", "pos_drop_rate",
    "patch_drop_rate", "proj_drop_rate", "attn_drop_rate", "drop_path_rate", "spectral_embed"})
# Patch embeddings: timm's conv, one conv per band group, kernels generated from band wavelengths.
PATCH_EMBEDS = ("conv", "grouped", "spectral")
_TAG_KWARGS = ENCODER_KWARGS | {"img_size", "patch_size"}
_FORBIDDEN = ("/", "\\", ":")  # timm reads a name holding these as a path or a hub id


def refused_encoder_kwargs(kwargs: Mapping[str, Any]) -> list[str]:
    """The keys of ``kwargs`` outside :data:`ENCODER_KWARGS`, sorted."""
    return sorted(str(k) for k in kwargs if k not in ENCODER_KWARGS)


def timm_model_name(preset: str, *, img_size: int, patch_size: int, **encoder_kwargs: Any) -> str:
    """The timm model name that rebuilds this encoder from the name alone (with ``in_chans``).

    Args:
        preset: Encoder preset (``vit_small``...).
        img_size: Input size in pixels.
        patch_size: Patch size in pixels.
        **encoder_kwargs: Further encoder arguments (:data:`ENCODER_KWARGS`).

    Returns:
        ``rsmae_<preset>.img_size=<S>,patch_size=<P>[,<key>=<value>...]``.

    Raises:
        ModelConfigError: for an argument outside :data:`ENCODER_KWARGS` or a value a name cannot hold.
    """
    refused = refused_encoder_kwargs(encoder_kwargs)
    if refused:
        raise ModelConfigError(f"encoder argument(s) {', '.join(map(repr, refused))} cannot be named for "
                               f"timm: only {', '.join(sorted(ENCODER_KWARGS))}; build it without them")
    pairs = []
    for key, value in [("img_size", img_size), ("patch_size", patch_size), *sorted(encoder_kwargs.items())]:
        text = repr(value).replace(" ", "")
        if any(c in text for c in _FORBIDDEN) or _literal(text) != value:
            raise ModelConfigError(f"encoder argument {key}={value!r} cannot be written into a timm model "
                                   "name; use numbers, booleans, lists and strings without '/', '\\' or ':'")
        pairs.append(f"{key}={text}")
    return f"{TIMM_PREFIX}{preset}.{','.join(pairs)}"


def _literal(text: str) -> Any:
    """``text`` read back as a literal, or a sentinel equal to nothing."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return object()


def parse_model_tag(tag: str, model: str) -> dict[str, Any]:
    """The encoder arguments of a model name's tag (:func:`timm_model_name`).

    Args:
        tag: The part of the name after the first dot.
        model: The model's name without the tag (named in errors).

    Raises:
        ModelConfigError: naming the model when the tag is not ``key=value`` pairs of literals, or names
            a key outside image size, patch size and :data:`ENCODER_KWARGS`.
    """
    fix = (f"timm model {model}.{tag}: the tag after the dot must be key=value pairs of img_size, patch_size "
           "and encoder arguments, as rsmae.models.timm_model_name writes them")
    try:
        call = ast.parse(f"f({tag})", mode="eval").body
        if not isinstance(call, ast.Call) or call.args or any(k.arg is None for k in call.keywords):
            raise ValueError("not key=value pairs")
        args = {str(k.arg): ast.literal_eval(k.value) for k in call.keywords}
    except (SyntaxError, ValueError, TypeError) as err:
        raise ModelConfigError(f"{fix} ({err})") from err
    refused = sorted(set(args) - _TAG_KWARGS)
    if refused:
        raise ModelConfigError(f"{fix}; key(s) {', '.join(map(repr, refused))} refused")
    return args


def attach_meta(model: nn.Module, meta: BackboneMeta) -> nn.Module:
    """Set ``model.rsmae_meta`` and a timm ``pretrained_cfg`` holding the bands and statistics.

    The cfg's ``mean``/``std`` are the backbone's statistics in the units of the stored pixel values
    (neutral 0 and 1 per band when unknown), and ``bands`` names the input channels. timm's transforms
    pass tensors through unscaled (``MaybeToTensor``) and normalise them with these, which is the input
    the encoder was trained on; 8-bit images that timm converts to 0-1 first need the statistics / 255.
    """
    model.rsmae_meta = meta
    known = meta.mean is not None and meta.std is not None
    model.pretrained_cfg = model.default_cfg = {
        **getattr(model, "pretrained_cfg", {}),
        "input_size": (meta.in_chans, meta.img_size, meta.img_size),
        "mean": tuple(meta.mean) if known else (0.0,) * meta.in_chans,
        "std": tuple(meta.std) if known else (1.0,) * meta.in_chans,
        "first_conv": "patch_embed.proj",
        "bands": tuple(meta.bands),
        "sensor": meta.sensor,
        "source": meta.source,
    }
    return model
