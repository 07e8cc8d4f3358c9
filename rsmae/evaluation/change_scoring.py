"""Scoring of change models on whole scenes: sliding-window prediction, pooled scores, outputs."""

from __future__ import annotations

import csv
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from rsmae.datasets import BitemporalScenes, PairScene
from rsmae.errors import InputNotFoundError
from rsmae.evaluation.change_config import ChangeConfig
from rsmae.evaluation.change_metrics import ChangeScores
from rsmae.evaluation.progress import track
from rsmae.evaluation.render import save_change_map, save_pr_curve
from rsmae.evaluation.sliding import sliding_window_logits
from rsmae.models import fused_attention_pays, set_fused_attention
from rsmae.tasks.change import ChangeTask

__all__ = ["format_scene", "predict_scene", "score_scenes", "summary", "write_pr_curve"]

_logger = logging.getLogger("rsmae.evaluation.change")  # one log of the change protocol


def format_scene(line: dict[str, Any]) -> str:
    """One printable line of a test scene's scores."""
    scores = " ".join(f"{k} {line[k]:.4f}" for k in ("f1", "iou", "precision", "recall", "accuracy"))
    return f"{line['scene']}: {scores} change {line['change_fraction']:.2%} ({line['seconds']:.1f} s)"


def summary(result: dict[str, Any]) -> dict[str, Any]:
    """The result without per-scene lines: the last-line JSON of the pipeline."""
    return {k: v for k, v in result.items() if k != "scenes"}


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


def score_scenes(task: ChangeTask, test: BitemporalScenes, cfg: ChangeConfig, threshold: float, *,
                 out: Path | None = None, on_scene: Callable[[dict[str, Any]], None] | None = None
                 ) -> dict[str, Any]:
    """Score every test scene whole at ``threshold`` (and 0.5); write maps and the PR curve to ``out``.

    Raises:
        InputNotFoundError: naming the folder when it holds no test scene.
    """
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
        result["pr_curve"] = str(write_pr_curve(out, scores.pr_curve(), threshold,
                                                f"{', '.join(s.name for s in test.scenes)[:60]}"))
    return result


def write_pr_curve(out: Path, curve: dict[str, list[float]], threshold: float, title: str) -> Path:
    """``pr_curve.csv`` (threshold, precision, recall) and ``pr_curve.png`` in ``out``; the PNG's path."""
    with (out / "pr_curve.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["threshold", "precision", "recall"])
        writer.writerows(zip(curve["threshold"], curve["precision"], curve["recall"], strict=True))
    return save_pr_curve(out / "pr_curve.png", curve, threshold, title)
