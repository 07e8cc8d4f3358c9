"""Tables and plots of the transfer benchmark, assembled from whatever cell results exist.

Writes ``transfer_eurosat.md`` / ``.csv`` (mean ± std over seeds, trainable parameters, wall time,
images/s and MFU; the Markdown's header and every CSV row name the commit, command and machine), and
three plots: accuracy vs tuned blocks per init, accuracy vs label fraction per
init, and pretraining steps vs EuroSAT probe accuracy for MAE and RC-MAE.
"""

from __future__ import annotations

import csv
import json
import math
import os
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.pyplot as plt
from provenance import git_commit

from rsmae.evaluation.speed import cpu_name
from rsmae.experiments import LABELS, read_cells
from rsmae.experiments.config import GridBlock, GridConfig
from rsmae.experiments.inits import manifest_table
from rsmae.files import read_json
from rsmae.models.trainable import tuned_blocks

matplotlib.use("Agg")

MEASURED = ("rsmae/experiments", "rsmae/evaluation", "rsmae/models", "rsmae/tasks", "rsmae/datasets",
            "rsmae/data", "configs/bench", "benchmarks/transfer.py", "benchmarks/transfer_tables.py")
NOT_RUN = {"official ImageNet MAE (.pth)": "external.official_mae",
           "timm ViT weights": "external.timm", "torchgeo SSL4EO-S12 ViT": "external.torchgeo"}
PUBLISHED = [
    ("SSL4EO-S12 MAE ViT-S/16 (Sentinel-2)", "EuroSAT full fine-tune", "98.7 %"),
    ("Scale-MAE", "EuroSAT kNN", "86.7 %"),
    ("MAE ViT-B (ImageNet-1k)", "ImageNet fine-tune / linear", "83.6 % / 68.0 %"),
    ("MAE ViT-B, last block only / its MLP only", "ImageNet partial fine-tune", "81.0 % / 79.1 %"),
    ("RC-MAE ViT-S vs MAE ViT-S", "ImageNet fine-tune", "82.0 % vs 81.8 %"),
]


def _mean(results: list[dict[str, Any]], name: str) -> float | None:
    values = [r.get(name) for r in results]
    return statistics.fmean(values) if all(v is not None for v in values) else None


