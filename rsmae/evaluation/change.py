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
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader

from rsmae.datasets import LEVIRCD, OSCD, BitemporalScenes, LandsatCD, PairCrops, PairScene
from rsmae.datasets.bitemporal import band_statistics
from rsmae.errors import InputNotFoundError
from rsmae.evaluation.change_metrics import ChangeScores, best_f1_threshold, save_change_map, save_pr_curve
from rsmae.evaluation.data import accelerator_device
from rsmae.evaluation.progress import StepProgress, track
from rsmae.evaluation.sliding import sliding_window_logits
from rsmae.models import fused_attention_pays, set_fused_attention
from rsmae.models.trainable import Tune
from rsmae.models.trainable import parse_protocol as parse_protocol_spec
from rsmae.tasks.change import ChangeTask, load_change_model, save_change_model
from rsmae.tasks.precision import default_precision
from rsmae.tasks.statistics import backbone_or_training_statistics

__all__ = [
    "CHANGE_DATASETS",
    "ChangeConfig",
    "evaluate_change",
    "format_scene",
    "parse_protocol",
    "predict_scene",
    "summary",
]

_logger = logging.getLogger(__name__)

CHANGE_DATASETS: dict[str, type[BitemporalScenes]] = {"oscd": OSCD, "levircd": LEVIRCD, "landsat": LandsatCD}


@dataclasses.dataclass
class ChangeConfig:
    """Settings of :func:`evaluate_change` (CPU-friendly defaults: one OSCD cell in minutes).

    Attributes:
        steps: Optimiser steps.
        batch_size: Pairs per step.
        crop_size: Training crop side = inference window = the ViT's input size.
        overlap: Pixels shared by neighbouring inference windows.
        window_batch: Windows per forward in inference.
        blend: Weight window of the blended logits (``cosine``, ``triangular``, ``flat``).
        val_fraction: Bottom fraction of every training scene held out for the threshold.
        match_dates: Rescale date 2 per band to date 1's scene mean and std before anything else
            (:meth:`~rsmae.datasets.PairScene.match_dates`), in training and scoring alike.
        preset: Encoder preset of a random init.
        patch_size: Patch size of a random init.
        fusion: ``"diff"`` or ``"concat"``.
        decoder_dim: Decoder width.
        pos_weight: BCE weight of change pixels; ``None`` = sqrt(no-change / change) of the
            training pixels.
        dice_weight: Soft-Dice weight (0 = BCE only).
        lr: Decoder / from-scratch learning rate.
        encoder_lr: Learning rate of tuned encoder parts.
        weight_decay: AdamW weight decay.
        warmup_steps: Warmup steps (``None`` = 5 %).
        dihedral: Random D4 element per pair in training.
        precision: Lightning precision (``"32-true"``, ``"bf16-mixed"``); ``"auto"`` = bf16 where the
            CPU computes it natively (:func:`~rsmae.tasks.precision.default_precision`), in training
            and inference alike.
        maps: Write a change-map PNG per test scene (with ``out_dir``).
        accelerator: Lightning accelerator of training and scoring: ``"auto"`` (a GPU when one is
            visible, else the CPU), ``"cpu"`` or ``"gpu"``; resolved to the device type it runs on.
        progress: Show the training steps and the scored scenes (a bar on a terminal, else log lines).
        threads: Torch threads during the run (restored after); ``None`` keeps the current count.
            One thread per process pays when several runs share the cores.
    """

    steps: int = 300
    batch_size: int = 8
    crop_size: int = 64
    overlap: int = 16
    window_batch: int = 32
    blend: str = "cosine"
    val_fraction: float = 0.2
    match_dates: bool = True
    preset: str = "vit_tiny"
    patch_size: int = 16
    fusion: str = "diff"
    decoder_dim: int = 64
    pos_weight: float | None = None
    dice_weight: float = 0.0
    lr: float = 1e-3
    encoder_lr: float = 1e-4
    weight_decay: float = 0.01
    warmup_steps: int | None = None
    dihedral: bool = True
    precision: str = "auto"
    maps: bool = True
    accelerator: str = "auto"
    progress: bool = True
    threads: int | None = None

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> ChangeConfig:
        """Build from keyword arguments, naming the valid ones when a key is unknown."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(kwargs) - names)
        if unknown:
            raise TypeError(f"unknown change-detection setting(s) {unknown}; valid: {sorted(names)}")
        return cls(**kwargs)

    @classmethod
    def parse_settings(cls, items: Sequence[str]) -> dict[str, Any]:
        """``["steps=300", "precision=bf16-mixed"]`` -> keyword arguments (JSON values, else strings).

        Raises:
            ValueError: an item is not ``KEY=VALUE``.
        """
        out: dict[str, Any] = {}
        for item in items:
            key, sep, value = item.partition("=")
            if not sep or not key.strip():
                raise ValueError(f"setting {item!r} is not KEY=VALUE (e.g. steps=300)")
            try:
                out[key.strip()] = json.loads(value)
            except json.JSONDecodeError:
                out[key.strip()] = value
        return out


def format_scene(line: dict[str, Any]) -> str:
    """One printable line of a test scene's scores."""
    scores = " ".join(f"{k} {line[k]:.4f}" for k in ("f1", "iou", "precision", "recall", "accuracy"))
    return f"{line['scene']}: {scores} change {line['change_fraction']:.2%} ({line['seconds']:.1f} s)"


