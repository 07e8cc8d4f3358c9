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

Issue 21, optional keys of the sweep config (absent: the sweep as before, its finished runs reused):

- ``seeds: [0, 1, 2]``: every run trained once per seed (``seed_everything``; folders ``<run>_s<seed>``),
  each table row aggregated over training seeds x direction seeds (:mod:`rsmae.landscape.report`);
- ``checkpoint_every_samples: N``: each run keeps a checkpoint every ``N / batch`` optimizer steps
  (:func:`rsmae.landscape.equal_loss.with_checkpoints`), and a second table compares the runs at equal
  training loss: for each run the checkpoint whose training loss is nearest a common level
  (``equal_loss: {level: null, window: 5}``; null: the worst final loss among the runs), with the step
  and loss used. Runs without intermediate checkpoints get a line saying the table needs a rerun.

Either key gives each run its own recipe file, ``<out>/recipes/<run>.yaml`` (the shared recipe with
the seed and the checkpoints), so the pretrainings run again once.
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from provenance import git_commit

from rsmae.errors import RsmaeError
from rsmae.evaluation.speed import cpu_name
from rsmae.experiments.config import ROOT, log_to_stdout
from rsmae.experiments.sweep import (
    expand,
    landscape_model,
    pretrain,
    run_config,
    run_folder,
    snapshots,
    study,
)
from rsmae.landscape.equal_loss import Snapshot
from rsmae.landscape.report import summarise, table_rows
from rsmae.landscape.study import StudyResult

MEASURED = ("rsmae/landscape", "rsmae/experiments/sweep.py", "rsmae/tasks", "benchmarks/landscape_sweep.py")


def _rows(runs: list[dict[str, Any]], records: list[dict[str, Any]], result: StudyResult,
          snaps: dict[str, Snapshot] | None = None) -> list[dict]:
    """One row per run (its training seeds aggregated) and objective."""
    by_model: dict[str, list[tuple[dict, dict]]] = {}
    for run, record in zip(runs, records, strict=True):
        by_model.setdefault(run.get("model", run["name"]), []).append((run, record))
    rows = []
    for stats in table_rows(result.measures, result_threshold(result)):
        pairs = by_model[stats["model"]]
        run = pairs[0][0]
        finals = [r.get("final_loss") for _, r in pairs if r.get("final_loss") is not None]
        row = {"run": stats["model"], "optimizer": run["optimizer"], "batch": run["batch"],
               "steps": run["steps"], "lr": run["base_lr"] * run["batch"] / 256, "training_seeds": len(pairs),
               "final_loss": sum(finals) / len(finals) if finals else None,
               "minutes": sum(r["seconds"] for _, r in pairs) / 60 / len(pairs)}
        if snaps is not None:
            used = [snaps[r["name"]] for r, _ in pairs]
            row |= {"level": used[0].level, "step_used": " ".join(str(s.step) for s in used),
                    "training_loss_used": sum(s.loss for s in used) / len(used)}
        kept = ("objective", "loss", "top_eigenvalue", "top_eigenvalue_std", "trace", "trace_se")
        row |= {key: stats[key] for key in kept}
        for key in (k for k in stats if k.startswith("noise_") and k.endswith("_mean")):
            name = key[: -len("_mean")]
            row[name], row[f"{name}_std"] = stats[key], stats[f"{name}_std"]
        row["mean_rise"], row["mean_rise_std"] = stats["mean_rise"], stats["mean_rise_std"]
        rows.append(row)
    return rows


def result_threshold(result: StudyResult) -> float:
    """The study's basin threshold (from its written config)."""
    return float(yaml.safe_load((result.out / "config.yaml").read_text()).get("threshold", 0.1))


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _csv(rows: list[dict], path: Path) -> Path:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=keys)
        writer.writeheader()
        writer.writerows({k: _fmt(v) for k, v in r.items()} for r in rows)
    return path


