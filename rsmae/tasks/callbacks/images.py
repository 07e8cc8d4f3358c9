"""Reconstruction grids of the pretraining run (input / masked input / reconstruction)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from PIL import Image
from torch import Tensor

from rsmae.data import normalize_images
from rsmae.tasks.callbacks.run_dir import run_dir
from rsmae.tasks.pretrain import PretrainTask
from rsmae.tasks.render import reconstruct, true_colour

__all__ = ["ReconstructionImages"]


class ReconstructionImages(L.Callback):
    """Every ``every_n_steps`` steps: PNG grid of input / masked input / reconstruction.

    The same ``num_images`` validation tiles (training tiles when there is no validation split) and
    the same masks are shown each time, so the grids show the model's progress. Reconstructions of
    ``norm_pix_loss`` models are mapped back with each patch's true mean and std (as the MAE paper's
    figures); visible patches are pasted from the input. Written to
    ``<log dir>/reconstructions/step_XXXXXXX.png`` and to TensorBoard.

    Args:
        every_n_steps: Interval in global steps.
        num_images: Rows in the grid.
        seed: Seed of the fixed masks.
    """

    def __init__(self, every_n_steps: int = 500, num_images: int = 8, seed: int = 0) -> None:
        self.every_n_steps = every_n_steps
        self.num_images = num_images
        self.seed = seed
        self._images: Tensor | None = None
        self._done = -1
        self._dir = Path(".")
        self.last_path: Path | None = None

    def setup(self, trainer: L.Trainer, pl_module: PretrainTask, stage: str) -> None:
        """Find the output folder (on every rank: it is a collective under DDP)."""
        self._dir = run_dir(trainer) / "reconstructions"

    def _fixed_images(self, trainer: L.Trainer, batch: dict[str, Any]) -> Tensor:
        if self._images is None:
            dm = trainer.datamodule
            dataset = getattr(dm, "val_set", None) or getattr(dm, "train_set", None)
            if dataset is not None:
                n = min(self.num_images, len(dataset))
                images = torch.stack([dataset[i]["image"] for i in range(n)])
                if not images.is_floating_point():  # native-dtype dataset: normalise as the task does
                    mean, std = torch.as_tensor(dataset.mean), torch.as_tensor(dataset.std)
                    images = normalize_images(images, mean, std)
                self._images = images
            else:
                self._images = batch["image"][: self.num_images].detach().cpu()
        return self._images

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: PretrainTask, outputs: Any,
                           batch: dict[str, Any], batch_idx: int) -> None:
        """Render at every ``every_n_steps``-th global step."""
        step = trainer.global_step
        if not trainer.is_global_zero or step % self.every_n_steps or step == self._done:
            return
        self._done = step
        grid = self.render(pl_module, self._fixed_images(trainer, batch))
        self.last_path = self._dir / f"step_{step:07d}.png"
        self._dir.mkdir(parents=True, exist_ok=True)
        Image.fromarray((grid.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(self.last_path)
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image("reconstructions", grid, step)

    @torch.no_grad()
    def render(self, task: PretrainTask, images: Tensor) -> Tensor:
        """The grid ``(3, rows*H, 3*W)``: input, masked input, reconstruction, as true colour."""
        mae = task.student
        info = task.hparams.get("data_info") or {}
        bands = list(info.get("bands") or [f"band{i}" for i in range(images.shape[1])])
        x = images.to(task.device)
        noise = mae.make_noise(len(x), generator=torch.Generator().manual_seed(self.seed)).to(task.device)
        was_training = mae.training
        mae.eval()
        try:
            with torch.autocast(task.device.type, enabled=False):
                out = mae(x, noise=noise)
        finally:
            mae.train(was_training)
        recon, mask = reconstruct(x, out.pred.float(), out.mask, mae.patch_size,
                                  norm_pix_loss=mae.norm_pix_loss)
        panels = [true_colour(v.cpu(), bands, info.get("sensor"), reference=x.cpu()) for v in (x, x, recon)]
        hidden = mask[:, :1].cpu()
        panels[1] = panels[1] * (1 - hidden) + 0.5 * hidden  # masked patches grey
        rows = torch.cat(panels, dim=3)  # (B, 3, H, 3W)
        return torch.cat(list(rows), dim=1)
