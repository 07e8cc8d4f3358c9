"""Many scenes across GPUs and nodes through Lightning's predict loop, one scene per ``predict_step``.

``Trainer(accelerator, devices, num_nodes, strategy="ddp" beyond one device).predict(...)`` starts one
process per device (Lightning's launcher, or a cluster's: SLURM, torchrun), sets up the process group
(NCCL on GPUs, Gloo on CPUs: Lightning picks) and calls :class:`ScenePredictor` on each rank. Each rank
loads the model from its file onto its own device and writes its share of the scenes with the per-scene
writer of :mod:`rsmae.predict.run` (a temporary folder renamed when complete; a finished scene skipped).
Imported only when a run asks for devices: ``import rsmae.predict`` does not load this module (Lightning
itself is imported by it today anyway, through :mod:`rsmae.data`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning as L
from torch.utils.data import DataLoader

from rsmae.predict.errors import PredictError

if TYPE_CHECKING:
    from rsmae.predict.models import Predictor
    from rsmae.predict.run import _SceneJob
    from rsmae.predict.scene import PredictScene

__all__ = ["ScenePredictor", "predict_scenes"]

_logger = logging.getLogger(__name__)


def _unchanged(batch: list[Any]) -> Any:  # noqa: ANN401 - a scene, as the dataset holds it
    """Collate of one-item batches: the scene itself."""
    return batch[0]


class ScenePredictor(L.LightningModule):
    """Writes one scene per ``predict_step`` with the model on this rank's device.

    Args:
        job: What to write (model file, output folder, options); loads the model where it runs.
        scenes: Every scene of the run, in the same order on every rank.
        progress: Called with the windows of each model call (on this rank).
    """

    def __init__(self, job: _SceneJob, scenes: Sequence[PredictScene],
                 progress: Callable[[int], None] | None = None) -> None:
        super().__init__()
        self.job, self.scenes, self.progress = job, list(scenes), progress
        self.predictor: Predictor | None = None
        self.allow_zero_length_dataloader_with_multiple_devices = True  # fewer scenes than ranks

    def predict_dataloader(self) -> DataLoader:
        """This rank's scenes: ``scenes[rank::world]``, one per batch, read in this process.

        Lightning's own predict sampler deals the scenes the same way without repeats, but asserts that
        every rank gets at least one (fewer scenes than devices fails); PyTorch's DistributedSampler pads
        ranks by repeating scenes, and two ranks writing one scene would remove each other's temporary
        folder (another node's process looks dead) and waste a device. So the trainer runs with
        ``use_distributed_sampler=False`` and each rank takes its stride here (after the process group is
        set up, when the rank is known); a rank without scenes (fewer scenes than ranks) runs no step and
        waits at the barrier of :func:`predict_scenes`.
        """
        rank, world = self.trainer.global_rank, self.trainer.world_size
        return DataLoader(self.scenes[rank::world], batch_size=1, collate_fn=_unchanged, num_workers=0)

    def transfer_batch_to_device(self, batch: Any, device: object, dataloader_idx: int) -> Any:  # noqa: ANN401
        """The scene as it is: a description of files, read (and moved) window by window by the writer."""
        return batch

    def on_predict_start(self) -> None:
        """Load the model onto this rank's device (``self.device``, set by the strategy)."""
        self.predictor = self.job.load(device=str(self.device))

    def predict_step(self, scene: PredictScene, batch_idx: int) -> Path:
        """Write ``scene``'s folder unless an earlier run finished it; the folder."""
        folder = Path(self.job.out) / scene.name
        if folder.is_dir():
            _logger.info("%s: done by an earlier run, skipped", folder)
            return folder
        assert self.predictor is not None  # set by on_predict_start
        self.job.write(self.predictor, scene, self.progress)
        _logger.info("%s: done on %s", folder, self.device)
        return folder


def predict_scenes(job: _SceneJob, scenes: Sequence[PredictScene], progress: Callable[[int], None] | None,
                   *, progress_bar: bool = False) -> list[Path]:
    """Write every scene's folder over the devices of ``job.config``; on rank 0, all the folders.

    ``job.config.accelerator`` (``None``: ``"auto"``), ``devices`` (``None``: 1) per node and
    ``num_nodes`` go to the ``Trainer``; more than one device in all runs Lightning's ``"ddp"`` strategy.
    On the CPU the processes of a node share its cores unless ``threads`` is set. Every rank returns
    after all ranks are done (a barrier); ranks other than 0 return an empty list, so a command run on
    each rank lists the folders once.

    Args:
        job: The per-scene writer.
        scenes: Every scene of the run (every rank passes the same list).
        progress: Called with the windows of each model call on this rank.
        progress_bar: Lightning's bar of scenes (the windows are counted through ``progress``).

    Raises:
        PredictError: fewer than one device or node; the ONNX engine on other than the CPU.
    """
    cfg = job.config
    accelerator, nodes = cfg.accelerator or "auto", cfg.num_nodes
    devices = 1 if cfg.devices is None else cfg.devices
    if devices < 1 or nodes < 1:
        raise PredictError(f"devices {devices}, num_nodes {nodes}: each must be at least 1")
    if (cfg.engine == "onnx" or job.model.endswith(".onnx")) and accelerator != "cpu":
        raise PredictError(f"{job.model}: onnxruntime runs on the CPU here; pass accelerator cpu, or run the "
                           "engine torch on the devices")
    if accelerator == "cpu" and devices > 1 and cfg.threads is None:
        job = replace(job, config=replace(cfg, threads=max(1, (os.cpu_count() or 1) // devices)))
    trainer = L.Trainer(accelerator=accelerator, devices=devices, num_nodes=nodes,
                        strategy="ddp" if devices * nodes > 1 else "auto", logger=False,
                        enable_checkpointing=False, enable_progress_bar=progress_bar,
                        enable_model_summary=False, use_distributed_sampler=False)
    trainer.predict(ScenePredictor(job, scenes, progress), return_predictions=False)
    # predict ends without a collective and skips its end hooks on a rank without scenes: wait here so
    # that rank 0 returns the folders when all of them are written (the process group lives until exit)
    trainer.strategy.barrier("rsmae_predict_scenes")
    if trainer.global_rank != 0:
        return []
    return [Path(job.out) / s.name for s in scenes]
