"""Checkpoint keys: strip wrapper prefixes, infer the encoder preset, load with a key report.

These functions look at state-dict *names* (and only compare shapes); fitting tensors to an encoder
(band mapping, patch and position-embedding resampling) is :mod:`rsmae.models.adapt`.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor

from rsmae.errors import WeightsError
from rsmae.models.layers import ENCODER_PRESETS

__all__ = ["DROPPED", "PATCH_KEY", "PREFIXES", "infer_preset", "load_checked", "strip_prefixes"]

_logger = logging.getLogger(__name__)

# Wrappers around the encoder: DDP, torch.compile, Lightning module, RC-MAE student, MAE, detectors.
PREFIXES = ("module.", "_orig_mod.", "model.", "student.", "encoder.", "backbone.")
# Parts of a checkpoint that are not the encoder (MAE decoder, classifier heads, RC-MAE teacher).
DROPPED = ("decoder", "mask_token", "head.", "fc_norm.", "teacher.", "ema")
PATCH_KEY = "patch_embed.proj.weight"


def _under(name: str, prefix: str) -> str | None:
    """``name`` below ``prefix`` (looking through wrapper prefixes), or None if not under it."""
    while not name.startswith(prefix):
        wrapper = next((p for p in PREFIXES if name.startswith(p)), None)
        if wrapper is None:
            return None
        name = name[len(wrapper) :]
    return name[len(prefix) :]


def _strip(state_dict: Mapping[str, Tensor], prefix: str | None) -> tuple[dict[str, Tensor], list]:
    """Strip wrapper prefixes; split off non-encoder keys. Returns (kept, dropped original keys)."""
    kept: dict[str, Tensor] = {}
    origin: dict[str, str] = {}
    dropped: list[str] = []
    for key, value in state_dict.items():
        name = key if prefix is None else _under(key, prefix)
        if name is None:
            dropped.append(key)
            continue
        while name.startswith(PREFIXES):
            name = name[len(next(p for p in PREFIXES if name.startswith(p))) :]
        if name.startswith(DROPPED):
            dropped.append(key)
            continue
        if name in kept and not torch.equal(kept[name], value):
            raise WeightsError(
                f"two different tensors map to {name!r} ({origin[name]!r}, {key!r}); pass "
                "prefix= to choose one part of the checkpoint"
            )
        kept[name], origin[name] = value, key
    return kept, dropped


def strip_prefixes(state_dict: Mapping[str, Tensor], *, prefix: str | None = None) -> dict[str, Tensor]:
    """Remove wrapper prefixes (:data:`PREFIXES`) and drop decoder, mask-token and head keys.

    Args:
        state_dict: Any checkpoint state dict.
        prefix: When given, keep only keys under it (e.g. ``"teacher.encoder."``) and strip it.

    Returns:
        A new dict with encoder key names.

    Raises:
        WeightsError: when two different tensors map to one name.
    """
    kept, dropped = _strip(state_dict, prefix)
    if dropped:
        _logger.info("dropped %d non-encoder keys (e.g. %s)", len(dropped), dropped[:4])
    return kept


def infer_preset(state_dict: Mapping[str, Tensor]) -> str:
    """The encoder preset whose ``embed_dim`` and depth match a (stripped) ViT state dict.

    Raises:
        WeightsError: when the dict is no ViT or no preset has its size.
    """
    weight = state_dict.get(PATCH_KEY)
    if weight is None:
        raise WeightsError(f"no {PATCH_KEY}: not a ViT checkpoint (keys {list(state_dict)[:5]})")
    depth = len({k.split(".")[1] for k in state_dict if k.startswith("blocks.")})
    for name, cfg in ENCODER_PRESETS.items():
        if cfg["embed_dim"] == weight.shape[0] and cfg["depth"] == depth:
            return name
    raise WeightsError(
        f"no encoder preset has embed_dim={weight.shape[0]} and depth={depth}; pass preset= "
        "and encoder_kwargs= (embed_dim, depth, num_heads)"
    )


def load_checked(
    model: VisionTransformer,
    state_dict: Mapping[str, Tensor],
    source: str,
    *,
    strict: bool = True,
    optional: Collection[str] = (),
) -> None:
    """Load a filtered state dict, log missing/unexpected keys, fail when the backbone did not load.

    Args:
        model: The encoder (modified in place).
        state_dict: Output of :func:`checkpoint_filter_fn`.
        source: Named in messages (the file path).
        strict: Raise on any missing key (except ``optional``), any unexpected key that belongs to
            an encoder module (``blocks.12.*`` in a 12-block model) and any shape mismatch. With
            ``False``, load what fits, but still raise when nothing but ``pos_embed`` loaded.
        optional: Keys that may be missing even when strict.

    Raises:
        WeightsError: naming ``source``.
    """
    target = model.state_dict()
    unexpected = [k for k in state_dict if k not in target]
    bad = [
        f"{k} {tuple(v.shape)} != {tuple(target[k].shape)}"
        for k, v in state_dict.items()
        if k in target and v.shape != target[k].shape
    ]
    usable = {k: v for k, v in state_dict.items() if k in target and v.shape == target[k].shape}
    missing = model.load_state_dict(usable, strict=False).missing_keys
    for what, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", bad)):
        if keys:
            _logger.warning("%s: %d %s keys: %s", source, len(keys), what, keys[:10])
    if not [k for k in usable if k != "pos_embed"]:
        raise WeightsError(
            f"{source}: no parameter of the encoder was found (the keys look like "
            f"{list(state_dict)[:5]}); this is not a checkpoint of a ViT of this size"
        )
    top = {k.split(".")[0] for k in target}
    fatal = [k for k in missing if k not in optional] + bad
    fatal += [k for k in unexpected if k.split(".")[0] in top]
    if strict and fatal:
        raise WeightsError(
            f"{source}: the encoder did not load completely: missing {missing[:6]}, unexpected "
            f"{unexpected[:6]}, mis-shaped {bad[:4]}; fix the model arguments, or pass "
            "strict=False to load the rest (fine-tuned MAE checkpoints keep the final norm as "
            "fc_norm, which is not loaded)"
        )
    _logger.info("%s: loaded %d of %d encoder tensors", source, len(usable), len(target))
