"""Start a pretraining from an existing backbone (continued pretraining) or check a checkpoint to resume.

The backbone file is an rsmae backbone (:func:`~rsmae.models.load_backbone`), an official MAE
``.pth`` (:func:`~rsmae.models.load_official_mae`), timm ViT weights (R, G, B;
:func:`~rsmae.models.load_timm_weights`) or torchgeo's Sentinel-2 ViT weights (13 L1C bands;
:func:`~rsmae.models.load_torchgeo_vit`), told apart by :func:`backbone_kind`. It is read for the
bands, sensor, input size and patch size of the pretraining data, so its patch kernels are mapped
by band name (an RGB backbone onto
Sentinel-2: R, G, B kernels to B04, B03, B02, the other bands from their mean, all scaled by
``C_src / C_dst``; see :func:`~rsmae.models.adapt_patch_embed`) and its position table fitted to the
tile size. Only the encoder is loaded; the MAE decoder starts from scratch.

:func:`checkpoint_hparams` reads a training checkpoint's hyper-parameters without building the
model, so exporting or resuming a checkpoint of another kind fails with its path and the fix
(:func:`check_resume`) instead of a state-dict traceback. :func:`corpus_record` describes the
pretraining stores independently of their paths (scenes, tiles, statistics digest); a checkpoint
carries it, and :func:`check_corpus` refuses to resume one on stores that have changed since.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from timm.models.vision_transformer import VisionTransformer

from rsmae.errors import CheckpointError, ModelConfigError, WeightsError
from rsmae.models.dofa import WAVE_FORMATS, wave_format
from rsmae.models.keys import PATCH_KEY, strip_prefixes
from rsmae.models.registry import load_weights
from rsmae.models.timm_cfg import refused_encoder_kwargs
from rsmae.models.weights import ENCODER_KWARGS, META_KEY, read_weights
from rsmae.store import TileStore

__all__ = ["backbone_kind", "check_architecture", "check_checkpoint", "check_corpus", "check_resume",
           "checkpoint_hparams", "corpus_record", "init_encoder", "load_init_backbone", "vet_encoder_kwargs"]

# Hyper-parameters that fix the model's tensors: a checkpoint resumes only into the same ones.
ARCHITECTURE = ("method", "preset", "patch_size", "img_size", "in_chans", "encoder_kwargs", "patch_embed",
                "decoder_dim", "decoder_depth", "decoder_heads")
_ARCHITECTURE_DEFAULTS = {"patch_embed": "conv"}  # what a checkpoint made before the key was added holds
# ckpt_path values Lightning resolves itself.
_KEYWORDS = ("last", "best", "hpc", "registry")

_logger = logging.getLogger(__name__)


def backbone_kind(path: str | Path) -> str:
    """The format of a weights file: rsmae, official MAE, timm, torchgeo, DOFA or Copernicus-FM.

    ``"rsmae"``, ``"mae"``, ``"timm"``, ``"torchgeo"``, ``"dofa"`` or ``"copernicusfm"`` (the last two
    any-sensor: they start a ``patch_embed: spectral`` task).

    The formats and their loaders are :data:`~rsmae.models.registry.WEIGHTS_FORMATS`.

    Raises:
        WeightsError: naming ``path`` when it is none of these (a Lightning checkpoint, another band count).
    """
    state, file_meta = read_weights(path)
    if META_KEY in file_meta:
        return "rsmae"
    if str(path).endswith(".ckpt") or any(k.startswith("model.") for k in state):  # PretrainTask's
        raise WeightsError(f"{path}: a training checkpoint, not a backbone; export its encoder first "
                           "(pipelines/export.py CKPT --out B.safetensors) or resume it with --ckpt_path")
    wave = wave_format(state)
    if wave is not None:
        return wave
    kernel = strip_prefixes(state).get(PATCH_KEY)
    chans = None if kernel is None else int(kernel.shape[1])
    if chans == 3:
        return "mae" if any("decoder" in k for k in state) else "timm"
    if chans == 13:
        return "torchgeo"
    raise WeightsError(f"{path}: not an rsmae backbone, and its patch embedding takes {chans} bands "
                       "(foreign weights must be RGB or torchgeo's 13 Sentinel-2 bands); load it with "
                       "load_timm_weights(src_bands=...) and save it with save_backbone first")


def load_init_backbone(path: str | Path, bands: list[str], sensor: str | None, *, patch_size: int,
                       img_size: int, spectral: Mapping[str, Any] | None = None) -> VisionTransformer:
    """Load any supported backbone file (:func:`backbone_kind`) adapted to ``bands`` and the task's sizes.

    ``spectral``: the task's spectral embedding options (``SpectralPatchEmbed.config()``); a DOFA or
    Copernicus-FM file is fitted into a generator of that size (exact when its ``rank`` is at least
    the number of band spectra fitted, see :mod:`rsmae.models.dofa`).
    """
    kind = backbone_kind(path)
    extra = {}
    if kind in WAVE_FORMATS and spectral is None:
        raise WeightsError(f"{path}: {kind} weights generate a kernel per band: they start only an "
                           "any-sensor task; set model.patch_embed: spectral")
    if kind in WAVE_FORMATS:
        options = {k: v for k, v in spectral.items() if k != "kernel_size"}  # the file's, resized
        extra = {"encoder_kwargs": {"spectral_embed": options}}
    return load_weights(path, kind, bands=bands, sensor=sensor, img_size=img_size, patch_size=patch_size,
                        **extra)


def init_encoder(encoder: VisionTransformer, path: str | Path, data_info: dict[str, Any] | None, *,
                 preset: str, patch_size: int, img_size: int) -> None:
    """Copy the (band-adapted) encoder weights of a backbone file into ``encoder``, in place.

    Args:
        encoder: The freshly built encoder of the task.
        path: A backbone file: rsmae, official MAE, timm or torchgeo weights (:func:`backbone_kind`).
        data_info: The pretraining data's ``bands`` and ``sensor`` (what the CLI links).
        preset: The task's encoder preset; the backbone must have the same.
        patch_size: The task's patch size; an rsmae backbone must have the same (foreign kernels
            are resampled to it).
        img_size: The task's input size (the position table is fitted to it).

    Raises:
        WeightsError: naming ``path`` when the data's bands are unknown, the file is not a backbone,
            or it holds another architecture.
        BandError: when the data's bands cannot be mapped to the backbone's.
    """
    if not data_info or not data_info.get("bands"):
        raise WeightsError(f"{path}: init_backbone needs the pretraining data's bands (data_info) to "
                           "adapt the backbone; build the task with its data (the CLI links data_info)")
    config = getattr(encoder.patch_embed, "config", None)  # a spectral embedding's options
    source = load_init_backbone(path, list(data_info["bands"]), data_info.get("sensor"),
                                spectral=config() if callable(config) else None,
                                patch_size=patch_size, img_size=img_size)
    meta = source.rsmae_meta
    if meta.preset != preset or meta.patch_size != patch_size:
        raise WeightsError(f"{path}: a {meta.preset} backbone with {meta.patch_size}-px patches cannot start "
                           f"a {preset} / patch {patch_size} task; use the backbone's preset and patch size")
    try:
        encoder.load_state_dict(source.state_dict(), strict=True)
    except RuntimeError as err:
        raise WeightsError(f"{path}: the backbone does not fit the task's encoder ({err}); build the task "
                           "with the backbone's encoder_kwargs") from err
    _logger.info("encoder initialised from %s: %s (decoder from scratch)", path, meta.source)


def vet_encoder_kwargs(kwargs: object) -> dict[str, Any]:
    """A task's ``encoder_kwargs`` (from a config or a checkpoint), allow-listed like a backbone file's.

    A checkpoint's hyper-parameters are data: timm options (``pretrained_cfg_overlay``, ``checkpoint_path``)
    would make building the encoder read or fetch other files.

    Raises:
        ModelConfigError: naming the keys outside :data:`~rsmae.models.weights.ENCODER_KWARGS`.
    """
    if kwargs is None:
        return {}
    if not isinstance(kwargs, Mapping):
        raise ModelConfigError(f"encoder_kwargs is a {type(kwargs).__name__}, not a mapping of arguments")
    refused = refused_encoder_kwargs(kwargs)
    if refused:
        raise ModelConfigError(
            f"encoder_kwargs key(s) {', '.join(map(repr, refused))} refused: only "
            f"{', '.join(sorted(ENCODER_KWARGS))} build the encoder, never timm options that read or fetch "
            "files; remove them from model.encoder_kwargs (the config, or the checkpoint's hyper_parameters)")
    return dict(kwargs)


def checkpoint_hparams(path: str | Path) -> dict[str, Any]:
    """The hyper-parameters of a ``PretrainTask`` checkpoint, read memory-mapped (tensors not loaded).

    Raises:
        CheckpointError: naming ``path`` when it is missing, not a Lightning checkpoint, not one of
            ``pipelines/pretrain.py``, or its ``encoder_kwargs`` are refused (:func:`vet_encoder_kwargs`).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint; pass a checkpoint of pipelines/pretrain.py "
                              "(e.g. runs/mae_tiny/checkpoints/last.ckpt)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:
        raise CheckpointError(f"{path}: not a readable Lightning checkpoint ({type(err).__name__}: {err}); "
                              "pass a checkpoint of pipelines/pretrain.py (a backbone .safetensors is "
                              "already exported: load it with rsmae.models.load_backbone)") from err
    hp = ckpt.get("hyper_parameters") if isinstance(ckpt, Mapping) else None
    if not isinstance(hp, Mapping) or "method" not in hp or "state_dict" not in ckpt:
        raise CheckpointError(f"{path}: not a pretraining checkpoint (no PretrainTask hyper-parameters); "
                              "pass a checkpoint written by pipelines/pretrain.py")
    try:
        vet_encoder_kwargs(hp.get("encoder_kwargs"))
    except ModelConfigError as err:
        raise CheckpointError(f"{path}: {err}") from err
    return dict(hp)


