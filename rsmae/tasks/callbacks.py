"""Callbacks of the pretraining run: reconstruction images, backbone export, EuroSAT probe.

All three write or compute on global rank 0 only and find bands, sensor and statistics in the
task's ``data_info`` (linked from the data by the CLI), never by position.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from PIL import Image
from torch import Tensor

from rsmae.bands import rgb_indices
from rsmae.data import normalize_images
from rsmae.datasets import EuroSAT
from rsmae.datasets.leakage import check_no_eval_images
from rsmae.datasets.matching import match_dataset_bands
from rsmae.errors import BandError
from rsmae.files import atomic_write_json
from rsmae.models import patchify, unpatchify
from rsmae.models.weights import save_backbone
from rsmae.tasks.pretrain import PretrainTask
from rsmae.tasks.probe import extract_features, knn_accuracy, linear_probe_accuracy
from rsmae.tasks.statistics import backbone_or_training_statistics

__all__ = ["BackboneExport", "ProbeCallback", "ReconstructionImages", "reconstruct", "true_colour"]

_logger = logging.getLogger(__name__)
_SPLITS = ("train", "test")


def _run_dir(trainer: L.Trainer) -> Path:
    """The run's log folder (the first logger's), else the trainer's root folder.

    ``trainer.log_dir`` is a collective under DDP (rank 0 broadcasts it): call it on every rank,
    e.g. in ``setup``, never behind a rank check.
    """
    return Path(trainer.log_dir or trainer.default_root_dir)


def true_colour(images: Tensor, bands: list[str], sensor: str | None, *,
                percentiles: tuple[float, float] = (2.0, 98.0), reference: Tensor | None = None) -> Tensor:
    """Percentile-stretched true-colour composites ``(B, 3, H, W)`` in [0, 1].

    Args:
        images: ``(B, C, H, W)`` in any units.
        bands: Band names of the channels.
        sensor: Their sensor; the red, green and blue bands come from :func:`~rsmae.bands.rgb_indices`,
            else the first three bands (a single band is shown grey).
        percentiles: Lower and upper percentile mapped to 0 and 1, per sample and channel.
        reference: Images whose percentiles set the stretch (default ``images``), so that inputs and
            reconstructions of one sample share a stretch.
    """
    index = rgb_indices(bands, sensor) if sensor else None
    if index is None:
        index = tuple(range(3)) if images.shape[1] >= 3 else (0, 0, 0)
    rgb = images[:, list(index)].float()
    ref = (reference if reference is not None else images)[:, list(index)].float().flatten(2)
    lo = torch.quantile(ref, percentiles[0] / 100, dim=2)[..., None, None]
    hi = torch.quantile(ref, percentiles[1] / 100, dim=2)[..., None, None]
    return ((rgb - lo) / (hi - lo).clamp_min(1e-6)).clamp(0, 1)


def reconstruct(images: Tensor, pred: Tensor, mask: Tensor, patch_size: int, *,
                norm_pix_loss: bool) -> tuple[Tensor, Tensor]:
    """Images from MAE predictions: masked patches predicted, visible patches from the input.

    Args:
        images: ``(B, C, H, W)`` model inputs.
        pred: ``(B, N, P*P*C)`` decoder output.
        mask: ``(B, N)``, 1 = masked.
        patch_size: ``P``.
        norm_pix_loss: The predictions are per-patch normalised: map them back with each input
            patch's mean and (unbiased) std, as the target was made.

    Returns:
        The reconstruction and the mask, both ``(B, C, H, W)``.
    """
    grid = (images.shape[-2] // patch_size, images.shape[-1] // patch_size)
    if norm_pix_loss:
        patches = patchify(images, patch_size)
        pred = pred * (patches.var(-1, keepdim=True) + 1e-6).sqrt() + patches.mean(-1, keepdim=True)
    shape = (patch_size, images.shape[1], grid)
    mask = unpatchify(mask[..., None].expand(-1, -1, pred.shape[-1]).to(pred.dtype), *shape)
    return unpatchify(pred, *shape) * mask + images * (1 - mask), mask


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
        self._dir = _run_dir(trainer) / "reconstructions"

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
        self._dir = Path(self.dirpath) if self.dirpath else _run_dir(trainer)

    def on_fit_end(self, trainer: L.Trainer, pl_module: PretrainTask) -> None:
        """Write the backbone (rank 0)."""
        if not trainer.is_global_zero:
            return
        if "fsdp" in type(trainer.strategy).__name__.lower():
            _logger.warning("FSDP shards the encoder: export last.ckpt with pipelines/export.py")
            return
        self.path = save_backbone(pl_module.encoder(self.weights), self._dir / self.filename,
                                  pl_module.backbone_meta(self.weights))


def _channels(raw: Tensor, sources: list[int | None], mean: list[float], std: list[float]) -> Tensor:
    """``(N, len(sources), H, W)``: channel ``j`` is ``raw[:, sources[j]]`` normalised, zeros for ``None``.

    ``mean[j]`` and ``std[j]`` are the statistics of channel ``j``.
    """
    out = raw.new_zeros(raw.shape[0], len(sources), *raw.shape[2:], dtype=torch.float32)
    for j, i in enumerate(sources):
        if i is not None:
            out[:, j] = normalize_images(raw[:, i : i + 1], mean[j : j + 1], std[j : j + 1])[:, 0]
    return out


class ProbeCallback(L.Callback):
    """Every ``every_n_epochs`` epochs: k-NN and linear-probe accuracy on EuroSAT, frozen cls features.

    Each input channel of the encoder is fed the EuroSAT band that matches its band (the task's
    ``data_info``) by name, by true-colour role (RGB -> B04, B03, B02) or else by nearest central
    wavelength (:func:`~rsmae.datasets.match_dataset_bands`; e.g. Landsat OLI B5 -> B8A); a band
    with no EuroSAT band within 50 nm is fed zeros (its mean). The mapping is logged once.

    Normalisation: a Sentinel-2 encoder (L1C or L2A) gets EuroSAT in its own bands, normalised with
    the pretraining statistics (same bands, same digital numbers). Any other sensor's statistics
    describe another physical product (Landsat DN, 8-bit RGB), so EuroSAT is then normalised with
    per-band statistics of EuroSAT's own train split. Images are resized to the encoder's input size
    when it differs. Logs ``probe/knn_acc`` and ``probe/linear_acc``.

    Args:
        root: EuroSAT folder: ``train/`` and ``test/`` class folders, or torchgeo's EuroSAT download
            (:class:`~rsmae.datasets.EuroSAT`). ``None`` (the shipped configs' default): no probe, said
            once in the log.
        every_n_epochs: Interval in epochs.
        k: Neighbours of the k-NN classifier.
        linear_steps: Adam steps of the linear probe.
        batch_size: Batch size of feature extraction.
        weights: Probe the ``"student"`` or (RC-MAE) the ``"teacher"`` encoder.

    At setup the pretraining stores (the datamodule's ``stores``) are checked against EuroSAT's test
    split (:func:`~rsmae.datasets.check_no_eval_images`): the probe scores on those images, so none
    may be in the corpus. Its train images may be (as ImageNet's are in MAE's pretraining).

    Raises:
        BandError: at setup, when no band of the pretraining data matches a EuroSAT band.
        EvaluationLeakError: at setup, when a pretraining store holds a EuroSAT test image.
    """

    def __init__(self, root: str | None = None, every_n_epochs: int = 1, k: int = 20, linear_steps: int = 300,
                 batch_size: int = 128, weights: Literal["student", "teacher"] = "student") -> None:
        self.root = root
        self.every_n_epochs = every_n_epochs
        self.k = k
        self.linear_steps = linear_steps
        self.batch_size = batch_size
        self.weights = weights
        self.data: dict[str, EuroSAT] = {}
        self.images: dict[str, Tensor] = {}  # per split: the encoder's channels, normalised
        self.last: dict[str, float] = {}
        self.history: list[dict[str, float]] = []
        self._dir = Path(".")
        self._told = False

    def load(self, data_info: dict[str, Any]) -> None:
        """Read EuroSAT in the pretraining bands, or the matching ones, and normalise it (see above)."""
        sensor, bands = data_info.get("sensor"), list(data_info["bands"])
        if not sensor:
            raise BandError("ProbeCallback needs the sensor of the pretraining bands in data_info")
        matched = match_dataset_bands(bands, sensor, EuroSAT.all_bands, EuroSAT.sensor)
        mapping = ", ".join(f"{b} <- {m or 'zeros'} ({how})"
                            for b, (m, how) in zip(bands, matched, strict=True))
        own = sensor in ("s2-l1c", "s2-l2a")  # EuroSAT has every Sentinel-2 band, in the same numbers
        if own:
            _logger.log(logging.INFO if sensor == EuroSAT.sensor else logging.WARNING,
                        "probing a %s encoder on EuroSAT (Sentinel-2 L1C), pretraining statistics: %s",
                        sensor, mapping)
        else:
            _logger.warning("probing a %s encoder on EuroSAT (Sentinel-2 L1C), EuroSAT train-split "
                            "statistics: %s", sensor, mapping)
        used = [b for b, _ in matched] if own else sorted({b for b, _ in matched if b is not None},
                                                          key=EuroSAT.all_bands.index)
        self.data = {s: EuroSAT(self.root, s, bands=used) for s in _SPLITS}
        sources = [None if b is None else used.index(b) for b, _ in matched]

        def train_split() -> tuple[list[float], list[float]]:  # per encoder channel (zeros: 0 and 1)
            train = self.data["train"].images.double()
            mean, std = train.mean(dim=(0, 2, 3)), train.std(dim=(0, 2, 3)).clamp_min(1e-6)
            return ([0.0 if i is None else float(mean[i]) for i in sources],
                    [1.0 if i is None else float(std[i]) for i in sources])

        mean, std, _ = backbone_or_training_statistics(data_info.get("mean"), data_info.get("std"),
                                                       train_split, usable=own)
        self.images = {s: _channels(ds.images, sources, mean, std) for s, ds in self.data.items()}

    def setup(self, trainer: L.Trainer, pl_module: PretrainTask, stage: str) -> None:
        """Load the data once and check the corpus (errors surface before training starts).

        Raises:
            EvaluationLeakError: when a pretraining store holds one of EuroSAT's test images.
        """
        self._dir = _run_dir(trainer)  # a collective under DDP: every rank asks
        if self.root is None:
            if trainer.is_global_zero and not self._told:
                _logger.info("no EuroSAT probe: ProbeCallback has root: null (set it to a EuroSAT folder, "
                             "e.g. --trainer.callbacks.init_args.root ../shared/data/eurosat_ms_subset)")
                self._told = True
            return
        if trainer.is_global_zero and not self.data:
            info = pl_module.hparams.get("data_info")
            if not info:
                raise BandError("ProbeCallback needs the task's data_info (bands, statistics)")
            self.load(info)
            stores = getattr(getattr(trainer, "datamodule", None), "stores", None)
            if stores:
                check_no_eval_images(stores, self.data["test"].paths)
            else:
                _logger.warning("the datamodule names no stores: cannot check that the pretraining "
                                "corpus holds no EuroSAT test image")

    def evaluate(self, encoder: torch.nn.Module, img_size: int | None = None) -> dict[str, float]:
        """k-NN and linear-probe accuracy of ``encoder`` on the loaded EuroSAT split."""
        feats = {}
        for split, images in self.images.items():
            feats[split] = extract_features(encoder, images, batch_size=self.batch_size, img_size=img_size)
        train_y, test_y = self.data["train"].labels, self.data["test"].labels
        n = len(self.data["train"].classes)
        args = (feats["train"], train_y, feats["test"], test_y)
        self.last = {
            "probe/knn_acc": knn_accuracy(*args, self.k, num_classes=n),
            "probe/linear_acc": linear_probe_accuracy(*args, steps=self.linear_steps, num_classes=n),
        }
        return self.last

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: PretrainTask) -> None:
        """Probe at every ``every_n_epochs``-th epoch (rank 0)."""
        if (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self._probe_now(trainer, pl_module)

    def on_train_start(self, trainer: L.Trainer, pl_module: PretrainTask) -> None:
        """Probe the starting weights, so every curve has its baseline (rank 0)."""
        self._probe_now(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: PretrainTask) -> None:
        """Probe the final weights (rank 0)."""
        self._probe_now(trainer, pl_module)

    def _probe_now(self, trainer: L.Trainer, pl_module: PretrainTask) -> None:
        if not trainer.is_global_zero or not self.data:
            return
        if self.history and self.history[-1]["step"] == trainer.global_step:
            return  # already probed at this step
        metrics = self.evaluate(pl_module.encoder(self.weights), pl_module.hparams.img_size)
        _logger.info("step %d: %s", trainer.global_step, metrics)
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
        self._record(trainer)

    def _record(self, trainer: L.Trainer) -> None:
        """Keep the curve (step, accuracies) and write it atomically to ``probe.json`` in the run folder."""
        sizes = {f"n_{split}": len(ds.labels) for split, ds in self.data.items()}
        self.history.append({"step": trainer.global_step, **sizes, **self.last})
        atomic_write_json(self._dir / "probe.json", self.history, indent=1)

    def state_dict(self) -> dict[str, Any]:
        """The probe curve so far: saved in checkpoints, so a resumed run keeps its step-0 baseline."""
        return {"history": [dict(entry) for entry in self.history]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the probe curve of the checkpoint (entries after its step are dropped with it)."""
        self.history = [dict(entry) for entry in state_dict.get("history", [])]
