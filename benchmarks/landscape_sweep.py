"""Pretraining sweep of the loss-landscape study: batch size and optimizer vs flatness, same sample budget.

The entry point of :mod:`rsmae.experiments.sweep` and its tables. Pretrains one MAE per entry of
``runs`` (``pipelines/pretrain.py`` with the benchmark recipe, batch sizes above ``micro_batch`` by
gradient accumulation, ``samples / batch`` optimizer steps each), then measures every model's landscape
with :func:`rsmae.landscape.study.run_study` (Hessian top eigenvalue and trace, loss rise under filter-
normalised Gaussian weight noise, 2D surfaces) and writes ``landscape_sweep.md`` / ``.csv`` and a plot
to ``results``::

    python benchmarks/landscape_sweep.py --config configs/landscape/sweep-cpu-small.yaml

Finished pretrainings (:func:`rsmae.experiments.runs.resume_run`: ``run.json`` matching the run's
settings, the bytes of its config file and the store's committed contents, not their paths) and
landscape measures (the study's cache) are reused, so a killed sweep resumes; an unreadable
``run.json`` counts as not done.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from rsmae.errors import RsmaeError
from rsmae.evaluation.speed import cpu_name
from rsmae.experiments.config import ROOT, log_to_stdout
from rsmae.experiments.sweep import plan, pretrain, study
from rsmae.landscape.study import StudyResult


def _rows(runs: list[dict[str, Any]], records: list[dict[str, Any]], result: StudyResult) -> list[dict]:
    rows = []
    for run, record in zip(runs, records, strict=True):
        for m in (m for m in result.measures if m.model == run["name"]):
            row = {"run": run["name"], "optimizer": run["optimizer"], "batch": run["batch"],
                   "steps": run["steps"], "lr": run["base_lr"] * run["batch"] / 256,
                   "final_loss": record.get("final_loss"), "minutes": record["seconds"] / 60,
                   "objective": m.objective, "loss": m.loss,
                   "top_eigenvalue": m.eigen.values[0] if m.eigen else math.nan,
                   "trace": m.trace.trace if m.trace else math.nan,
                   "trace_se": m.trace.std_err if m.trace else math.nan}
            for i, s in enumerate(m.noise.sigmas if m.noise else []):
                row[f"noise_{s:g}"], row[f"noise_{s:g}_std"] = float(m.noise.mean[i]), float(m.noise.std[i])
            row["mean_rise"], row["mean_rise_std"] = m.surface_stats(result_threshold(result))["mean_rise"]
            rows.append(row)
    return rows


def result_threshold(result: StudyResult) -> float:
    """The study's basin threshold (from its written config)."""
    return float(yaml.safe_load((result.out / "config.yaml").read_text()).get("threshold", 0.1))


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def write(cfg: dict[str, Any], rows: list[dict], result: StudyResult, folder: Path, seconds: float,
          config_path: str) -> list[Path]:
    """Markdown + CSV tables, a plot, and the study's own table and comparison figures."""
    folder.mkdir(parents=True, exist_ok=True)
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with (folder / "landscape_sweep.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=keys)
        writer.writeheader()
        writer.writerows({k: _fmt(v) for k, v in r.items()} for r in rows)
    noise = [k for k in keys if k.startswith("noise_") and not k.endswith("_std")]
    md = ["# Loss landscape vs pretraining batch size and optimizer", "",
          f"- machine: {cpu_name()}, {os.cpu_count()} cores; this run {seconds / 60:.1f} min (finished "
          "pretrainings and landscape measures are reused; each pretraining's minutes are in the table, "
          f"threads: {cfg.get('threads') or 'default'}); command `python "
          f"benchmarks/landscape_sweep.py --config {config_path}`",
          f"- every run: MAE, recipe `{cfg['pretrain_config']}`, {cfg['samples']} training samples on "
          f"`{cfg['store']}` (no evaluation image), lr = base_lr x batch / 256, warmup "
          f"{cfg['warmup_fraction']:.0%} of the steps, cosine; batches above {cfg['micro_batch']} "
          "by accumulation",
          "- measures at each run's final weights (study table and figures in `study/`): top Hessian "
          "eigenvalue, Hutchinson trace ± its standard error, mean loss rise under filter-normalised "
          "Gaussian weight noise (mean over draws), mean rise over the 2D surface (mean ± std over direction "
          "seeds); lower is flatter",
          "- same budget, not same loss: a larger batch takes fewer steps and ends at a higher loss (the "
          "`loss` column), nearer its initialisation, so a flatter landscape there is partly an earlier "
          "point of training; compare runs of equal loss before crediting the optimizer or batch size", ""]
    for objective in dict.fromkeys(r["objective"] for r in rows):
        md += [f"## Objective: {objective}", "",
               "| run | steps | lr | min | final loss | loss | top eig | trace | "
               + " | ".join(f"noise σ={k[6:]}" for k in noise) + " | surface rise |",
               "|---|---:|---:|---:|---:|---:|---:|---:|" + "---:|" * len(noise) + "---:|"]
        for r in (r for r in rows if r["objective"] == objective):
            md.append(f"| {r['run']} | {r['steps']} | {r['lr']:.3g} | {r['minutes']:.1f} | "
                      f"{_fmt(r['final_loss'])} | {r['loss']:.4f} | {r['top_eigenvalue']:.4g} | "
                      f"{r['trace']:.4g} ± {r['trace_se']:.2g} | "
                      + " | ".join(f"{r[k]:.4f} ± {r[k + '_std']:.4f}" for k in noise)
                      + f" | {r['mean_rise']:.4f} ± {r['mean_rise_std']:.4f} |")
        md.append("")
    (folder / "landscape_sweep.md").write_text("\n".join(md))
    paths = [folder / "landscape_sweep.md", folder / "landscape_sweep.csv", _plot(rows, noise, folder)]
    study_dir = folder / "study"
    study_dir.mkdir(exist_ok=True)
    for path in [result.table, result.csv, *(f for f in result.figures if f.name.startswith("comparison_"))]:
        shutil.copy2(path, study_dir / path.name)
        paths.append(study_dir / path.name)
    return paths


def _plot(rows: list[dict], noise: list[str], folder: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    objectives = list(dict.fromkeys(r["objective"] for r in rows))
    fig, axes = plt.subplots(len(objectives), 2, figsize=(10, 3.2 * len(objectives)), squeeze=False)
    for i, objective in enumerate(objectives):
        sub = [r for r in rows if r["objective"] == objective]
        adamw = sorted((r for r in sub if r["optimizer"] == "adamw"), key=lambda r: r["batch"])
        ax = axes[i][0]
        ax.plot([r["batch"] for r in adamw], [r["top_eigenvalue"] for r in adamw], "o-")
        ax.set_xscale("log", base=2)
        ax.set(xlabel="batch size (AdamW)", ylabel="top Hessian eigenvalue", title=f"{objective}: batch size")
        ax2 = ax.twinx()
        key = noise[-1] if noise else None
        if key:
            ax2.plot([r["batch"] for r in adamw], [r[key] for r in adamw], "s--", color="tab:red")
            ax2.set_ylabel(f"loss rise, noise σ={key[6:]}", color="tab:red")
        ax = axes[i][1]
        names = [r["run"] for r in sub]
        ax.bar(names, [r["top_eigenvalue"] for r in sub], color="tab:blue")
        ax.set(ylabel="top Hessian eigenvalue", title=f"{objective}: every run")
        ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    path = folder / "landscape_sweep.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    """Command line; exit code 2 on an rsmae error."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/landscape/sweep-cpu-small.yaml")
    p.add_argument("--pretrain-only", action="store_true", help="only the pretrainings")
    args = p.parse_args(argv)
    start = time.perf_counter()
    log_to_stdout()
    try:
        cfg = yaml.safe_load(Path(args.config).read_text())
        out = ROOT / cfg["out"]
        runs = plan(cfg)
        records = [pretrain(run, cfg, out) for run in runs]
        if args.pretrain_only:
            return 0
        result = study(cfg, runs, out)
        rows = _rows(runs, records, result)
        paths = write(cfg, rows, result, ROOT / cfg["results"], time.perf_counter() - start, args.config)
    except (RsmaeError, OSError, KeyError) as err:
        print(f"error: {args.config}: {err}", file=sys.stderr)
        return 2
    print((ROOT / cfg["results"] / "landscape_sweep.md").read_text())
    print("\n".join(f"wrote {p}" for p in paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
