"""Flatness table (Markdown + CSV) and a generated summary of which model is flatter, and by how much.

One row per model x objective: loss at the centre, top Hessian eigenvalue(s), Hessian trace
(Hutchinson, +- standard error), loss increase under filter-normalised Gaussian noise at each sigma
(mean +- std over draws), and two sharpness measures of the 2D surfaces, each as mean +- std over
the direction seeds:

- mean rise: the mean of ``L(grid point) - L(centre)`` over the grid;
- basin radius: the distance from the centre (in units of the filter-normalised directions) to the
  nearest grid point whose loss exceeds the centre's by more than ``threshold``; when no point
  does, the grid's inscribed radius, marked ``>=``.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rsmae.landscape.hessian import EigenResult, TraceResult
from rsmae.landscape.noise import NoiseResult
from rsmae.landscape.surface import Surface

__all__ = ["Measures", "line_rows", "sharpness", "summarise", "table_rows", "write_tables"]


def sharpness(surface: Surface, threshold: float) -> dict[str, Any]:
    """Mean rise, largest rise and basin radius of a surface (1D or 2D).

    Args:
        surface: The surface.
        threshold: Loss rise above the centre that ends the basin.

    Returns:
        ``{"mean_rise", "max_rise", "basin_radius", "basin_open"}``; ``basin_open`` is true when no
        grid point rose by more than ``threshold`` (the radius is then a lower bound).
    """
    rise = surface.values - surface.centre
    if surface.ys is None:
        dist = np.abs(surface.xs)
        inscribed = float(min(abs(surface.xs.min()), abs(surface.xs.max())))
    else:
        xx, yy = np.meshgrid(surface.xs, surface.ys)
        dist = np.sqrt(xx**2 + yy**2)
        inscribed = float(min(abs(v) for v in (*surface.xs[[0, -1]], *surface.ys[[0, -1]])))
    above = rise > threshold
    radius = float(dist[above].min()) if above.any() else inscribed
    return {"mean_rise": float(rise.mean()), "max_rise": float(rise.max()),
            "basin_radius": min(radius, inscribed), "basin_open": not above.any() or radius >= inscribed}


@dataclass
class Measures:
    """Everything measured for one model and one objective.

    Attributes:
        model: Model label.
        objective: Objective name.
        loss: Loss at the centre.
        surfaces: 2D (or 1D) surfaces, one per direction seed.
        eigen: Top Hessian eigenvalues.
        trace: Hessian trace.
        noise: Gaussian-noise flatness.
    """

    model: str
    objective: str
    loss: float
    surfaces: list[Surface] = field(default_factory=list)
    eigen: EigenResult | None = None
    trace: TraceResult | None = None
    noise: NoiseResult | None = None

    def surface_stats(self, threshold: float) -> dict[str, tuple[float, float]]:
        """``name -> (mean, std over direction seeds)`` of the sharpness measures."""
        per_seed = [sharpness(s, threshold) for s in self.surfaces]
        out = {}
        for key in ("mean_rise", "basin_radius"):
            vals = np.array([p[key] for p in per_seed], dtype=np.float64)
            if not len(vals):
                out[key] = (math.nan, math.nan)
                continue
            out[key] = (float(vals.mean()), float(vals.std(ddof=1)) if len(vals) > 1 else 0.0)
        out["basin_open"] = (float(any(p["basin_open"] for p in per_seed)), 0.0)
        return out


def _pm(mean: float, std: float, digits: int = 3) -> str:
    if math.isnan(mean):
        return "-"
    return f"{mean:.{digits}g} ± {std:.2g}"


def table_rows(measures: Sequence[Measures], threshold: float) -> list[dict[str, Any]]:
    """Flat rows (numbers) for the CSV, one per model x objective."""
    sigmas = sorted({s for m in measures if m.noise for s in m.noise.sigmas})
    rows = []
    for m in measures:
        stats = m.surface_stats(threshold)
        row: dict[str, Any] = {
            "model": m.model, "objective": m.objective, "loss": m.loss,
            "top_eigenvalue": m.eigen.values[0] if m.eigen else math.nan,
            "eigenvalues": " ".join(f"{v:.6g}" for v in m.eigen.values) if m.eigen else "",
            "trace": m.trace.trace if m.trace else math.nan,
            "trace_se": m.trace.std_err if m.trace else math.nan,
        }
        for s in sigmas:
            idx = m.noise.sigmas.index(s) if m.noise and s in m.noise.sigmas else None
            row[f"noise_{s:g}_mean"] = float(m.noise.mean[idx]) if idx is not None else math.nan
            row[f"noise_{s:g}_std"] = float(m.noise.std[idx]) if idx is not None else math.nan
        row["surface_seeds"] = len(m.surfaces)
        row["mean_rise"], row["mean_rise_std"] = stats["mean_rise"]
        row["basin_radius"], row["basin_radius_std"] = stats["basin_radius"]
        row["basin_open"] = bool(stats["basin_open"][0])
        rows.append(row)
    return rows


def _markdown(rows: list[dict[str, Any]], threshold: float) -> str:
    sigmas = [k[len("noise_"):-len("_mean")] for k in (rows[0] if rows else {}) if k.endswith("_mean")
              and k.startswith("noise_")]
    head = ["model", "objective", "loss", "top eigenvalue", "trace ± se",
            *[f"Δloss σ={s}" for s in sigmas], "mean rise", f"basin radius (Δ>{threshold:g})"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        radius = _pm(r["basin_radius"], r["basin_radius_std"])
        cells = [r["model"], r["objective"], f"{r['loss']:.4g}",
                 "-" if math.isnan(r["top_eigenvalue"]) else f"{r['top_eigenvalue']:.4g}",
                 _pm(r["trace"], r["trace_se"], 4),
                 *[_pm(r[f"noise_{s}_mean"], r[f"noise_{s}_std"]) for s in sigmas],
                 _pm(r["mean_rise"], r["mean_rise_std"]), (">= " if r["basin_open"] else "") + radius]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def _compare(a: dict[str, Any], b: dict[str, Any], objective: str) -> str:
    """One sentence: ``a`` (the flatter by mean rise) against ``b``."""
    ra, sa, rb, sb = a["mean_rise"], a["mean_rise_std"], b["mean_rise"], b["mean_rise_std"]
    seeds = min(a["surface_seeds"], b["surface_seeds"])
    ratio = f"{rb / ra:.2f}x lower" if ra > 0 and rb > 0 else f"{rb - ra:.3g} lower"
    numbers = f"mean rise over the grid {ra:.3g} ± {sa:.2g} vs {rb:.3g} ± {sb:.2g}"
    if rb - ra <= sa + sb:  # the gap within the spread: no ranking
        text = (f"On the {objective} loss, {a['model']} and {b['model']} are indistinguishable in flatness: "
                f"{numbers}, a gap within the spread over {seeds} direction seeds")
    else:
        text = f"On the {objective} loss, {a['model']} is flatter than {b['model']}: {numbers} ({ratio}, " \
               f"{seeds} direction seeds)"
    ea, eb = a["top_eigenvalue"], b["top_eigenvalue"]
    if not (math.isnan(ea) or math.isnan(eb)):
        agree = "agrees" if abs(ea) < abs(eb) else "disagrees"
        text += f"; the top Hessian eigenvalue ({ea:.3g} vs {eb:.3g}) {agree}"
    noise = [k for k in a if k.startswith("noise_") and k.endswith("_mean")]
    if noise:
        k = noise[-1]
        sigma = k[len("noise_"):-len("_mean")]
        std = k.replace("_mean", "_std")
        text += (f"; under noise σ={sigma} the loss rises by {a[k]:.3g} ± {a[std]:.2g} vs "
                 f"{b[k]:.3g} ± {b[std]:.2g}")
    return text + "."


OWN_OBJECTIVES = ("pretrain",)  # each model's own training loss (RC-MAE's adds its consistency term)


def summarise(rows: list[dict[str, Any]]) -> list[str]:
    """Sentences for every pair of models sharing an objective, the flatter (by mean rise) first.

    An objective of :data:`OWN_OBJECTIVES` is a different function per method, so its models are not
    compared; one sentence says so.
    """
    out = []
    for objective in dict.fromkeys(r["objective"] for r in rows):
        if objective in OWN_OBJECTIVES:
            names = ", ".join(r["model"] for r in rows if r["objective"] == objective)
            out.append(f"The {objective} loss is each model's own objective ({names}): shown beside each "
                       "model, not compared across them (the recon loss is the like-for-like one).")
            continue
        group = [r for r in rows if r["objective"] == objective and not math.isnan(r["mean_rise"])]
        group.sort(key=lambda r: r["mean_rise"])
        out.extend(_compare(a, b, objective) for i, a in enumerate(group) for b in group[i + 1 :])
    return out


def line_rows(lines: dict[str, dict[str, list[float]]]) -> list[str]:
    """Markdown rows of straight lines: loss at both ends, the largest loss between them, the barrier.

    Args:
        lines: ``"a -> b / objective" -> {"t": [...], "loss": [...]}``.
    """
    out = ["| line | loss at t=0 | loss at t=1 | max for t in [0, 1] | barrier |", "|---|---|---|---|---|"]
    for name, line in lines.items():
        t, loss = np.asarray(line["t"]), np.asarray(line["loss"])
        inside = loss[(t >= -1e-9) & (t <= 1 + 1e-9)]
        ends = [float(loss[np.abs(t - v).argmin()]) for v in (0.0, 1.0)]
        peak = float(inside.max())
        out.append(f"| {name} | {ends[0]:.4g} | {ends[1]:.4g} | {peak:.4g} | {peak - max(ends):.3g} |")
    return out


def write_tables(measures: Sequence[Measures], out_dir: str | Path, *, threshold: float = 0.1,
                 header: str = "", lines: dict[str, dict[str, list[float]]] | None = None
                 ) -> tuple[Path, Path, list[str]]:
    """Write ``flatness.md`` and ``flatness.csv`` to ``out_dir``.

    Args:
        measures: One entry per model x objective.
        out_dir: Output folder.
        threshold: Loss rise that ends the basin.
        header: Markdown placed above the table (setup, data, command).
        lines: Straight lines between models (see :func:`line_rows`), tabulated after the summary.

    Returns:
        The Markdown path, the CSV path and the summary sentences.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = table_rows(measures, threshold)
    summary = summarise(rows)
    md = ["# Loss-landscape flatness", "", header.strip(), "", _markdown(rows, threshold), "",
          "## Summary", "", *(f"- {s}" for s in summary or ["Fewer than two models per objective: "
                                                              "nothing to compare."])]
    if lines:
        md += ["", "## Straight lines between models", "",
               "The loss along theta_a + t (theta_b - theta_a) with the objective (masks, probe head) of "
               "model a; barrier = the largest loss between the ends minus the larger end.", "",
               *line_rows(lines)]
    md_path = out_dir / "flatness.md"
    md_path.write_text("\n".join(md).replace("\n\n\n", "\n\n") + "\n")
    buf = io.StringIO()
    if rows:
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    csv_path = out_dir / "flatness.csv"
    csv_path.write_text(buf.getvalue())
    return md_path, csv_path, summary