def _tables(rows: list[dict], noise: list[str]) -> list[str]:
    """Per objective, one Markdown table of the runs; at equal loss with the step and loss used."""
    md = []
    equal = bool(rows) and "step_used" in rows[0]
    extra = "step used | training loss there | " if equal else ""
    for objective in dict.fromkeys(r["objective"] for r in rows):
        md += [f"### Objective: {objective}" if equal else f"## Objective: {objective}", "",
               "| run | seeds | steps | lr | min | final loss | " + extra + "loss | top eig | trace | "
               + " | ".join(f"noise σ={k[6:]}" for k in noise) + " | surface rise |",
               "|---|---:|---:|---:|---:|---:|" + "---:|" * (2 * equal) + "---:|---:|---:|"
               + "---:|" * len(noise) + "---:|"]
        for r in (r for r in rows if r["objective"] == objective):
            used = f"{r['step_used']} | {r['training_loss_used']:.4f} | " if equal else ""
            md.append(f"| {r['run']} | {r['training_seeds']} | {r['steps']} | {r['lr']:.3g} | "
                      f"{r['minutes']:.1f} | {_fmt(r['final_loss'])} | {used}{r['loss']:.4f} | "
                      f"{r['top_eigenvalue']:.4g} | {r['trace']:.4g} ± {r['trace_se']:.2g} | "
                      + " | ".join(f"{r[k]:.4f} ± {r[k + '_std']:.4f}" for k in noise)
                      + f" | {r['mean_rise']:.4f} ± {r['mean_rise_std']:.4f} |")
        md.append("")
    return md


def summary(result: StudyResult) -> list[str]:
    """The study's sentences on every two runs: "flatter" only beyond the spread, else indistinguishable."""
    return [f"- {s}" for s in summarise(table_rows(result.measures, result_threshold(result)))]


def _copy_study(result: StudyResult, folder: Path) -> list[Path]:
    """The study's flatness table (Markdown + CSV) and comparison figures, copied into ``folder``."""
    folder.mkdir(exist_ok=True)
    paths = []
    for path in [result.table, result.csv, *(f for f in result.figures if f.name.startswith("comparison_"))]:
        shutil.copy2(path, folder / path.name)
        paths.append(folder / path.name)
    return paths


def write(cfg: dict[str, Any], rows: list[dict], result: StudyResult, folder: Path, seconds: float,
          config_path: str, equal: tuple[list[dict], StudyResult] | None = None) -> list[Path]:
    """Markdown + CSV tables, a plot, and the study's own table and comparison figures.

    The tables compare the runs at equal samples, and at equal training loss when ``equal`` (its rows
    and study) is given; each comparison ends with the study's sentences on every two runs.
    """
    folder.mkdir(parents=True, exist_ok=True)
    keys = list(dict.fromkeys(k for r in rows for k in r))
    _csv(rows, folder / "landscape_sweep.csv")
    noise = [k for k in keys if k.startswith("noise_") and not k.endswith("_std")]
    md = ["# Loss landscape vs pretraining batch size and optimizer", "",
          f"- machine: {cpu_name()}, {os.cpu_count()} cores; this run {seconds / 60:.1f} min (finished "
          "pretrainings and landscape measures are reused; each pretraining's minutes are in the table, "
          f"threads: {cfg.get('threads') or 'default'}); command `python "
          f"benchmarks/landscape_sweep.py --config {config_path}`; commit {git_commit(MEASURED)}",
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
          "point of training; the last section compares the runs at equal training loss",
          "- seeds: training seeds per run (each row: mean over them; surface rise ± std over training seeds "
          "x direction seeds; noise ± std over every draw of every seed)", "",
          *_tables(rows, noise), "### Which runs are flatter, at equal samples", "", *summary(result), "",
          "## At equal training loss", ""]
    plot = _plot(rows, equal[0] if equal else None, folder)
    paths = [folder / "landscape_sweep.md", folder / "landscape_sweep.csv", plot]
    options = cfg.get("equal_loss") or {}
    if equal:
        level = "the configured level" if options.get("level") is not None else \
            "the worst final training loss among the runs"
        md += [f"Each run measured at its checkpoint whose training loss (mean of the last "
               f"{options.get('window', 5)} logged values) is nearest {equal[0][0]['level']:.4f}, {level}; "
               "`step used` per training seed (study in `study_equal_loss/`).", "", *_tables(equal[0], noise),
               "### Which runs are flatter, at equal training loss", "", *summary(equal[1]), ""]
        paths.append(_csv(equal[0], folder / "landscape_sweep_equal_loss.csv"))
        paths += _copy_study(equal[1], folder / "study_equal_loss")
    else:
        md += ["Not measured: the runs kept no intermediate checkpoint. Set `checkpoint_every_samples` in "
               f"`{config_path}` and run the sweep again (the pretrainings rerun once, with their "
               "checkpoints).", ""]
    (folder / "landscape_sweep.md").write_text("\n".join(md))
    return paths + _copy_study(result, folder / "study")