def summary(result: dict[str, Any]) -> dict[str, Any]:
    """The result without per-scene lines: the last-line JSON of the pipeline."""
    return {k: v for k, v in result.items() if k != "scenes"}


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


def predict_scene(task: ChangeTask, scene: PairScene, *, overlap: int, window_batch: int = 32,
                  blend: str = "cosine", precision: str = "32-true") -> torch.Tensor:
    """Change probabilities ``(H, W)``, on the CPU, of a whole scene by sliding windows on the model's device.

    ``precision`` ``"bf16-mixed"`` runs the windows under bf16 autocast; logits are blended in fp32.
    """
    was_training = task.training
    task.eval()
    set_fused_attention(task.model, fused_attention_pays(task.device))
    bf16 = precision.startswith("bf16")
    try:
        pair = torch.from_numpy(scene.image.astype("float32")).to(task.device)
        with torch.autocast(task.device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = sliding_window_logits(task.predict_logits, pair, window=task.hparams.img_size,
                                           overlap=overlap, batch_size=window_batch, blend=blend)
    finally:
        task.train(was_training)
    return torch.sigmoid(logits).cpu()


def _dataset(name: str) -> type[BitemporalScenes]:
    try:
        return CHANGE_DATASETS[name]
    except KeyError:
        raise ValueError(f"dataset {name!r}; choose {', '.join(CHANGE_DATASETS)}") from None


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


def _train(backbone: str | Path | None, tune: Tune, model: str, data: BitemporalScenes, cfg: ChangeConfig,
           seed: int, out_dir: Path | None) -> tuple[ChangeTask, dict[str, Any]]:
    train_parts, val_parts = _split_train(data.scenes, cfg.val_fraction)
    pos_weight = cfg.pos_weight or _pos_weight(train_parts, data.ignore_index)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        task = ChangeTask(
            bands=list(data.bands), model=model, backbone=None if backbone is None else str(backbone),
            preset=cfg.preset, patch_size=cfg.patch_size, img_size=cfg.crop_size, sensor=data.sensor,
            tune=tune, fusion=cfg.fusion, decoder_dim=cfg.decoder_dim, pos_weight=pos_weight,
            dice_weight=cfg.dice_weight, ignore_index=data.ignore_index, lr=cfg.lr, encoder_lr=cfg.encoder_lr,
            weight_decay=cfg.weight_decay, warmup_steps=cfg.warmup_steps, dihedral=cfg.dihedral, seed=seed)
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
                            default_root_dir=str(out_dir) if out_dir else None)
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


def evaluate_change(
    backbone: str | Path | None,
    tune: Tune = "frozen",
    *,
    test_root: str | Path,
    train_root: str | Path | None = None,
    dataset: str = "oscd",
    seed: int = 0,
    out_dir: str | Path | None = None,
    model: str = "siamese-vit",
    train_cities: Sequence[str] | None = None,
    test_cities: Sequence[str] | None = None,
    bands: Sequence[str] | None = None,
    load: str | Path | None = None,
    on_scene: Callable[[dict[str, Any]], None] | None = None,
    **hparams: Any,
) -> dict[str, Any]:
    """Train (or load) a change model and score whole test scenes by sliding windows.

    Args:
        backbone: Backbone file of the encoder's initial weights; ``None`` = random init (or no
            encoder with ``model="fc-siam-diff"``).
        tune: Encoder parts that train: ``"frozen"``, ``k`` or ``"lastK"`` (K last blocks),
            ``"mlp"``, ``"full"`` (:func:`~rsmae.models.trainable.parse_protocol`).
        test_root: Folder of the test scenes (the dataset's layout).
        train_root: Folder of the training scenes (default ``test_root``).
        dataset: ``"oscd"``, ``"levircd"`` or ``"landsat"``.
        seed: Seed of the model init, crops and augmentation.
        out_dir: Where the model, ``metrics.json``, ``pr_curve.csv``/``.png`` and ``maps/*.png`` go.
        model: ``"siamese-vit"`` or ``"fc-siam-diff"``.
        train_cities: Training scenes instead of the dataset's train split.
        test_cities: Test scenes instead of its test split (``["all"]``: every labelled scene).
        bands: Bands to use (default all of the dataset's); e.g. ``["B04", "B03", "B02"]``.
        load: A model saved by an earlier run: scored without training.
        on_scene: Called with each test scene's metrics as soon as it is scored.
        **hparams: :class:`ChangeConfig` fields (``steps``, ``crop_size``, ``overlap``...).

    Returns:
        ``f1``, ``iou``, ``precision``, ``recall``, ``accuracy`` (pooled over the test scenes at
        ``threshold``), ``threshold``, ``val_f1``, ``f1_at_0.5``, ``average_precision``,
        ``scenes`` (per-scene metrics), timings and the run's settings.
    """
    cfg = ChangeConfig.from_kwargs(**hparams)
    cfg.accelerator = accelerator_device(cfg.accelerator).type  # "auto" -> "cuda" or "cpu", as Lightning
    if cfg.precision == "auto":
        cfg.precision = default_precision(cfg.accelerator)
        _logger.info("precision auto -> %s on %s", cfg.precision, cfg.accelerator)
    cls = _dataset(dataset)
    tune = _tune(tune)
    out = Path(out_dir) if out_dir is not None else None
    threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        return _evaluate(backbone, tune, cls, cfg, seed, out, model, dataset, test_root, train_root,
                         train_cities, test_cities, bands, load, on_scene)
    finally:
        torch.set_num_threads(threads)


