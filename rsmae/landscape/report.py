"""Flatness table (Markdown + CSV) and a generated summary of which model is flatter, and by how much.

One row per model x objective, aggregated over the model's training seeds (config entries sharing a
name, :class:`~rsmae.landscape.config.ModelSpec`): loss at the centre, top Hessian eigenvalue(s),
Hessian trace (Hutchinson; +- its standard error for one training seed, +- the std over training
seeds for several), loss increase under filter-normalised Gaussian noise at each sigma (mean +- std
over every draw of every training seed), and two sharpness measures of the 2D surfaces, each as mean
+- std over every surface (training seeds x direction seeds, ``n`` of them):

- mean rise: the mean of ``L(grid point) - L(centre)`` over the grid;
- basin radius: the distance from the centre (in units of the filter-normalised directions) at which
  the loss first rises by ``threshold``, resolved below the grid step along rays through the
  bilinearly interpolated surface (:mod:`~rsmae.landscape.basin`); when no ray crosses, the grid's
  inscribed radius, marked ``>=``.

The summary calls one model flatter than another only when the gap in mean rise exceeds the sum of
their spreads (the std over training seeds x direction seeds), and names that spread.
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

from rsmae.landscape.basin import basin_radius
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
    basin = basin_radius(surface, threshold)
    return {"mean_rise": float(rise.mean()), "max_rise": float(rise.max()),
            "basin_radius": basin.radius, "basin_open": basin.open}


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
        seed: Training seed of the model file (``None``: the model's only file).
    """

    model: str
    objective: str
    loss: float
    surfaces: list[Surface] = field(default_factory=list)
    eigen: EigenResult | None = None
    trace: TraceResult | None = None
    noise: NoiseResult | None = None
    seed: int | None = None

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


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    vals = np.asarray([v for v in values if not math.isnan(v)], dtype=np.float64)
    if not len(vals):
        return math.nan, math.nan
    return float(vals.mean()), float(vals.std(ddof=1)) if len(vals) > 1 else 0.0


def _groups(measures: Sequence[Measures]) -> list[list[Measures]]:
    """Measures of one model (all its training seeds) and objective, in the order first seen."""
    groups: dict[tuple[str, str], list[Measures]] = {}
    for m in measures:
        groups.setdefault((m.model, m.objective), []).append(m)
    return list(groups.values())


def _row(group: list[Measures], threshold: float, sigmas: list[float]) -> dict[str, Any]:
    first, seeds = group[0], len(group)
    nan = math.nan
    tops = [m.eigen.values[0] if m.eigen else nan for m in group]
    traces = [m.trace.trace if m.trace else nan for m in group]
    row: dict[str, Any] = {"model": first.model, "objective": first.objective}
    row["loss"], loss_std = _mean_std([m.loss for m in group])
    row["top_eigenvalue"], top_std = _mean_std(tops)
    row["eigenvalues"] = "; ".join(" ".join(f"{v:.6g}" for v in m.eigen.values) for m in group if m.eigen)
    row["trace"], trace_std = _mean_std(traces)
    row["trace_se"] = (first.trace.std_err if first.trace else nan) if seeds == 1 else trace_std
    for s in sigmas:
        draws = [m.noise.increases[m.noise.sigmas.index(s)] for m in group if m.noise and s in m.noise.sigmas]
        pooled = np.concatenate([np.ravel(d) for d in draws]).astype(np.float64) if draws else np.zeros(0)
        row[f"noise_{s:g}_mean"], row[f"noise_{s:g}_std"] = (
            (float(np.mean(pooled)), float(np.std(pooled, ddof=1)) if len(pooled) > 1 else 0.0)
            if len(pooled) else (nan, nan))
    per_surface = [sharpness(s, threshold) for m in group for s in m.surfaces]
    row["surface_seeds"] = min(len(m.surfaces) for m in group)
    row["mean_rise"], row["mean_rise_std"] = _mean_std([p["mean_rise"] for p in per_surface])
    row["basin_radius"], row["basin_radius_std"] = _mean_std([p["basin_radius"] for p in per_surface])
    row["basin_open"] = any(p["basin_open"] for p in per_surface)
    # after the columns of single-seed studies, in their order
    row.update(training_seeds=seeds, surfaces=len(per_surface), loss_std=loss_std, top_eigenvalue_std=top_std)
    return row


