"""Backbone export at the end of pretraining, and snapshots along it (a budget curve)."""

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
        every_n_steps: Also write ``backbones/step<N>.safetensors`` every that many optimiser steps
            (and at step 0), for a probe along training; ``None``: only the final file.
    """

    def __init__(self, filename: str = "backbone.safetensors", dirpath: str | None = None,
                 weights: Literal["student", "teacher"] = "student",
                 every_n_steps: int | None = None) -> None:
        if every_n_steps is not None and every_n_steps < 1:
            raise ValueError(f"every_n_steps={every_n_steps}: give a positive step count or None")
        self.filename = filename
        self.dirpath = dirpath
        self.weights = weights
        self.every_n_steps = every_n_steps
        self.path: Path | None = None
        self._dir = Path(".")

    def setup(self, trainer: L.Trainer, pl_module: PretrainTask, stage: str) -> None:
        """Find the output folder (on every rank: it is a collective under DDP)."""
        self._dir = Path(self.dirpath) if self.dirpath else run_dir(trainer)

    def on_train_start(self, trainer: L.Trainer, pl_module: PretrainTask) -> None:
        """The step-0 snapshot (not on a resumed run, whose step 0 is long past)."""
        if self.every_n_steps and trainer.global_step == 0:
            self._snapshot(trainer, pl_module)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: PretrainTask, *args: object) -> None:
        """A snapshot every ``every_n_steps`` optimiser steps."""
        if self.every_n_steps and trainer.global_step % self.every_n_steps == 0 and trainer.global_step:
            self._snapshot(trainer, pl_module)

    def on_fit_end(self, trainer: L.Trainer, pl_module: PretrainTask) -> None:
        """Write the backbone (rank 0)."""
        self.path = self._write(trainer, pl_module, self._dir / self.filename)

    def _snapshot(self, trainer: L.Trainer, pl_module: PretrainTask) -> None:
        name = f"step{trainer.global_step:07d}.safetensors"
        self._write(trainer, pl_module, self._dir / "backbones" / name)

    def _write(self, trainer: L.Trainer, pl_module: PretrainTask, path: Path) -> Path | None:
        if not trainer.is_global_zero:
            return None
        if "fsdp" in type(trainer.strategy).__name__.lower():
            _logger.warning("FSDP shards the encoder: export last.ckpt with pipelines/export.py")
            return None
        return save_backbone(pl_module.encoder(self.weights), path, pl_module.backbone_meta(self.weights))
