"""Backbone export at the end of pretraining."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

import lightning as L

from rsmae.models.weights import save_backbone
from rsmae.tasks.callbacks.run_dir import run_dir
from rsmae.tasks.pretrain import PretrainTask

__all__ = ["BackboneExport"]

_logger = logging.getLogger(__name__)


class BackboneExport(L.Callback):
    """At the end of ``fit`` write the encoder as ``backbone.safetensors`` with its metadata.

    The metadata (:class:`~rsmae.models.weights.BackboneMeta`) records bands, sensor, mean/std,
    image and patch size, GSD and, in ``source``, which encoder (student or teacher) and step.
    Under FSDP the encoder is sharded: export the checkpoint with ``pipelines/export.py`` instead.

    Args:
        filename: File name inside ``dirpath``.
        dirpath: Output folder; default the run's log folder.
        weights: ``"student"`` (default) or, for RC-MAE, ``"teacher"``.
    """

    def __init__(self, filename: str = "backbone.safetensors", dirpath: str | None = None,
                 weights: Literal["student", "teacher"] = "student") -> None:
        self.filename = filename
        self.dirpath = dirpath
        self.weights = weights
        self.path: Path | None = None
        self._dir = Path(".")

    def setup(self, trainer: L.Trainer, pl_module: PretrainTask, stage: str) -> None:
        """Find the output folder (on every rank: it is a collective under DDP)."""
        self._dir = Path(self.dirpath) if self.dirpath else run_dir(trainer)

    def on_fit_end(self, trainer: L.Trainer, pl_module: PretrainTask) -> None:
        """Write the backbone (rank 0)."""
        if not trainer.is_global_zero:
            return
        if "fsdp" in type(trainer.strategy).__name__.lower():
            _logger.warning("FSDP shards the encoder: export last.ckpt with pipelines/export.py")
            return
        self.path = save_backbone(pl_module.encoder(self.weights), self._dir / self.filename,
                                  pl_module.backbone_meta(self.weights))