def table_rows(measures: Sequence[Measures], threshold: float) -> list[dict[str, Any]]:
    """Flat rows (numbers) for the CSV, one per model x objective, aggregated over training seeds.

    ``loss``, ``top_eigenvalue`` and ``trace`` are means over the training seeds with their std
    (``trace_se`` is the Hutchinson standard error for one seed, the std over training seeds for
    several); noise columns pool every draw of every training seed; ``mean_rise`` and
    ``basin_radius`` are mean and std over ``surfaces`` = ``training_seeds`` x ``surface_seeds``.
    """
    sigmas = sorted({s for m in measures if m.noise for s in m.noise.sigmas})
    return [_row(group, threshold, sigmas) for group in _groups(measures)]


def _markdown(rows: list[dict[str, Any]], threshold: float) -> str:
    sigmas = [k[len("noise_"):-len("_mean")] for k in (rows[0] if rows else {}) if k.endswith("_mean")
              and k.startswith("noise_")]
    several = any(r["training_seeds"] > 1 for r in rows)
    head = ["model", "objective", "seeds (train × dir)", "loss", "top eigenvalue",
            "trace ± " + ("std over training seeds" if several else "se"),
            *[f"Δloss σ={s}" for s in sigmas], "mean rise", f"basin radius (Δ>{threshold:g})"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        radius = _pm(r["basin_radius"], r["basin_radius_std"])
        multi = r["training_seeds"] > 1
        top = _pm(r["top_eigenvalue"], r["top_eigenvalue_std"], 4) if multi else f"{r['top_eigenvalue']:.4g}"
        cells = [r["model"], r["objective"], f"{r['training_seeds']} × {r['surface_seeds']}",
                 _pm(r["loss"], r["loss_std"], 4) if multi else f"{r['loss']:.4g}",
                 "-" if math.isnan(r["top_eigenvalue"]) else top,
                 _pm(r["trace"], r["trace_se"], 4),
                 *[_pm(r[f"noise_{s}_mean"], r[f"noise_{s}_std"]) for s in sigmas],
                 _pm(r["mean_rise"], r["mean_rise_std"]), (">= " if r["basin_open"] else "") + radius]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def _compare(a: dict[str, Any], b: dict[str, Any], objective: str) -> str:
    """One sentence: ``a`` (the flatter by mean rise) against ``b``."""
    ra, sa, rb, sb = a["mean_rise"], a["mean_rise_std"], b["mean_rise"], b["mean_rise_std"]
    dirs = min(a["surface_seeds"], b["surface_seeds"])
    ta, tb = a.get("training_seeds", 1), b.get("training_seeds", 1)
    train = f"{ta}" if ta == tb else f"{ta} and {tb}"
    seeds = f"{dirs} direction seeds"
    if max(ta, tb) > 1:
        seeds = f"{train} training seeds × {seeds}"
    ratio = f"{rb / ra:.2f}x lower" if ra > 0 and rb > 0 else f"{rb - ra:.3g} lower"
    numbers = f"mean rise over the grid {ra:.3g} ± {sa:.2g} vs {rb:.3g} ± {sb:.2g}"
    single = [r["model"] for r in (a, b) if r.get("surfaces", r["surface_seeds"]) < 2]
    if single:  # one surface: no spread to rank against
        text = (f"On the {objective} loss, {a['model']} and {b['model']} are not ranked: {numbers}, but "
                f"{' and '.join(single)} {'has' if len(single) == 1 else 'have'} one surface (no spread)")
    elif rb - ra <= sa + sb:  # the gap within the spread: no ranking
        text = (f"On the {objective} loss, {a['model']} and {b['model']} are indistinguishable in flatness: "
                f"{numbers}, a gap within the spread over {seeds}")
    else:
        text = f"On the {objective} loss, {a['model']} is flatter than {b['model']}: {numbers} ({ratio}, " \
               f"beyond the spread over {seeds})"
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
