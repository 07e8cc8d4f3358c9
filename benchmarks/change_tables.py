"""Change-detection benchmark (issue 11): inits x protocols x datasets x seeds -> tables, plot, maps.

The grid machinery (backbones, one result file per cell, resume, local / Dask / SLURM cells) is
:mod:`rsmae.experiments`'s, and the command line ``transfer.py``'s; each cell is one
``rsmae.evaluation.change.evaluate_change`` call that trains on the training cities and scores whole
test scenes by sliding windows.

Examples::

    python benchmarks/change_tables.py --config configs/bench/cd-cpu-small.yaml
    python benchmarks/change_tables.py --config configs/bench/cd-cpu-small.yaml --tables-only
    python benchmarks/change_tables.py --config configs/bench/cd-oscd-loco.yaml   # leave one city out

A config names its output files with ``results_name`` (default ``change_detection``). Datasets with a
``held_out`` key are folds of a leave-cities-out split: they get one table, a column per held-out
city and the mean over cities, instead of a section each.
"""

from __future__ import annotations

import csv
import os
import statistics
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.pyplot as plt
from provenance import git_commit

from rsmae.evaluation.render import annotate_change_map
from rsmae.evaluation.speed import cpu_name
from rsmae.experiments import LABELS, cell_path, read_cells
from rsmae.experiments.config import GridConfig
from rsmae.models.trainable import tuned_blocks
from rsmae.stats import paired_bootstrap, pairwise_verdicts, verdict, wilcoxon_signed_rank

matplotlib.use("Agg")

CD_LABELS = {**LABELS, "fc_siam_diff": "FC-Siam-diff U-Net (from scratch)"}
METRICS = ("f1", "iou", "precision", "recall", "accuracy")
# code whose uncommitted changes would change a cell's numbers (named beside the commit)
MEASURED = ("rsmae/evaluation", "rsmae/models", "rsmae/tasks", "rsmae/datasets",
            "benchmarks/change_tables.py")
PUBLISHED = [
    ("FC-Siam-diff (13 bands / RGB)", "OSCD", "57.9 / 48.9"),
    ("FC-EF (13 bands / RGB)", "OSCD", "56.9 / 48.9"),
    ("FC-Siam-conc (13 bands)", "OSCD", "51.4"), ("SeCo ResNet-50 (RGB)", "OSCD", "46.9"),
    ("SatMAE (RGB)", "OSCD", "45.0"), ("GFM (RGB)", "OSCD", "59.8"), ("BIT", "LEVIR-CD", "89.3"),
    ("ChangeFormer", "LEVIR-CD", "90.1"),
]


