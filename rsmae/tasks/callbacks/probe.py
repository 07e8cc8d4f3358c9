"""The EuroSAT probe of the pretraining run: k-NN and linear-probe accuracy along training."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from torch import Tensor

from rsmae.datasets import EuroSAT
from rsmae.datasets.leakage import check_no_eval_images
from rsmae.errors import BandError
from rsmae.files import atomic_write_json
from rsmae.tasks.callbacks.eurosat import load_probe_eurosat
from rsmae.tasks.callbacks.run_dir import run_dir
from rsmae.tasks.pretrain import PretrainTask
from rsmae.tasks.probe import extract_features, knn_accuracy, linear_probe_accuracy

__all__ = ["ProbeCallback"]

_logger = logging.getLogger(__name__)


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
        self.data, self.images = load_probe_eurosat(self.root, data_info)

    def setup(self, trainer: L.Trainer, pl_module: PretrainTask, stage: str) -> None:
        """Load the data once and check the corpus (errors surface before training starts).

        Raises:
            EvaluationLeakError: when a pretraining store holds one of EuroSAT's test images.
        """
        self._dir = run_dir(trainer)  # a collective under DDP: every rank asks
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
