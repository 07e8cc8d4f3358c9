"""Change-detection cells of ``any_sensor.py``: F1 from TP / FP / FN counts and cached test-tile counts.

A cell is one backbone, one seed and one change dataset under the frozen protocol of
``configs/bench/cd-cpu-small.yaml`` (``rsmae.evaluation.change.evaluate_change``); its test scenes are
rescored into ``TILE``-px tiles so the bootstrap of ``any_sensor.change_rows`` can resample tiles.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from rsmae.evaluation.change import ChangeConfig, evaluate_change, predict_scene
from rsmae.evaluation.change_config import change_dataset
from rsmae.models.registry import sha256_file
from rsmae.tasks.change import load_change_model

TILE = 64  # test tiles of the change bootstrap: the evaluation window


def f1(counts: np.ndarray) -> np.ndarray:
    """F1 of the change class from ``(..., 3)`` TP / FP / FN counts (0 where nothing is called or true)."""
    tp, fp, fn = counts[..., 0], counts[..., 1], counts[..., 2]
    den = 2 * tp + fp + fn
    return np.where(den > 0, 2 * tp / np.maximum(den, 1), 0.0)


def tile_counts(changed: np.ndarray, mask: np.ndarray, tile: int, ignore_index: int) -> np.ndarray:
    """TP / FP / FN of the labelled pixels of each ``tile``-px tile of a scene, ``(tiles, 3)``."""
    out = []
    for r in range(0, mask.shape[0], tile):
        for c in range(0, mask.shape[1], tile):
            m, p = mask[r:r + tile, c:c + tile], changed[r:r + tile, c:c + tile]
            valid = m != ignore_index
            truth, called = (m == 1) & valid, p & valid
            out.append([int((truth & called).sum()), int((~truth & called).sum()),
                        int((truth & ~called).sum())])
    return np.array(out, dtype=np.int64)


def _key(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:20]


def change_counts(path: Path, seed: int, settings: dict, root: Path, cache: Path, *,
                  dataset: str = "landsat") -> np.ndarray:
    """Tile TP / FP / FN ``(tiles, 3)`` of one frozen change cell of ``path`` on ``dataset`` (cached).

    A cell trained earlier (its ``metrics.json`` and model in the cell folder) is rescored only. The
    key holds the data's ``root``, not ``dataset``, so the Landsat cells keep their earlier keys.
    """
    key = _key(sha256_file(path), seed, settings, TILE, str(root))
    hit, out = cache / f"cd_{key}.json", cache / f"cd_{key}"
    if hit.is_file():
        return np.array(json.loads(hit.read_text())["tiles"])
    if (out / "metrics.json").is_file() and (out / "change_model.safetensors").is_file():
        result = json.loads((out / "metrics.json").read_text())
    else:
        result = evaluate_change(path, "frozen", test_root=root, dataset=dataset, seed=seed, out_dir=out,
                                 maps=False, **settings)
    task, extra = load_change_model(out / "change_model.safetensors")
    cfg = ChangeConfig.from_kwargs(**settings)
    test = change_dataset(dataset)(root, "test", bands=result["bands"])
    counts = []
    for scene in test.scenes:
        scene = scene.match_dates() if extra.get("match_dates") else scene
        probs = predict_scene(task, scene, overlap=cfg.overlap, window_batch=cfg.window_batch,
                              blend=cfg.blend, precision=result["compute_precision"])
        counts.append(tile_counts(probs.numpy() > result["threshold"], scene.mask, TILE, test.ignore_index))
    tiles = np.concatenate(counts)
    pooled = float(f1(tiles.sum(axis=0)))
    if abs(pooled - result["f1"]) > 2e-3:
        raise RuntimeError(f"{path} seed {seed}: tile counts give F1 {pooled:.4f}, the evaluation "
                           f"{result['f1']:.4f}; the rescoring does not match evaluate_change")
    hit.write_text(json.dumps({"tiles": tiles.tolist(), "f1": result["f1"], "threshold": result["threshold"],
                               "val_f1": result["val_f1"], "seed": seed, "backbone": str(path)}))
    return tiles