def aggregate(results: list[dict[str, Any]]) -> dict[tuple[str, str, str], dict[str, Any]]:
    """``(init, protocol, dataset) -> mean and std over seeds of each metric (in %)``."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in results:
        groups[(r["init"], r["protocol"], r["dataset"])].append(r)
    rows = {}
    for key, rs in groups.items():
        row: dict[str, Any] = {"n": len(rs), "wall_s": statistics.fmean(r.get("wall_s", 0.0) for r in rs)}
        for m in METRICS:
            values = [100 * r[m] for r in rs if r.get(m) is not None]
            row[m] = statistics.fmean(values) if values else None
            row[f"{m}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        rows[key] = row
    return rows


def _fmt(row: dict[str, Any] | None, metric: str = "f1") -> str:
    if row is None or row[metric] is None:
        return "—"
    return f"{row[metric]:.1f} ± {row[f'{metric}_std']:.1f} ({row['n']})"


def write_change_tables(config: GridConfig, cells: list[dict[str, Any]], manifest: dict[str, Any],
                        folder: Path, elapsed: float = 0.0) -> list[Path]:
    """Write ``<results_name>.md``/``.csv``, the F1-vs-tuned-blocks plot and change maps into ``folder``."""
    results = read_cells(config, cells, manifest)
    rows = aggregate(results)
    inits = list(dict.fromkeys(c["init"] for c in cells))
    scored = {r["dataset"] for r in results}
    datasets = [d for d in dict.fromkeys(c["dataset"] for c in cells) if d in scored]
    folds = [d for d in datasets if "held_out" in config.datasets[d]]
    plain = [d for d in datasets if d not in folds]  # a section and a plot each
    protocols = list(dict.fromkeys(c["protocol"] for c in cells))
    name = config.results_name
    folder.mkdir(parents=True, exist_ok=True)
    command = f"python benchmarks/change_tables.py --config {config.config_path}"
    provenance = {"commit": git_commit(MEASURED), "command": command,
                  "machine": f"{cpu_name()}, {os.cpu_count()} cores"}
    csv_path = _write_cells_csv(folder / f"{name}.csv", results, config, provenance)
    cell_s = sum(float(r.get("wall_s") or 0.0) for r in results)
    workers = max(1, config.workers or 1)
    splits = [f"{d}: train {config.datasets[d].get('train_note', 'dataset split')}"
              for d in plain]
    this_run = f"grid time this run {elapsed / 60:.1f} min; " if elapsed else ""
    md = [f"# Change detection ({len(results)} of {len(cells)} cells done)", "",
          f"- machine: {cpu_name()}, {os.cpu_count()} cores; {this_run}cell time of the {len(results)} "
          f"cells {cell_s / 60:.1f} min, i.e. {cell_s / 60 / workers:.1f} min on {workers} worker(s); "
          f"command `{command}`; commit {provenance['commit']}; `{name}.csv`: one row per cell",
          "- F1 / IoU / precision / recall of the change class in %, mean ± std over seeds (n), pooled over "
          "whole test scenes scored by overlapping sliding windows with blended logits (not a centre crop), "
          "at the threshold chosen on a validation part of the training scenes",
          *([f"- splits: {'; '.join(splits)}"] if splits else []), ""]
    md += _folds_table(config, rows, inits, protocols, folds)
    for d in plain:
        md += [f"## {d}: F1 of the change class", "", "| init | " + " | ".join(protocols) + " |",
               "|---|" + "---|" * len(protocols)]
        for init in inits:
            if any((init, p, d) in rows for p in protocols):
                md.append(f"| {CD_LABELS.get(init, init)} | "
                          + " | ".join(_fmt(rows.get((init, p, d))) for p in protocols) + " |")
        md += ["", f"IoU / precision / recall ({d}):", "", "| init | protocol | IoU | precision | recall |",
               "|---|---|---|---|---|"]
        for (init, p, dd), r in sorted(rows.items()):
            if dd == d:
                scores = " | ".join(_fmt(r, m) for m in ("iou", "precision", "recall"))
                md.append(f"| {CD_LABELS.get(init, init)} | {p} | {scores} |")
        md.append("")
    md += ["## Published, other test cities, not rerun", "", "| model | dataset | F1 |", "|---|---|---|",
           *[f"| {m} | {d} | {v} |" for m, d, v in PUBLISHED],
           "", "torchgeo's OSCD datamodule centre-crops validation and test cities to one patch by default; "
           "the numbers above were scored on whole scenes.", ""]
    md_path = folder / f"{name}.md"
    md_path.write_text("\n".join(md))
    print("\n".join(md))
    plot = [_plot(rows, inits, protocols, plain, folder / f"{name}_f1_vs_tuned_blocks.png")] if plain else []
    return [md_path, csv_path, *plot, *_copy_maps(config, results, folder)]


def _folds_table(config: GridConfig, rows: dict, inits: list[str], protocols: list[str],
                 folds: list[str]) -> list[str]:
    """Markdown of a leave-cities-out split: F1 per held-out city and the mean ± std over cities."""
    if not folds:
        return []
    data = config.datasets
    cities = [str(data[d]["held_out"]) for d in folds]
    md = ["## Leave one city out: F1 of the change class on the held-out city", "",
          f"Each column trains on the other {len(folds) - 1} cities "
          f"({data[folds[0]].get('train_note', 'the remaining cities')}) and scores the whole held-out city; "
          "then the mean ± std over cities (the spread between cities, not between seeds), and the "
          f"difference to {CD_LABELS['random']} paired by city: mean [paired bootstrap 95 % CI over the "
          "cities], cities better / worse (F1 per city: mean over seeds).", "",
          "| init | protocol | " + " | ".join(cities) + " | mean over cities | vs random init, paired |",
          "|---|---|" + "---|" * (len(cities) + 2)]
    random_f1 = {d: rows[key]["f1"] for d in folds if (key := ("random", "frozen", d)) in rows}
    sentences = []
    for init in inits:
        for p in protocols:
            scores = {d: rows[(init, p, d)]["f1"] for d in folds if (init, p, d) in rows}
            if not scores:
                continue
            f1 = list(scores.values())
            spread = statistics.stdev(f1) if len(f1) > 1 else 0.0
            cols = " | ".join(f"{scores[d]:.1f}" if d in scores else "—" for d in folds)
            shared = [d for d in scores if d in random_f1]
            paired, sentence = ("—", "") if init == "random" else _paired_cities(
                f"{CD_LABELS.get(init, init)} ({p})", [scores[d] for d in shared],
                [random_f1[d] for d in shared])
            mean = f"{statistics.fmean(f1):.1f} ± {spread:.1f} ({len(f1)} cities)"
            md.append(f"| {CD_LABELS.get(init, init)} | {p} | {cols} | {mean} | {paired} |")
            sentences += [f"- {sentence}"] if sentence else []
    return [*md, "", *sentences, *([""] if sentences else []), *_pairs_by_city(rows, inits, protocols, folds)]


def _pairs_by_city(rows: dict, inits: list[str], protocols: list[str], folds: list[str]) -> list[str]:
    """Every two rows other than random init, F1 paired on the cities both scored (Bonferroni-widened)."""
    scores = {f"{CD_LABELS.get(i, i)} ({p})": {d: rows[(i, p, d)]["f1"] for d in folds if (i, p, d) in rows}
              for i in inits if i != "random" for p in protocols if any((i, p, d) in rows for d in folds)}
    shared = [d for d in folds if all(d in s for s in scores.values())]
    if len(shared) < 2:
        return []
    level, said = pairwise_verdicts({k: [v[d] for d in shared] for k, v in scores.items()}, test="wilcoxon",
                                    scale=1.0, unit="F1 points", units="cities")
    if not said:
        return []
    count = f"{len(said)} pair" + "s" * (len(said) > 1)
    return [f"Between the inits ({count} over the same {len(shared)} cities; Bonferroni: each "
            f"interval at {100 * level:.3g} % so that all hold together with 95 %; Wilcoxon p unadjusted):",
            "", *(f"- {t}" for t in said), ""]


def _paired_cities(name: str, f1: list[float], random_f1: list[float]) -> tuple[str, str]:
    """Table cell and sentence of ``name`` minus random init, F1 paired by city (needs 2+ cities)."""
    if len(f1) < 2:
        return "—", ""
    diff = paired_bootstrap(f1, random_f1)
    wins = sum(a > b for a, b in zip(f1, random_f1, strict=True))
    losses = sum(a < b for a, b in zip(f1, random_f1, strict=True))
    cell = f"{diff.difference:+.1f} [{diff.low:+.1f}, {diff.high:+.1f}], {wins} / {losses}"
    test = wilcoxon_signed_rank(f1, random_f1)
    sentence = verdict(name, CD_LABELS["random"], diff, scale=1.0, unit="F1 points", units="cities",
                       p_value=test.p_value if test.n else None, test="Wilcoxon signed-rank")
    return cell, sentence


def _write_cells_csv(path: Path, results: list[dict[str, Any]], config: GridConfig,
                     provenance: dict[str, str]) -> Path:
    """One row per finished cell (metrics in %), with the commit, command and machine of the table."""
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["dataset", "held_out", "init", "protocol", "seed", *METRICS, "wall_s", *provenance])
        for r in sorted(results, key=lambda r: (r["dataset"], r["init"], r["protocol"], r["seed"])):
            held = config.datasets.get(r["dataset"], {}).get("held_out", "")
            scores = [f"{100 * r[m]:.2f}" if r.get(m) is not None else "" for m in METRICS]
            writer.writerow([r["dataset"], held, r["init"], r["protocol"], r["seed"], *scores,
                             f"{float(r.get('wall_s') or 0.0):.0f}", *provenance.values()])
    return path


def _plot(rows: dict, inits: list[str], protocols: list[str], datasets: list[str], path: Path) -> Path:
    fig, axes = plt.subplots(1, len(datasets), figsize=(5 * len(datasets), 3.8), squeeze=False)
    for ax, d in zip(axes[0], datasets, strict=True):
        for init in inits:
            pts = sorted((x, rows[(init, p, d)]) for p in protocols
                         if (x := tuned_blocks(p, 12)) is not None and (init, p, d) in rows)
            if pts:
                ax.errorbar([x for x, _ in pts], [r["f1"] for _, r in pts], [r["f1_std"] for _, r in pts],
                            marker="o", capsize=3, label=CD_LABELS.get(init, init))
            if (init, "scratch", d) in rows:  # a model without encoder blocks: a reference line
                ax.axhline(rows[(init, "scratch", d)]["f1"], color="0.4", linestyle="--",
                           label=CD_LABELS.get(init, init))
        ax.set(title=d, xlabel="tuned encoder blocks (0 = frozen)", ylabel="F1 change class %")
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def map_caption(dataset: str, scene: str, init: str, protocol: str, table: str,
                f1: float | None = None) -> str:
    """Caption of a change map of the best seed-0 cell: what it shows and why this cell (``f1`` in %)."""
    score = f" ({f1:.1f}, pooled over its test scenes)" if f1 is not None else ""
    return (f"{dataset} {scene}: init {init} ({CD_LABELS.get(init, init)}), protocol {protocol}, seed 0 — "
            f"the seed-0 cell with the highest F1{score} on {dataset} in {table}: the best case, "
            "not a typical one")


def _copy_maps(config: GridConfig, results: list[dict[str, Any]], folder: Path) -> list[Path]:
    """Change maps of the best seed-0 cell of each dataset (every test scene) into ``folder``, annotated.

    They go to ``change_maps/<results_name>/``: tables sharing dataset names keep their own maps.
    Maps a dataset's earlier best cell left there are removed first. Each gets panel titles, the key of
    the error colours and a caption naming the cell and why it was chosen (:func:`map_caption`).
    """
    out = []
    maps_dir = folder / "change_maps" / config.results_name
    for d in {r["dataset"] for r in results}:
        for stale in maps_dir.glob(f"{d}_*.png"):
            stale.unlink()
        best = max((r for r in results if r["dataset"] == d and r["seed"] == 0), key=lambda r: r["f1"],
                   default=None)
        maps = cell_path(config.cells_dir, best).with_suffix("") / "maps" if best else None
        for png in sorted(maps.glob("*.png")) if maps and maps.is_dir() else []:
            caption = map_caption(d, png.stem, best["init"], best["protocol"], config.results_name,
                                  100 * best["f1"])
            target = maps_dir / f"{d}_{best['init']}_{best['protocol']}_{png.name}"
            out.append(annotate_change_map(png, target, caption))
    return out


def main(argv: list[str] | None = None) -> int:
    """The transfer benchmark's command line (same flags) with the change-detection tables."""
    import transfer  # the command line beside this script (its folder is on sys.path when run)

    return transfer.main(argv or ["--config", "configs/bench/cd-cpu-small.yaml"], writer=write_change_tables)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