def aggregate(results: list[dict[str, Any]]) -> dict[tuple[str, str, str], dict[str, Any]]:
    """``(init, protocol, fraction) -> mean/std of accuracy over seeds and mean costs``."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in results:
        groups[(r["init"], r["protocol"], r["fraction"])].append(r)
    rows = {}
    for key, rs in groups.items():
        acc = [100 * r["accuracy"] for r in rs]
        rows[key] = {"mean": statistics.fmean(acc), "std": statistics.stdev(acc) if len(acc) > 1 else 0.0,
                     "n": len(acc), "trainable_params": rs[0]["trainable_params"],
                     "wall_s": _mean(rs, "wall_s"),
                     "images_per_s": _mean(rs, "images_per_s"), "mfu": _mean(rs, "mfu"),
                     "n_train": rs[0]["n_train"], "n_test": rs[0]["n_test"],
                     "adaptation": rs[0].get("adaptation", "")}
    return rows


def _fmt(row: dict[str, Any] | None) -> str:
    return "—" if row is None else f"{row['mean']:.1f} ± {row['std']:.1f} ({row['n']})"


def _grid_table(rows: dict, inits: list[str], columns: list[tuple[str, str]], names: list[str]) -> list[str]:
    lines = ["| init | " + " | ".join(names) + " |", "|---|" + "---|" * len(columns)]
    for init in inits:
        cells = [_fmt(rows.get((init, p, f))) for p, f in columns]
        lines.append(f"| {LABELS.get(init, init)} | " + " | ".join(cells) + " |")
    return lines


def _cost_table(rows: dict, protocols: list[str]) -> list[str]:
    lines = ["| protocol | trainable params | wall s / cell | images/s | MFU |", "|---|---:|---:|---:|---:|"]
    for p in protocols:
        rs = [r for (i, q, f), r in rows.items() if q == p and f == "100%"]
        if not rs:
            continue
        ips = [r["images_per_s"] for r in rs if r["images_per_s"]]
        mfu = [r["mfu"] for r in rs if r["mfu"]]
        speed = f"{statistics.fmean(ips):.0f} | {100 * statistics.fmean(mfu):.1f} % |" if ips else "— | — |"
        wall = statistics.fmean(r["wall_s"] for r in rs)
        lines.append(f"| {p} | {rs[0]['trainable_params']:,} | {wall:.1f} | {speed}")
    return lines


def _noise(row: dict[str, Any]) -> float:
    """Spread of a mean accuracy: the larger of the seed std and the test set's binomial standard error.

    With 54 test images one image is 1.85 points and the standard error near 60 % is 6.7 points; the
    seeds alone (0 for deterministic probes on all labels) would call far too much "clear".
    """
    p = row["mean"] / 100
    return max(row["std"], 100 * math.sqrt(p * (1 - p) / max(row["n_test"], 1)))


def summary(rows: dict, protocols: list[str]) -> list[str]:
    """Generated sentences: remote-sensing vs natural-image init, MAE vs RC-MAE, with the spread.

    A difference is called clear when it exceeds twice the combined spread (:func:`_noise`).
    """
    out = []
    pairs = [("rs_mae", "natural_mae", "remote-sensing MAE vs natural-image MAE"),
             ("rs_rcmae", "rs_mae", "RC-MAE vs MAE"),
             ("natural_rs_mae", "rs_mae", "natural-then-in-domain vs in-domain only"),
             ("rs_mae", "random", "our MAE vs random init")]
    for a, b, name in pairs:
        parts = []
        for p in protocols:
            ra, rb = rows.get((a, p, "100%")), rows.get((b, p, "100%"))
            if ra and rb:
                diff, spread = ra["mean"] - rb["mean"], math.hypot(_noise(ra), _noise(rb))
                verdict = "clear" if abs(diff) > 2 * spread else "within noise"
                parts.append(f"{p} {diff:+.1f} ({verdict}, ±{spread:.1f})")
        if parts:
            out.append(f"- {name} (points; ± = seed and test-set spread): " + "; ".join(parts) + ".")
    return out


def write_tables(config: GridConfig, cells: list[dict[str, Any]], manifest: dict[str, dict[str, Any]],
                 folder: Path, elapsed: float = 0.0) -> list[Path]:
    """Write the Markdown and CSV tables and the plots; return their paths."""
    results = read_cells(config, cells, manifest)
    rows = aggregate(results)
    inits = list(config.inits)
    full_block, *other_blocks = config.grid
    protocols = list(full_block.protocols)
    folder.mkdir(parents=True, exist_ok=True)
    dirty = [path for path in MEASURED if git_commit([path]) != git_commit()]  # name only the changed ones
    head = {"commit": git_commit(dirty),
            "command": f"python benchmarks/transfer.py --config {config.config_path}",
            "machine": f"{cpu_name()}, {os.cpu_count()} cores"}
    csv_path = folder / "transfer_eurosat.csv"
    with csv_path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["init", "protocol", "fraction", "accuracy_mean", "accuracy_std", "seeds", "n_train",
                         "trainable_params", "wall_s", "images_per_s", "mfu", "adaptation", *head])
        for (init, p, f), r in sorted(rows.items()):
            writer.writerow([init, p, f, f"{r['mean']:.2f}", f"{r['std']:.2f}", r["n"], r["n_train"],
                             r["trainable_params"], f"{r['wall_s']:.1f}" if r["wall_s"] else "",
                             f"{r['images_per_s']:.1f}" if r["images_per_s"] else "",
                             f"{r['mfu']:.4f}" if r["mfu"] else "", r["adaptation"], *head.values()])
    leak = next(iter(manifest.values())).get("leak_check", {})
    cell_s = sum(float(r.get("wall_s") or 0.0) for r in results)
    workers = max(1, config.workers or 1)
    this_run = f"grid time this run {elapsed / 60:.1f} min; " if elapsed else ""
    md = [f"# Transfer: EuroSAT-MS scene classification ({len(results)} of {len(cells)} cells done)", "",
          f"- commit: {head['commit']}", f"- command: `{head['command']}`", f"- machine: {head['machine']}",
          f"- time: {this_run}cell time of all {len(results)} cells {cell_s / 60:.1f} min, i.e. "
          f"{cell_s / 60 / workers:.1f} min on {workers} worker(s) (pretraining the backbones: see "
          f"Backbones); config `{config.config_path}`",
          f"- data: train `{config.data['train_root']}` (a validation split held out, seed 0), test "
          f"`{config.data['test_root']}`; accuracy in %, mean ± std over seeds (n seeds)",
          f"- no evaluation image in any pretraining corpus: {json.dumps(leak) if leak else 'checked'}",
          "- every init sees its own bands and statistics; adaptations are listed in the CSV", "",
          "## Accuracy by protocol (100 % of the training labels)", "",
          *_grid_table(rows, inits, [(p, "100%") for p in protocols], protocols), ""]
    for block in other_blocks:
        cols = [(p, str(f)) for p in block.protocols for f in ["100%", *map(str, block.fractions)]]
        md += ["## Label fractions", "", *_grid_table(rows, inits, cols, [f"{p} {f}" for p, f in cols]), ""]
    md += ["## Summary (generated)", "", *summary(rows, protocols), "",
           "## Cost per protocol (100 %, mean over inits)", "", *_cost_table(rows, protocols), "",
           "## Not run", "", *[f"- {name}: not run (no weights file given: set `{key}` in the config)"
                               for name, key in NOT_RUN.items() if key.split(".")[1] not in manifest], "",
           "## Published, not rerun", "", "| model | setting | number |", "|---|---|---|",
           *[f"| {m} | {s} | {v} |" for m, s, v in PUBLISHED], "",
           "## Backbones", "", manifest_table(manifest), ""]
    md_path = folder / "transfer_eurosat.md"
    md_path.write_text("\n".join(md))
    plots = plot_all(rows, inits, protocols, other_blocks, manifest, Path(config.backbones_dir), folder)
    print("\n".join(md))
    return [md_path, csv_path, *plots]


def plot_all(rows: dict, inits: list[str], protocols: list[str], blocks: list[GridBlock], manifest: dict,
             runs: Path, folder: Path, depth: int = 12) -> list[Path]:
    """Accuracy vs tuned blocks, accuracy vs label fraction, probe accuracy vs pretraining steps."""
    paths = []
    fig, ax = plt.subplots(figsize=(6, 4))
    for init in inits:
        pts = sorted((x, rows[(init, p, "100%")]) for p in protocols
                     if (x := tuned_blocks(p, depth)) is not None and (init, p, "100%") in rows)
        if pts:
            ax.errorbar([x for x, _ in pts], [r["mean"] for _, r in pts], [r["std"] for _, r in pts],
                        marker="o", capsize=3, label=LABELS.get(init, init))
    ax.set(xlabel="tuned blocks (0 = MLP head on frozen features, 0.5 = last MLP)", ylabel="accuracy %",
           title="EuroSAT: accuracy vs tuned blocks")
    ax.legend(fontsize=7)
    paths.append(_save(fig, folder / "transfer_tuned_blocks.png"))
    for block in blocks:
        fractions = ["5-shot", *[f for f in map(str, block.fractions) if f != "5-shot"], "100%"]
        fig, axes = plt.subplots(1, len(block.protocols), figsize=(4 * len(block.protocols), 3.5),
                                 squeeze=False)
        for ax, p in zip(axes[0], block.protocols, strict=True):
            for init in inits:
                pts = [(i, rows[(init, p, f)]) for i, f in enumerate(fractions) if (init, p, f) in rows]
                if pts:
                    ax.errorbar([i for i, _ in pts], [r["mean"] for _, r in pts], [r["std"] for _, r in pts],
                                marker="o", capsize=3, label=LABELS.get(init, init))
            ax.set(xticks=range(len(fractions)), xticklabels=fractions, title=p, ylabel="accuracy %")
        axes[0][0].legend(fontsize=6)
        paths.append(_save(fig, folder / "transfer_fractions.png"))
    fig, ax = plt.subplots(figsize=(6, 4))
    for init in ("rs_mae", "rs_rcmae"):
        for stage in manifest.get(init, {}).get("stages", []):
            hist = read_json(runs / stage["run"] / "probe.json")
            if hist:
                for key, style in (("probe/linear_acc", "-"), ("probe/knn_acc", "--")):
                    ax.plot([h["step"] for h in hist], [100 * h[key] for h in hist], style, marker=".",
                            label=f"{LABELS[init]} {key.split('/')[1]}")
    ax.set(xlabel="pretraining step", ylabel="EuroSAT probe accuracy %", title="Does RC-MAE converge faster?")
    ax.legend(fontsize=7)
    paths.append(_save(fig, folder / "transfer_probe_curve.png"))
    return paths


def _save(fig: plt.Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