def _evaluate(backbone: str | Path | None, tune: Tune, cls: type[BitemporalScenes], cfg: ChangeConfig,
              seed: int, out: Path | None, model: str, dataset: str, test_root: str | Path,
              train_root: str | Path | None, train_cities: Sequence[str] | None,
              test_cities: Sequence[str] | None, bands: Sequence[str] | None, load: str | Path | None,
              on_scene: Callable[[dict[str, Any]], None] | None) -> dict[str, Any]:
    if load is not None:
        task, info = load_change_model(load)
        task.to(cfg.accelerator)
        info = {**info, "loaded": str(load)}
        cfg.match_dates = bool(info.get("match_dates", cfg.match_dates))  # as the model was trained
        bands = task.hparams.bands
    else:
        train_split = "train" if train_cities is None else "cities"
        data = _prepare(cls(train_root or test_root, train_split, cities=train_cities, bands=bands), cfg)
        task, info = _train(backbone, tune, model, data, cfg, seed, out)
        bands = data.bands
    all_cities = test_cities is not None and list(test_cities) == ["all"]
    test = _prepare(cls(test_root, "all" if all_cities else "test",
                        cities=None if all_cities else test_cities, bands=bands), cfg)
    result = _score(task, test, cfg, float(info["threshold"]), out, on_scene)
    result.update({k: v for k, v in info.items() if k != "threshold"}, dataset=dataset,
                  model=task.hparams.model, backbone=None if backbone is None else str(backbone),
                  tune=task.hparams.tune, seed=seed, bands=list(bands), window=task.hparams.img_size,
                  overlap=cfg.overlap, compute_precision=cfg.precision, device=cfg.accelerator,
                  test_scenes=[s.name for s in test.scenes])
    if out is not None:
        if load is None:
            extra = {k: info[k] for k in ("threshold", "val_f1", "train_scenes", "steps")}
            extra["match_dates"] = cfg.match_dates
            result["model_path"] = str(save_change_model(task, out / "change_model.safetensors",
                                                         extra={**extra, "dataset": dataset}))
        (out / "metrics.json").write_text(json.dumps(result, indent=2))
    return result


def _score(task: ChangeTask, test: BitemporalScenes, cfg: ChangeConfig, threshold: float,
           out: Path | None, on_scene: Callable[[dict[str, Any]], None] | None) -> dict[str, Any]:
    if not test.scenes:
        raise InputNotFoundError(f"{test.root}: no test scene to score")
    scores = ChangeScores(threshold, test.ignore_index)
    at_half = ChangeScores(0.5, test.ignore_index)
    lines = []
    start = time.perf_counter()
    for scene in track(test.scenes, "change: scoring", unit="scene", enabled=cfg.progress):
        tic = time.perf_counter()
        probs = predict_scene(task, scene, overlap=cfg.overlap, window_batch=cfg.window_batch,
                              blend=cfg.blend, precision=cfg.precision)
        mask = torch.from_numpy(scene.mask.astype("int64"))
        line = {"scene": scene.name, **scores.update(probs, mask), "seconds": time.perf_counter() - tic,
                "change_fraction": float((mask == 1).sum() / max(int((mask != test.ignore_index).sum()), 1))}
        at_half.update(probs, mask)
        if out is not None and cfg.maps:
            line["map"] = str(save_change_map(out / "maps" / f"{scene.name}.png", torch.from_numpy(
                scene.image.astype("float32")), test.bands, test.sensor, mask, probs > threshold,
                test.ignore_index))
        lines.append(line)
        _logger.info("%s: F1 %.3f IoU %.3f", scene.name, line["f1"], line["iou"])
        if on_scene is not None:
            on_scene(line)
    result = scores.compute()
    result["f1_at_0.5"] = at_half.compute()["f1"]
    result["test_seconds"] = time.perf_counter() - start
    result["scenes"] = lines
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        curve = scores.pr_curve()
        with (out / "pr_curve.csv").open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["threshold", "precision", "recall"])
            writer.writerows(zip(curve["threshold"], curve["precision"], curve["recall"], strict=True))
        result["pr_curve"] = str(save_pr_curve(out / "pr_curve.png", curve, threshold,
                                               f"{', '.join(s.name for s in test.scenes)[:60]}"))
    return result
