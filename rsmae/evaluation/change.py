"""Change-detection evaluation: train (or load) a change model, score whole test scenes.

:func:`evaluate_change` is the whole protocol behind ``pipelines/evaluate_change.py`` and one cell
of the change-detection tables:

1. read the training scenes (a dataset's fixed split, or named cities of any folder in its layout),
   match date 2's radiometry to date 1 per scene and band, and hold out the bottom
   ``val_fraction`` of every training scene as the validation split;
2. train a :class:`~rsmae.tasks.change.ChangeTask` (Siamese ViT from a backbone file or a random
   init, or the FC-Siam-diff baseline) on random co-located crops of the rest, with Lightning;
3. choose the probability threshold of best F1 on the validation strips, scored like the test;
4. score every test scene whole by sliding windows with blended logits (not a centre crop),
   pool F1 / IoU / precision / recall / accuracy of the change class over the test scenes, and
   write change-map PNGs, the precision-recall curve and the model.

A saved model (``load=``) skips 1-3 and keeps the threshold chosen when it was trained.

The settings are :class:`~rsmae.evaluation.change_config.ChangeConfig` (training and scoring) inside
a :class:`~rsmae.evaluation.change_config.ChangeRun` (what, where), passed whole; scoring and its
outputs are :mod:`rsmae.evaluation.change_scoring`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader

from rsmae.datasets import BitemporalScenes, PairCrops, PairScene
from rsmae.datasets.bitemporal import band_statistics
from rsmae.evaluation.change_config import CHANGE_DATASETS, ChangeConfig, ChangeRun
from rsmae.evaluation.change_metrics import best_f1_threshold
from rsmae.evaluation.change_scoring import format_scene, predict_scene, score_scenes, summary
from rsmae.evaluation.data import accelerator_device
from rsmae.evaluation.progress import StepProgress, track
from rsmae.models.trainable import Tune
from rsmae.models.trainable import parse_protocol as parse_protocol_spec
from rsmae.tasks.change import ChangeTask, load_change_model, save_change_model
from rsmae.tasks.precision import default_precision
from rsmae.tasks.statistics import backbone_or_training_statistics

__all__ = [
    "CHANGE_DATASETS",
    "ChangeConfig",
    "ChangeRun",
    "evaluate_change",
    "format_scene",
    "parse_protocol",
    "predict_scene",
    "run_change",
    "summary",
]

_logger = logging.getLogger(__name__)


def _tune(protocol: str | int) -> Tune:
    """The encoder's tune setting of a change protocol (:func:`~rsmae.models.trainable.parse_protocol`).

    Raises:
        ValueError: for a frozen-feature protocol (``knn``, ``linear``, ``head``) or an unknown one.
    """
    spec = parse_protocol_spec(protocol)
    if spec.frozen_features:
        raise ValueError(f"protocol {protocol!r}; choose frozen, lastK (e.g. last2), mlp or full")
    return spec.tune


def parse_protocol(protocol: str | int) -> Tune:
    """Deprecated: the tune setting of a protocol; use :func:`rsmae.models.trainable.parse_protocol`."""
    warnings.warn("rsmae.evaluation.change.parse_protocol is deprecated; use "
                  "rsmae.models.trainable.parse_protocol (a Protocol)", DeprecationWarning, stacklevel=2)
    return _tune(protocol)


def _prepare(data: BitemporalScenes, cfg: ChangeConfig) -> BitemporalScenes:
    """Apply the configured per-scene preprocessing (date-2 radiometric matching) in place."""
    if cfg.match_dates:
        data.scenes = [scene.match_dates() for scene in data.scenes]
    return data


def _split_train(scenes: Sequence[PairScene], fraction: float) -> tuple[list[PairScene], list[PairScene]]:
    """Top rows for training, the bottom ``fraction`` of each scene for validation."""
    train, val = [], []
    for scene in scenes:
        cut = scene.mask.shape[0] - max(1, round(fraction * scene.mask.shape[0])) if fraction > 0 else None
        train.append(scene.rows(0, cut))
        if cut is not None:
            val.append(scene.rows(cut))
    return train, val


def _pos_weight(scenes: Sequence[PairScene], ignore_index: int) -> float:
    change = sum(int((s.mask == 1).sum()) for s in scenes)
    same = sum(int((s.mask == 0).sum()) for s in scenes)
    return math.sqrt(same / change) if change else 1.0


def _train(run: ChangeRun, data: BitemporalScenes) -> tuple[ChangeTask, dict[str, Any]]:
    cfg, backbone, seed = run.config, run.backbone, run.seed
    train_parts, val_parts = _split_train(data.scenes, cfg.val_fraction)
    pos_weight = cfg.pos_weight or _pos_weight(train_parts, data.ignore_index)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        task = ChangeTask(**{**cfg.task_kwargs(), "pos_weight": pos_weight},
                          bands=list(data.bands), model=run.model,
                          backbone=None if backbone is None else str(backbone), img_size=cfg.crop_size,
                          sensor=data.sensor, tune=run.tune, ignore_index=data.ignore_index, seed=seed)
        mean, std, from_training = backbone_or_training_statistics(
            task.hparams.mean, task.hparams.std, lambda: band_statistics(train_parts))
        if from_training:
            task.set_statistics(mean, std)
            _logger.info("normalising with statistics of the training split (%s)",
                         "no backbone" if backbone is None else "the backbone has none for these bands")
        crops = PairCrops(train_parts, cfg.crop_size, cfg.steps * cfg.batch_size, seed=seed,
                          ignore_index=data.ignore_index)
        loader = DataLoader(crops, batch_size=cfg.batch_size, shuffle=False, num_workers=0, drop_last=True)
        trainer = L.Trainer(max_steps=cfg.steps, accelerator=cfg.accelerator, devices=1, logger=False,
                            enable_checkpointing=False, enable_progress_bar=False,
                            callbacks=[StepProgress("change: training")] if cfg.progress else None,
                            enable_model_summary=False, precision=cfg.precision, num_sanity_val_steps=0,
                            default_root_dir=str(run.out) if run.out else None)
        start = time.perf_counter()
        trainer.fit(task, loader)
        train_seconds = time.perf_counter() - start
    task.to(cfg.accelerator)  # Lightning hands the model back on the CPU
    val_probs = [predict_scene(task, s, overlap=cfg.overlap, window_batch=cfg.window_batch, blend=cfg.blend,
                               precision=cfg.precision)
                 for s in track(val_parts, "change: validation", unit="scene", enabled=cfg.progress)]
    val_masks = [torch.from_numpy(s.mask.astype("int64")) for s in val_parts]
    threshold, val_f1 = (best_f1_threshold(val_probs, val_masks, ignore_index=data.ignore_index)
                         if val_parts else (0.5, float("nan")))
    _logger.info("trained %d steps in %.1f s; validation threshold %.3f (F1 %.3f)", cfg.steps, train_seconds,
                 threshold, val_f1)
    info = {"threshold": threshold, "val_f1": val_f1, "train_seconds": train_seconds,
            "train_scenes": [s.name for s in data.scenes], "pos_weight": pos_weight, "steps": cfg.steps}
    return task, info


def evaluate_change(backbone: str | Path | None, tune: Tune = "frozen", *, test_root: str | Path,
                    out_dir: str | Path | None = None, **options: Any) -> dict[str, Any]:
    """Train (or load) a change model and score whole test scenes by sliding windows.

    Keyword options are the fields of :class:`~rsmae.evaluation.change_config.ChangeRun` (``dataset``,
    ``seed``, ``model``, cities, ``bands``, ``load``, ``on_scene``...) and of
    :class:`~rsmae.evaluation.change_config.ChangeConfig` (``steps``, ``crop_size``...), split between
    them by name; :func:`run_change` takes the run whole.

    Args:
        backbone: Backbone file of the encoder's initial weights; ``None`` = random init (or no
            encoder with ``model="fc-siam-diff"``).
        tune: Encoder parts that train: ``"frozen"``, ``k`` or ``"lastK"`` (K last blocks),
            ``"mlp"``, ``"full"`` (:func:`~rsmae.models.trainable.parse_protocol`).
        test_root: Folder of the test scenes (the dataset's layout).
        out_dir: Where the model, ``metrics.json``, ``pr_curve.csv``/``.png`` and ``maps/*.png`` go.
        **options: :class:`~rsmae.evaluation.change_config.ChangeRun` fields:

            train_root: Folder of the training scenes (default ``test_root``).
            dataset: ``"oscd"``, ``"levircd"`` or ``"landsat"``.
            seed: Seed of the model init, crops and augmentation.
            model: ``"siamese-vit"`` or ``"fc-siam-diff"``.
            train_cities: Training scenes instead of the dataset's train split.
            test_cities: Test scenes instead of its test split (``["all"]``: every labelled scene).
            bands: Bands to use (default all of the dataset's); e.g. ``["B04", "B03", "B02"]``.
            load: A model saved by an earlier run: scored without training.
            on_scene: Called with each test scene's metrics as soon as it is scored.

            and any :class:`ChangeConfig` field (``steps``, ``crop_size``, ``overlap``...).

    Returns:
        ``f1``, ``iou``, ``precision``, ``recall``, ``accuracy`` (pooled over the test scenes at
        ``threshold``), ``threshold``, ``val_f1``, ``f1_at_0.5``, ``average_precision``,
        ``scenes`` (per-scene metrics), timings and the run's settings.
    """
    given = {"backbone", "tune", "test_root", "out", "config"}
    run_options = {f.name for f in dataclasses.fields(ChangeRun)} - given
    run = {k: options.pop(k) for k in list(options) if k in run_options}
    return run_change(ChangeRun(backbone=backbone, tune=_tune(tune), test_root=test_root,
                                out=Path(out_dir) if out_dir is not None else None,
                                config=ChangeConfig.from_kwargs(**options), **run))


def run_change(run: ChangeRun) -> dict[str, Any]:
    """:func:`evaluate_change` of one :class:`~rsmae.evaluation.change_config.ChangeRun`, passed whole.

    ``run.config``'s ``accelerator`` and ``precision`` are resolved in place (``"auto"`` -> the device
    and precision the run uses).
    """
    cfg = run.config
    cfg.accelerator = accelerator_device(cfg.accelerator).type  # "auto" -> "cuda" or "cpu", as Lightning
    if cfg.precision == "auto":
        cfg.precision = default_precision(cfg.accelerator)
        _logger.info("precision auto -> %s on %s", cfg.precision, cfg.accelerator)
    threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        return _evaluate(run)
    finally:
        torch.set_num_threads(threads)


def _evaluate(run: ChangeRun) -> dict[str, Any]:
    cfg, cls, out, load, bands = run.config, run.dataset_class, run.out, run.load, run.bands
    if load is not None:
        task, info = load_change_model(load)
        task.to(cfg.accelerator)
        info = {**info, "loaded": str(load)}
        cfg.match_dates = bool(info.get("match_dates", cfg.match_dates))  # as the model was trained
        bands = task.hparams.bands
    else:
        train_split = "train" if run.train_cities is None else "cities"
        root = run.train_root or run.test_root
        data = _prepare(cls(root, train_split, cities=run.train_cities, bands=bands), cfg)
        task, info = _train(run, data)
        bands = data.bands
    all_cities = run.test_cities is not None and list(run.test_cities) == ["all"]
    test = _prepare(cls(run.test_root, "all" if all_cities else "test",
                        cities=None if all_cities else run.test_cities, bands=bands), cfg)
    result = score_scenes(task, test, cfg, float(info["threshold"]), out=out, on_scene=run.on_scene)
    result.update({k: v for k, v in info.items() if k != "threshold"}, dataset=run.dataset,
                  model=task.hparams.model, backbone=None if run.backbone is None else str(run.backbone),
                  tune=task.hparams.tune, seed=run.seed, bands=list(bands), window=task.hparams.img_size,
                  overlap=cfg.overlap, compute_precision=cfg.precision, device=cfg.accelerator,
                  test_scenes=[s.name for s in test.scenes])
    if out is not None:
        if load is None:
            extra = {k: info[k] for k in ("threshold", "val_f1", "train_scenes", "steps")}
            extra["match_dates"] = cfg.match_dates
            result["model_path"] = str(save_change_model(task, out / "change_model.safetensors",
                                                         extra={**extra, "dataset": run.dataset}))
        (out / "metrics.json").write_text(json.dumps(result, indent=2))
    return result