def check_resume(ckpt_path: str | Path | None, hparams: Mapping[str, Any], *,
                 keys: Sequence[str] = ARCHITECTURE) -> None:
    """Refuse to resume from a checkpoint of another model than the one ``hparams`` builds.

    Args:
        ckpt_path: The ``--ckpt_path`` given (``None`` and Lightning's keywords such as ``"last"``
            are left to Lightning).
        hparams: The hyper-parameters of the task the config builds.
        keys: The settings compared (default: all of :data:`ARCHITECTURE`); a config parsed before
            the data is read holds no ``in_chans`` or ``img_size`` yet.

    Raises:
        CheckpointError: naming the file and the differing settings.
    """
    if ckpt_path is None or str(ckpt_path) in _KEYWORDS:
        return
    check_architecture(ckpt_path, checkpoint_hparams(ckpt_path), hparams, keys=keys)


def check_architecture(ckpt_path: str | Path | None, saved: Mapping[str, Any], hparams: Mapping[str, Any],
                       *, keys: Sequence[str] = ARCHITECTURE) -> None:
    """Raise :class:`CheckpointError` unless the checkpoint's hyper-parameters ``saved`` build ``hparams``'s.

    The check of :func:`check_resume` on a checkpoint already read, so also for ``--ckpt_path last``.
    """
    diff = [f"{k}={saved.get(k)!r} (config: {hparams.get(k)!r})" for k in keys
            if _setting(saved, k) != _setting(hparams, k)]
    if diff:
        raise CheckpointError(f"{ckpt_path}: made by another model: {', '.join(diff)}; resume with the "
                              "config of that run (config.yaml in its log folder), or train the changed "
                              "model as a new run, without --ckpt_path")


