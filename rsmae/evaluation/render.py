"""Images of evaluation results: change-map strips and precision-recall curves (PNG).

True colour comes from :func:`~rsmae.tasks.render.true_colour`, the one percentile stretch of rsmae
(also used for the pretraining reconstructions).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from PIL import Image
from torch import Tensor

from rsmae.tasks.render import true_colour

__all__ = ["ERROR_COLOURS", "change_map", "save_change_map", "save_pr_curve"]

# colours of the error panel: true positive, false positive, false negative, true negative, unlabelled
ERROR_COLOURS = {"tp": (0, 200, 0), "fp": (230, 0, 0), "fn": (30, 90, 255), "tn": (0, 0, 0),
                 "ignored": (110, 110, 110)}



def change_map(image: Tensor, bands: Sequence[str], sensor: str | None, truth: Tensor, pred: Tensor,
               ignore_index: int = 255, gap: int = 4) -> np.ndarray:
    """One RGB strip: date 1, date 2 (true colour), truth, prediction, errors (TP/FP/FN in colour).

    Args:
        image: ``(2, C, H, W)`` the pair in any units (percentile-stretched per date).
        bands: Band names of the channels (red, green, blue found through the band registry).
        sensor: Their sensor.
        truth: ``(H, W)`` labels (1 change, 0 no change, ``ignore_index`` unlabelled: grey).
        pred: ``(H, W)`` boolean prediction.
        ignore_index: Label of unlabelled pixels.
        gap: White pixels between panels.

    Returns:
        ``(H, 5W + 4 gap, 3)`` uint8.
    """
    rgb = true_colour(image.float(), list(bands), sensor).permute(0, 2, 3, 1).numpy()
    dates = [(v * 255).round().astype(np.uint8) for v in rgb]
    truth, pred = truth.cpu().numpy(), pred.cpu().numpy().astype(bool)
    ignored, change = truth == ignore_index, truth == 1
    panels = [*dates]
    for shown in (change, pred):
        grey = np.where(shown, 255, 0).astype(np.uint8)
        panel = np.repeat(grey[..., None], 3, axis=2)
        panel[ignored] = ERROR_COLOURS["ignored"]
        panels.append(panel)
    errors = np.zeros((*truth.shape, 3), dtype=np.uint8)
    cases = {"tp": change & pred, "fp": ~change & pred, "fn": change & ~pred, "ignored": ignored}
    for name, where in cases.items():
        errors[where] = ERROR_COLOURS[name]
    panels.append(errors)
    spacer = np.full((truth.shape[0], gap, 3), 255, dtype=np.uint8)
    strip = [p for panel in panels for p in (panel, spacer)][:-1]
    return np.concatenate(strip, axis=1)


def save_change_map(path: str | Path, *args: Any, **kwargs: Any) -> Path:
    """Write :func:`change_map` as a PNG; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(change_map(*args, **kwargs)).save(path)
    return path


def save_pr_curve(path: str | Path, curve: dict[str, list[float]], threshold: float, title: str = "") -> Path:
    """Plot a precision-recall curve (:meth:`ChangeScores.pr_curve`) with the chosen threshold marked."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = Figure(figsize=(4.5, 4), dpi=120)
    ax = fig.add_subplot()
    ax.plot(curve["recall"], curve["precision"], lw=1.5)
    i = min(range(len(curve["threshold"])), key=lambda k: abs(curve["threshold"][k] - threshold))
    ax.plot([curve["recall"][i]], [curve["precision"][i]], "o", color="C3",
            label=f"threshold {threshold:.3f} (validation)")
    ax.set(xlabel="recall (change)", ylabel="precision (change)", xlim=(0, 1), ylim=(0, 1), title=title)
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    return path
