"""Interoperability: foreign weights as an init here, and an rsmae backbone in torchgeo's trainers.

- :func:`import_weights` turns an official MAE ``.pth``, a timm ViT state dict or a torchgeo
  (SSL4EO-S12) ViT checkpoint into an rsmae backbone file (bands and statistics in its metadata), so
  every evaluation here takes it like our own backbones.
- :func:`torchgeo_classification_task` puts an rsmae backbone (plus a linear head) into torchgeo's
  ``ClassificationTask``, which then trains it with torchgeo's loop, losses and metrics; its checkpoints
  reload with ``ClassificationTask.load_from_checkpoint`` once ``rsmae`` is imported.

Recipe (torchgeo 0.8)::

    from rsmae.evaluation.interop import torchgeo_classification_task
    task = torchgeo_classification_task("backbone.safetensors", num_classes=10, lr=1e-4)
    meta = task.model.rsmae_meta            # feed meta.bands in this order, normalised by meta.mean/std
    lightning.Trainer(max_epochs=10).fit(task, datamodule=my_torchgeo_datamodule)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from rsmae.errors import WeightsError
from rsmae.models.registry import load_weights, weights_format
from rsmae.models.timm_cfg import attach_meta, timm_model_name
from rsmae.models.weights import load_backbone, save_backbone

__all__ = ["import_weights", "torchgeo_classification_task"]

Kind = Literal["mae", "timm", "torchgeo"]  # "official_mae": a deprecated spelling of "mae"


def import_weights(
    path: str | Path,
    kind: Kind,
    out: str | Path,
    *,
    bands: Sequence[str] | None = None,
    sensor: str | None = None,
    img_size: int = 224,
    **kwargs: Any,
) -> Path:
    """Convert foreign ViT weights into an rsmae backbone file.

    Args:
        path: The weights file.
        kind: A foreign format of :data:`~rsmae.models.registry.WEIGHTS_FORMATS`: ``"mae"``
            (facebookresearch/mae ``{"model": ...}``; ``"official_mae"`` is accepted with a
            deprecation warning), ``"timm"`` or ``"torchgeo"``.
        out: Backbone file to write (``.safetensors``).
        bands: Bands of the data the backbone will see (patch kernels mapped by band name);
            ``None`` keeps the weights' own bands.
        sensor: Sensor of ``bands``.
        img_size: Input size (position embeddings resampled or regenerated).
        **kwargs: Further arguments of the loader (``preset``, ``patch_size``, ``src_bands``...).

    Returns:
        ``out``.

    Raises:
        WeightsError: naming ``path`` when the kind is unknown or the weights do not load.
    """
    fmt = weights_format(kind, what=str(path))
    if not fmt.foreign:
        raise WeightsError(f"{path}: {kind!r} weights are an rsmae backbone already; load_backbone reads "
                           "them")
    encoder = load_weights(path, fmt.name, bands=bands, sensor=sensor, img_size=img_size, **kwargs)
    return save_backbone(encoder, out, encoder.rsmae_meta)


def torchgeo_classification_task(backbone: str | Path, num_classes: int, **task_kwargs: Any) -> Any:
    """A torchgeo ``ClassificationTask`` whose model is the rsmae backbone with a linear head.

    The task's ``model`` is the timm name that rebuilds the backbone's architecture
    (:func:`~rsmae.models.timm_model_name`, e.g. ``rsmae_vit_small.img_size=128,patch_size=16``), so
    torchgeo builds the encoder itself and ``ClassificationTask.load_from_checkpoint`` rebuilds the same
    model from the saved hyper-parameters (``import rsmae`` first: it registers the rsmae models with
    timm). The backbone's weights are then loaded into that model; only the head starts fresh. The
    returned ``task.model.rsmae_meta`` (and ``pretrained_cfg``) says which bands, order and statistics to
    feed.

    Args:
        backbone: An rsmae backbone file.
        num_classes: Classes of the task.
        **task_kwargs: Further ``ClassificationTask`` arguments (``lr``, ``loss``, ``freeze_backbone``...).

    Raises:
        WeightsError: naming ``backbone`` when it does not load into the model torchgeo builds.
    """
    from torchgeo.trainers import ClassificationTask

    encoder = load_backbone(backbone)
    meta = encoder.rsmae_meta
    name = timm_model_name(meta.preset, img_size=meta.img_size, patch_size=meta.patch_size,
                           **meta.encoder_kwargs)
    task = ClassificationTask(model=name, weights=None, in_channels=meta.in_chans, num_classes=num_classes,
                              **task_kwargs)
    missing, unexpected = task.model.load_state_dict(encoder.state_dict(), strict=False)
    if unexpected or set(missing) != {"head.weight", "head.bias"}:
        raise WeightsError(f"{backbone}: does not fit torchgeo's {name} (missing {missing}, unexpected "
                           f"{unexpected}); re-export the backbone with this rsmae")
    attach_meta(task.model, meta)
    return task
