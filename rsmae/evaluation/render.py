"""Images of evaluation results: change-map strips and precision-recall curves (PNG).

True colour comes from :func:`~rsmae.tasks.render.true_colour`, the one percentile stretch of rsmae
(also used for the pretraining reconstructions).
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from PIL import Image
from torch import Tensor

from rsmae.files import atomic_path
from rsmae.tasks.render import true_colour

__all__ = ["ERROR_COLOURS", "PANEL_TITLES", "annotate_change_map", "change_map", "change_map_figure",
           "save_change_map", "save_pr_curve"]

# colours of the error panel: true positive, false positive, false negative, true negative, unlabelled
ERROR_COLOURS = {"tp": (0, 200, 0), "fp": (230, 0, 0), "fn": (30, 90, 255), "tn": (0, 0, 0),
                 "ignored": (110, 110, 110)}
PANEL_TITLES = ("date 1", "date 2", "reference change", "predicted change", "errors")
# the key below an annotated map (TN is the black of the error panel)
ERROR_KEY = {"tp": "TP: change found", "fp": "FP: false alarm", "fn": "FN: change missed",
             "tn": "TN: no change, none predicted", "ignored": "unlabelled (grey in every panel)"}

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


def change_map_figure(strip: np.ndarray | str | Path, caption: str, gap: int = 4, dpi: int = 100) -> Figure:
    """A :func:`change_map` strip as a figure: a title per panel, a key of the error colours, a caption.

    Each panel is drawn at one figure pixel per map pixel (at ``dpi``; narrow panels at a whole multiple);
    the fonts grow with the panel width.

    Args:
        strip: The ``(H, 5W + 4 gap, 3)`` uint8 strip, or a PNG of it.
        caption: Text below the key (what the map shows and why this cell); wrapped to the figure width.
        gap: White pixels between the strip's panels.
        dpi: Resolution the figure is meant to be saved at.

    Raises:
        ValueError: If ``strip`` is not five panels of equal width separated by ``gap`` white columns.
    """
    if isinstance(strip, str | Path):
        with Image.open(strip) as png:
            strip = np.asarray(png.convert("RGB"))
    strip = np.asarray(strip)
    h, width = strip.shape[:2] if strip.ndim == 3 else (0, 0)
    w, rest = divmod(width - 4 * gap, 5)
    spacers = [strip[:, k * (w + gap) - gap:k * (w + gap)] for k in range(1, 5)] if w > 0 else []
    if strip.ndim != 3 or rest or w < 1 or any((s != 255).any() for s in spacers):
        raise ValueError(f"a change-map strip is 5 panels of width W and 4 white gaps of {gap} px (5W + "
                         f"{4 * gap} px wide); got shape {strip.shape}: pass the raw strip of change_map() "
                         "or the gap it was made with")
    zoom = -(-200 // w)  # panels narrower than 200 px are enlarged (nearest neighbour) to fit their titles
    pw, ph = zoom * w, zoom * h  # a panel's size in the figure
    font = max(10.0, pw / 40)  # points; px = points * dpi / 72
    px = font * dpi / 72
    margin = round(max(8.0, px))
    fig_w = 5 * pw + 6 * margin
    lines = textwrap.wrap(caption, width=max(20, int(fig_w / (0.55 * px)))) or [""]
    widths = [(0.6 * len(label) + 3.5) * px for label in ERROR_KEY.values()]  # patch, gaps and text
    room = fig_w - 2 * margin
    ncol = len(widths) if sum(widths) < room else max(1, int(room // max(widths)))
    rows = -(-len(widths) // ncol)
    title_h, key_h, caption_h = 2.2 * px, (1.5 + 1.5 * rows) * px, (len(lines) * 1.4 + 1) * px
    fig_h = title_h + ph + key_h + caption_h
    fig = Figure(figsize=(fig_w / dpi, fig_h / dpi), dpi=dpi)
    bottom = (key_h + caption_h) / fig_h
    for k, title in enumerate(PANEL_TITLES):
        ax = fig.add_axes(((margin + k * (pw + margin)) / fig_w, bottom, pw / fig_w, ph / fig_h))
        ax.imshow(strip[:, k * (w + gap):k * (w + gap) + w], interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(title, fontsize=font)
    handles = [Patch(facecolor=np.array(ERROR_COLOURS[k]) / 255, edgecolor="0.5", label=label)
               for k, label in ERROR_KEY.items()]
    fig.legend(handles=handles, loc="center", ncol=ncol, frameon=False, fontsize=font,
               bbox_to_anchor=(0.5, (caption_h + key_h / 2) / fig_h))
    fig.text(margin / fig_w, (caption_h - 0.5 * px) / fig_h, "\n".join(lines), fontsize=font, va="top",
             ha="left", linespacing=1.4)
    return fig


def annotate_change_map(strip: np.ndarray | str | Path, out_path: str | Path, caption: str, gap: int = 4,
                        dpi: int = 100) -> Path:
    """Write :func:`change_map_figure` of ``strip`` as a PNG at ``out_path`` (may be the strip's own file)."""
    fig = change_map_figure(strip, caption, gap=gap, dpi=dpi)
    with atomic_path(out_path) as tmp, tmp.open("wb") as fh:  # the strip it replaces is never half-written
        fig.savefig(fh, dpi=dpi, format="png")
    return Path(out_path)


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