def run_sweep(cfg: dict[str, Any], config_path: str, *, pretrain_only: bool = False) -> list[Path]:
    """Pretrain every run (and seed), measure the landscapes at equal samples and at equal loss, write."""
    start = time.perf_counter()
    out = ROOT / cfg["out"]
    runs = expand(cfg)
    records = [pretrain(run, run_config(run, cfg, out), out) for run in runs]
    if pretrain_only:
        return []
    final = [landscape_model(r, run_folder(out, r) / "checkpoints" / "last.ckpt") for r in runs]
    result = study(cfg, final, out / "study")
    rows = _rows(runs, records, result)
    equal = None
    snaps = snapshots(cfg, runs, out)
    if snaps is not None:
        models = [landscape_model(r, snaps[r["name"]].path) for r in runs]
        equal_result = study(cfg, models, out / "study_equal_loss")
        equal = (_rows(runs, records, equal_result, snaps), equal_result)
    return write(cfg, rows, result, ROOT / cfg["results"], time.perf_counter() - start, config_path, equal)


def _plot(rows: list[dict], equal: list[dict] | None, folder: Path) -> Path:
    """Per objective: mean surface rise and top eigenvalue of every run, mean ± std over seeds.

    Equal samples (final weights) and, when measured, equal training loss side by side.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    sets = [("equal samples (final weights)", rows), *([("equal training loss", equal)] if equal else [])]
    objectives = list(dict.fromkeys(r["objective"] for r in rows))
    fig, axes = plt.subplots(len(objectives), 2, figsize=(11, 3.4 * len(objectives) + 0.6), squeeze=False)
    width = 0.8 / len(sets)
    for i, objective in enumerate(objectives):
        names = [r["run"] for r in rows if r["objective"] == objective]
        for ax, key, label in ((axes[i][0], "mean_rise", "mean loss rise over the 2D surface"),
                               (axes[i][1], "top_eigenvalue", "top Hessian eigenvalue")):
            for k, (name, subset) in enumerate(sets):
                by_run = {r["run"]: r for r in subset if r["objective"] == objective}
                x = np.arange(len(names)) + (k - (len(sets) - 1) / 2) * width
                ax.bar(x, [by_run[n][key] for n in names], width, capsize=3, label=name,
                       yerr=[by_run[n][f"{key}_std"] for n in names], color=("tab:blue", "tab:orange")[k])
            ax.set_xticks(range(len(names)), names, rotation=20)
            ax.set(xlabel="run (optimizer, batch)", ylabel=label, title=f"{objective}: {label}")
            ax.grid(axis="y", alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.legend(handles, labels, loc="lower center", ncol=len(sets), frameon=False,
               title="bars: mean over 3 training seeds; error bars: std over training x direction seeds "
                     "(rise) or training seeds (eigenvalue); lower is flatter")
    path = folder / "landscape_sweep.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    """Command line; exit code 2 on an rsmae error."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/landscape/sweep-cpu-small.yaml")
    p.add_argument("--pretrain-only", action="store_true", help="only the pretrainings")
    p.add_argument("--workers", type=int, help="processes of the landscape measures")
    args = p.parse_args(argv)
    log_to_stdout()
    try:
        cfg = yaml.safe_load(Path(args.config).read_text())
        if args.workers is not None:
            cfg.setdefault("landscape", {})["workers"] = args.workers
        paths = run_sweep(cfg, args.config, pretrain_only=args.pretrain_only)
        if args.pretrain_only:
            return 0
    except (RsmaeError, OSError, KeyError) as err:
        print(f"error: {args.config}: {err}", file=sys.stderr)
        return 2
    print((ROOT / cfg["results"] / "landscape_sweep.md").read_text())
    print("\n".join(f"wrote {p}" for p in paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