def _setting(hp: Mapping[str, Any], key: str) -> Any:
    """``hp[key]`` as compared by :func:`check_resume`: a missing key as its old default, tuples as lists."""
    value = hp.get(key) or _ARCHITECTURE_DEFAULTS.get(key)
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def corpus_record(stores: Sequence[str | Path]) -> list[dict[str, Any]]:
    """What defines a pretraining corpus, wherever its stores lie (path-independent).

    Per store, in order: its committed scene and tile counts and a digest of its statistics (all
    change when scenes are appended).

    Args:
        stores: Finished tile stores (:class:`~rsmae.store.TileStore`).

    Returns:
        ``[{"n_scenes": int, "tiles": int, "stats": hex digest}, ...]``.
    """
    record = []
    for path in stores:
        store = TileStore.open(path)
        attrs = store.attrs
        committed = attrs.get("committed") or {}  # stores of format 1 keep the counts at the root only
        stats = committed.get("stats", attrs.get("stats"))
        digest = hashlib.sha256(json.dumps(stats, sort_keys=True).encode()).hexdigest()[:16]
        record.append({"n_scenes": int(committed.get("n_scenes", store.n_scenes)),
                       "tiles": int(committed.get("tiles", attrs["tiles"])), "stats": digest})
    return record


def check_checkpoint(ckpt_path: str | Path | None, checkpoint: Mapping[str, Any], hparams: Mapping[str, Any],
                     corpus: Sequence[Mapping[str, Any]] | None) -> None:
    """Refuse to resume ``checkpoint`` into another model (:func:`check_architecture`) or on changed stores.

    ``PretrainTask.on_load_checkpoint`` calls it, before the weights are loaded: a clear error instead
    of a state-dict size mismatch, whatever ``--ckpt_path`` named (a file, ``last``).
    """
    check_architecture(ckpt_path, checkpoint.get("hyper_parameters") or {}, hparams)
    check_corpus(ckpt_path, checkpoint.get("rsmae_corpus"), corpus)


def check_corpus(ckpt_path: str | Path | None, saved: Sequence[Mapping[str, Any]] | None,
                 current: Sequence[Mapping[str, Any]] | None) -> None:
    """Refuse to resume a checkpoint on stores other than those it was trained on.

    Args:
        ckpt_path: The checkpoint being resumed (named in the error).
        saved: Its :func:`corpus_record`; ``None`` for checkpoints made before it was recorded
            (resumed with a warning).
        current: :func:`corpus_record` of the stores the run reads now; ``None`` when the model is
            loaded without its data (export, analysis): nothing to check.

    Raises:
        CheckpointError: naming the checkpoint and what changed (e.g. ``store 0: tiles 1331 -> 1400``).
    """
    if current is None:
        return
    if saved is None:
        _logger.warning("%s records no corpus (an older checkpoint): cannot check that its stores are "
                        "unchanged; the statistics and sampler order follow the stores as they are now",
                        ckpt_path)
        return
    if len(saved) != len(current):
        changes = [f"stores {len(saved)} -> {len(current)}"]
    else:
        changes = [f"store {i}: {k} {old.get(k)} -> {new.get(k)}" for i, (old, new) in
                   enumerate(zip(saved, current, strict=True)) for k in ("n_scenes", "tiles", "stats")
                   if old.get(k) != new.get(k)]
    if changes:
        raise CheckpointError(f"{ckpt_path}: its pretraining stores have changed since "
                              f"({'; '.join(changes)}): resuming would change the statistics and the "
                              "sampling order; resume with the stores as they were, or start a new run "
                              "without --ckpt_path")
