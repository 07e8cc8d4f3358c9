"""Read a finished pretraining run back: metrics curves, probe accuracies and output files."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

__all__ = ["find_latest_run", "read_metrics", "summarise_run"]


def find_latest_run(root: Path) -> Path | None:
    """The newest folder below ``root`` holding a CSV logger's ``metrics.csv``."""
    found = sorted(Path(root).rglob("metrics.csv"), key=lambda p: p.stat().st_mtime)
    return found[-1].parent if found else None


def read_metrics(run: Path) -> dict[str, list[tuple[int, float]]]:
    """``metric -> [(step, value)]`` from the run's ``metrics.csv``."""
    curves: dict[str, list[tuple[int, float]]] = {}
    with open(run / "metrics.csv", newline="") as f:
        for row in csv.DictReader(f):
            step = int(float(row.get("step") or 0))
            for key, value in row.items():
                if key in ("step", "epoch") or value in ("", None):
                    continue
                curves.setdefault(key, []).append((step, float(value)))
    return curves


def _curve(points: list[tuple[int, float]], n: int = 6) -> str:
    if not points:
        return "-"
    picks = sorted({round(i * (len(points) - 1) / max(n - 1, 1)) for i in range(n)})
    return ", ".join(f"{points[i][0]}: {points[i][1]:.4f}" for i in picks)


def summarise_run(run: Path) -> str:
    """A few lines: losses and probe accuracy vs step, and where the outputs are."""
    curves = read_metrics(run)
    lines = [f"run: {run}"]
    for key in ("train/loss_step", "train/loss", "val/loss", "val/loss_epoch"):
        if key in curves:
            lines.append(f"  {key:<22} (step: value) {_curve(curves[key])}")
    probe = run / "probe.json"
    if probe.is_file():
        history = json.loads(probe.read_text())
        first = history[0] if history else {}
        sizes = f"{first.get('n_train', '?')} train / {first.get('n_test', '?')} test"
        lines.append(f"  EuroSAT probe (frozen encoder, {sizes} images):")
        for h in history:
            knn, lin = h.get("probe/knn_acc", math.nan), h.get("probe/linear_acc", math.nan)
            lines.append(f"    step {h['step']:>6}: kNN {knn:.3f}  linear {lin:.3f}")
    for pattern in ("backbone.safetensors", "reconstructions/*.png"):
        files = sorted(run.glob(pattern))
        if files:
            lines.append(f"  {pattern}: {files[-1]}")
    return "\n".join(lines)
