"""Figures of loss surfaces and flatness measures (matplotlib ``Figure`` objects on the Agg canvas).

Every function writes one PNG and returns its path: contour and 3D views of a 2D surface, 1D slices
(a curve, or the two axes of a 2D surface), a side-by-side comparison of several models with one
shared colour scale, the convergence of Hessian estimates and the noise-flatness curves. Figures
are built without ``pyplot``, so no global backend or figure registry is touched.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from rsmae.landscape.hessian import EigenResult, TraceResult
from rsmae.landscape.noise import NoiseResult
from rsmae.landscape.surface import Surface

__all__ = [
    "plot_comparison",
    "plot_contour",
    "plot_convergence",
    "plot_lines",
    "plot_noise",
    "plot_slices",
    "plot_surface_3d",
]


def _save(fig: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    return path


def _levels(vmin: float, vmax: float, n: int = 21) -> np.ndarray:
    if not vmax > vmin:
        vmax = vmin + 1e-6
    return np.linspace(vmin, vmax, n)


def _require_2d(surface: Surface) -> None:
    if surface.ys is None:
        raise ValueError("a 1D curve has no contour or 3D view; use plot_slices")


def plot_contour(surface: Surface, path: str | Path, *, title: str = "",
                 vmin: float | None = None, vmax: float | None = None) -> Path:
    """Filled contour of a 2D surface with the centre marked."""
    _require_2d(surface)
    fig = Figure(figsize=(5, 4.2))
    ax = fig.subplots()
    _contour(ax, surface, surface.values.min() if vmin is None else vmin,
             surface.values.max() if vmax is None else vmax, colorbar=True)
    ax.set_title(title or _title(surface))
    return _save(fig, path)


def _contour(ax: Any, surface: Surface, vmin: float, vmax: float, *, colorbar: bool) -> Any:
    xx, yy = np.meshgrid(surface.xs, surface.ys)
    levels = _levels(vmin, vmax)
    filled = ax.contourf(xx, yy, np.clip(surface.values, vmin, vmax), levels=levels, cmap="viridis")
    ax.contour(xx, yy, surface.values, levels=levels[::4], colors="white", linewidths=0.4, alpha=0.6)
    ax.plot([0], [0], marker="+", color="red", markersize=10)
    ax.set_xlabel("d1")
    ax.set_ylabel("d2")
    ax.set_aspect("equal")
    if colorbar:
        ax.figure.colorbar(filled, ax=ax, label="loss")
    return filled


def plot_surface_3d(surface: Surface, path: str | Path, *, title: str = "") -> Path:
    """3D view of a 2D surface."""
    _require_2d(surface)
    fig = Figure(figsize=(6, 4.8))
    ax = fig.add_subplot(projection="3d")
    xx, yy = np.meshgrid(surface.xs, surface.ys)
    ax.plot_surface(xx, yy, surface.values, cmap="viridis", linewidth=0, antialiased=True)
    ax.set_xlabel("d1")
    ax.set_ylabel("d2")
    ax.set_zlabel("loss")
    ax.set_title(title or _title(surface))
    return _save(fig, path)


def plot_slices(curves: Mapping[str, Surface], path: str | Path, *, title: str = "") -> Path:
    """1D slices through the centre: a 1D curve as is; a 2D surface's ``b = 0`` and ``a = 0`` lines.

    Args:
        curves: Label (e.g. the model) -> surface; all drawn on one axis.
        path: Output PNG.
        title: Figure title.
    """
    fig = Figure(figsize=(5.5, 4))
    ax = fig.subplots()
    for label, s in curves.items():
        if s.ys is None:
            ax.plot(s.xs, s.values, label=label)
            continue
        j, i = int(np.abs(s.ys).argmin()), int(np.abs(s.xs).argmin())
        line = ax.plot(s.xs, s.values[j], label=f"{label} (d1)")[0]
        ax.plot(s.ys, s.values[:, i], linestyle="--", color=line.get_color(), label=f"{label} (d2)")
    ax.set_xlabel("step along the direction")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_lines(curves: Mapping[str, Surface], path: str | Path, *, title: str = "") -> Path:
    """1D curves side by side, one panel each (own loss scale), with the ends ``t = 0, 1`` marked.

    Args:
        curves: Label (e.g. the objective) -> 1D surface along a line between two models.
        path: Output PNG.
        title: Figure title.
    """
    n = len(curves)
    fig = Figure(figsize=(3.6 * n + 0.5, 3.4), layout="constrained")
    axes = fig.subplots(1, n, squeeze=False)[0]
    for ax, (label, s) in zip(axes, curves.items(), strict=True):
        ax.plot(s.xs, s.values, marker=".")
        for t in (0.0, 1.0):
            ax.axvline(t, color="grey", linewidth=0.8, linestyle=":")
        ax.set_title(label)
        ax.set_xlabel("t")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("loss")
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def plot_comparison(surfaces: Mapping[str, Surface], path: str | Path, *, title: str = "",
                    relative: bool = False) -> Path:
    """Contours of several models side by side, one colour scale shared by all panels.

    Args:
        surfaces: Label -> 2D surface (same grid for a fair comparison).
        path: Output PNG.
        title: Figure title.
        relative: Plot ``loss - centre loss`` (compares shapes when the models' losses differ).
    """
    items = {k: _shift(s) if relative else s for k, s in surfaces.items()}
    for s in items.values():
        _require_2d(s)
    vmin = min(float(s.values.min()) for s in items.values())
    vmax = max(float(s.values.max()) for s in items.values())
    n = len(items)
    fig = Figure(figsize=(4.2 * n + 1.2, 4), layout="constrained")
    axes = fig.subplots(1, n, squeeze=False)
    filled = None
    for ax, (label, s) in zip(axes[0], items.items(), strict=True):
        filled = _contour(ax, s, vmin, vmax, colorbar=False)
        ax.set_title(f"{label}\ncentre {s.centre:.4g}" if not relative else label)
    fig.colorbar(filled, ax=axes[0].tolist(), label="loss - centre" if relative else "loss", shrink=0.9)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def _shift(s: Surface) -> Surface:
    return Surface(s.values - s.centre, s.xs, s.ys, s.config)


def plot_convergence(eigen: Mapping[str, EigenResult], trace: Mapping[str, TraceResult],
                     path: str | Path, *, title: str = "") -> Path:
    """Power-iteration estimates of the top eigenvalue(s) and the running Hutchinson trace."""
    fig = Figure(figsize=(10, 3.8))
    a, b = fig.subplots(1, 2)
    for label, e in eigen.items():
        for i, hist in enumerate(e.history):
            a.plot(np.arange(1, len(hist) + 1), hist, label=f"{label} l{i + 1}")
    for label, t in trace.items():
        b.plot(np.arange(1, len(t.history) + 1), t.history, label=label)
    a.set_xlabel("power iteration")
    a.set_ylabel("eigenvalue estimate")
    b.set_xlabel("Rademacher vectors")
    b.set_ylabel("trace estimate (running mean)")
    for ax in (a, b):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def plot_noise(results: Mapping[str, NoiseResult], path: str | Path, *, title: str = "") -> Path:
    """Mean loss increase against sigma with +- one standard deviation over draws."""
    fig = Figure(figsize=(5.5, 4))
    ax = fig.subplots()
    for label, r in results.items():
        sig = np.asarray(r.sigmas)
        text = f"{label} ({r.increases.shape[1]} draws)"
        ax.errorbar(sig, r.mean, yerr=r.std, marker="o", capsize=3, label=text)
    ax.set_xlabel("sigma (relative to each filter's norm)")
    ax.set_ylabel("loss increase")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def _title(surface: Surface) -> str:
    cfg = surface.config
    parts: Sequence[Any] = [cfg.get("model", ""), (cfg.get("objective") or {}).get("objective", "")]
    return " / ".join(str(p) for p in parts if p)
