"""Tables and plots of the transfer benchmark, assembled from whatever cell results exist.

Writes ``transfer_eurosat.md`` / ``.csv`` (mean ± std over seeds, trainable parameters, wall time,
images/s and MFU; the Markdown's header and every CSV row name the commit, command and machine), and
plots: accuracy vs tuned blocks per init, accuracy vs label fraction per init (fractions ordered by
their number of training labels), both with 95 % Wilson intervals over the test images
(:func:`wilson_points`), and, where the pretraining runs' ``probe.json`` exist, pretraining steps vs
EuroSAT probe accuracy for MAE and RC-MAE. The plots can be redrawn from the CSV alone::

    python benchmarks/transfer_tables.py --replot-from-csv benchmarks/results/transfer_eurosat.csv
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import statistics
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.pyplot as plt
from provenance import git_commit

from rsmae.evaluation.speed import cpu_name
from rsmae.experiments import LABELS, load_config, read_cells
from rsmae.experiments.config import GridBlock, GridConfig
from rsmae.experiments.inits import manifest_table
from rsmae.files import read_json
from rsmae.models.trainable import tuned_blocks
from rsmae.stats import wilson_interval

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


def rows_from_csv(path: Path, n_test: int | None = None) -> dict[tuple[str, str, str], dict[str, Any]]:
    """The rows of :func:`aggregate` read back from ``transfer_eurosat.csv``: plots redrawn without cells.

    Args:
        path: The CSV written by :func:`write_tables`.
        n_test: Test images of every row, for CSVs written before they had an ``n_test`` column.

    Raises:
        ValueError: when a row has no ``n_test`` and none is given.
    """
    rows = {}
    with Path(path).open(newline="") as fh:
        for r in csv.DictReader(fh):
            n = r.get("n_test") or n_test
            if not n:
                raise ValueError(f"{path} has no n_test column: give the number of test images (--n-test)")
            rows[(r["init"], r["protocol"], r["fraction"])] = {
                "mean": float(r["accuracy_mean"]), "std": float(r["accuracy_std"]), "n": int(r["seeds"]),
                "n_train": int(r["n_train"]), "n_test": int(n)}
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
    head = {"commit": git_commit(MEASURED),
            "command": f"python benchmarks/transfer.py --config {config.config_path}",
            "machine": f"{cpu_name()}, {os.cpu_count()} cores"}
    csv_path = folder / "transfer_eurosat.csv"
    with csv_path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["init", "protocol", "fraction", "accuracy_mean", "accuracy_std", "seeds", "n_train",
                         "n_test", "trainable_params", "wall_s", "images_per_s", "mfu", "adaptation", *head])
        for (init, p, f), r in sorted(rows.items()):
            writer.writerow([init, p, f, f"{r['mean']:.2f}", f"{r['std']:.2f}", r["n"], r["n_train"],
                             r["n_test"], r["trainable_params"], f"{r['wall_s']:.1f}" if r["wall_s"] else "",
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


def wilson_points(row: dict[str, Any]) -> tuple[float, float]:
    """Points below and above a row's seed-mean accuracy to its 95 % Wilson interval over the test images.

    The seed-mean accuracy times ``n_test``, rounded to a count, is scored as that many right of
    ``n_test`` (:func:`rsmae.stats.wilson_interval`): the bars cover test-set sampling; the seeds'
    spread is the table's ±.
    """
    low, high = _wilson_pct(row["mean"], row["n_test"])
    return max(0.0, row["mean"] - low), max(0.0, high - row["mean"])


def _wilson_pct(accuracy: float, n: int) -> tuple[float, float]:
    """95 % Wilson interval (in %) of an accuracy in % scored on ``n`` images (rounded to a count)."""
    low, high = wilson_interval(round(accuracy / 100 * n), n)
    return 100 * low, 100 * high


def fraction_order(rows: dict, protocols: list[str], fractions: list[str]) -> list[tuple[str, int]]:
    """``(fraction, training labels)`` of the fractions with results, ordered by their number of labels.

    25 % of a small training split can be fewer labels than 5-shot, so the names give no order.
    """
    counts = {}
    for (_, p, f), r in rows.items():
        if p in protocols and f in fractions:
            counts.setdefault(f, r["n_train"])
    return sorted(counts.items(), key=lambda item: (item[1], item[0]))


def _bars_note(rows: dict) -> str:
    n = "/".join(str(n) for n in sorted({r["n_test"] for r in rows.values()}))
    return (f"bars: 95 % Wilson interval over the {n} test images of the seed-mean accuracy; "
            "seed spread: table")


def _curves(ax: plt.Axes, inits: list[str], points: dict[str, list[tuple[float, dict[str, Any]]]],
            ticks: list[str]) -> None:
    """One line per init over evenly spaced positions, dodged sideways so that their bars stay apart."""
    for k, init in enumerate(inits):
        pts = points.get(init, [])
        if pts:
            shift = 0.07 * (k - (len(inits) - 1) / 2)
            ax.errorbar([x + shift for x, _ in pts], [r["mean"] for _, r in pts],
                        list(zip(*(wilson_points(r) for _, r in pts), strict=True)),
                        marker="o", markersize=4, capsize=2, label=LABELS.get(init, init))
    ax.set(xticks=range(len(ticks)), xticklabels=ticks, ylabel="accuracy (%)")


def _legend(fig: plt.Figure, ax: plt.Axes) -> None:
    """The legend below the panels, off the data."""
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncol=3, fontsize=7, frameon=False)


def plot_all(rows: dict, inits: list[str], protocols: list[str], blocks: list[GridBlock], manifest: dict,
             runs: Path, folder: Path, depth: int = 12) -> list[Path]:
    """Accuracy vs tuned blocks, accuracy vs label fraction, probe accuracy vs pretraining steps.

    Bars are :func:`wilson_points`. The probe curve is drawn only from runs whose ``probe.json`` exists.
    """
    paths = []
    tuned = sorted({x for p in protocols if (x := tuned_blocks(p, depth)) is not None})
    fig, ax = plt.subplots(figsize=(7, 4.6), layout="constrained")
    points = {init: [(tuned.index(x), rows[(init, p, "100%")]) for p in protocols
                     if (x := tuned_blocks(p, depth)) is not None and (init, p, "100%") in rows]
              for init in inits}
    _curves(ax, inits, {i: sorted(pts, key=lambda pt: pt[0]) for i, pts in points.items()},
            [f"{x:g}" for x in tuned])
    ax.set_xlabel("tuned blocks (0 = MLP head on frozen features, 0.5 = last MLP; not to scale)")
    ax.set_title(f"EuroSAT: accuracy vs tuned blocks (100 % of the labels)\n{_bars_note(rows)}", fontsize=8)
    _legend(fig, ax)
    paths.append(_save(fig, folder / "transfer_tuned_blocks.png"))
    for block in blocks:
        order = fraction_order(rows, list(block.protocols), ["100%", *map(str, block.fractions)])
        position = {f: i for i, (f, _) in enumerate(order)}
        ticks = [f"{f.replace('%', ' %')} ({n})" for f, n in order]
        fig, axes = plt.subplots(1, len(block.protocols), figsize=(4 * len(block.protocols), 4),
                                 squeeze=False, layout="constrained")
        for ax, p in zip(axes[0], block.protocols, strict=True):
            _curves(ax, inits, {init: [(position[f], rows[(init, p, f)]) for f, _ in order
                                       if (init, p, f) in rows] for init in inits}, ticks)
            ax.set(title=p, xlabel="training labels per fraction (count)")
        fig.suptitle(f"EuroSAT: accuracy vs label fraction\n{_bars_note(rows)}", fontsize=8)
        _legend(fig, axes[0][0])
        paths.append(_save(fig, folder / "transfer_fractions.png"))
    curve = _probe_curve(manifest, runs)
    if curve is not None:
        paths.append(_save(curve, folder / "transfer_probe_curve.png"))
    return paths


def _probe_curve(manifest: dict, runs: Path) -> plt.Figure | None:
    """EuroSAT probe accuracy along pretraining (MAE, RC-MAE), 95 % Wilson bands; ``None`` without data."""
    fig, ax = plt.subplots(figsize=(6, 4.6), layout="constrained")
    sizes = set()
    for init in ("rs_mae", "rs_rcmae"):
        for stage in manifest.get(init, {}).get("stages", []):
            for key, style in (("probe/linear_acc", "-"), ("probe/knn_acc", "--")):
                hist = [h for h in read_json(runs / stage["run"] / "probe.json") or [] if key in h]
                if not hist:
                    continue
                steps = [h["step"] for h in hist]
                line, = ax.plot(steps, [100 * h[key] for h in hist], style, marker=".",
                                label=f"{LABELS.get(init, init)} {key.split('/')[1]}")
                if all("n_test" in h for h in hist):
                    sizes |= {h["n_test"] for h in hist}
                    bands = [_wilson_pct(100 * h[key], h["n_test"]) for h in hist]
                    ax.fill_between(steps, [lo for lo, _ in bands], [hi for _, hi in bands],
                                    color=line.get_color(), alpha=0.12, linewidth=0)
                else:
                    sizes.add(None)
    if not ax.lines:
        plt.close(fig)
        return None
    n = "/".join(str(n) for n in sorted(sizes - {None}))
    note = ("no interval: a probe.json does not record its number of test images" if None in sizes
            else f"bands: 95 % Wilson interval over the {n} probe test images")
    ax.set(xlabel="pretraining step", ylabel="EuroSAT probe accuracy (%)")
    ax.set_title(f"EuroSAT probe accuracy during pretraining (one run per init)\n{note}", fontsize=8)
    _legend(fig, ax)
    return fig


def _save(fig: plt.Figure, path: Path) -> Path:
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    """Redraw the plots from a written CSV (the cells may be gone): ``--replot-from-csv``."""
    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("--replot-from-csv", required=True, metavar="CSV", help="transfer_eurosat.csv")
    p.add_argument("--config", default="configs/bench/cpu-small.yaml", help="the grid's inits and blocks")
    p.add_argument("--n-test", type=int, default=None, help="test images, if the CSV has no n_test column")
    p.add_argument("--out", default=None, help="folder of the plots (default: the CSV's)")
    args = p.parse_args(argv)
    try:
        config = load_config(args.config)
        rows = rows_from_csv(Path(args.replot_from_csv), args.n_test)
    except (OSError, ValueError, KeyError) as err:  # a missing file, a CSV without the needed columns
        print(f"error: {args.replot_from_csv}: {err}", file=sys.stderr)
        return 2
    _, *blocks = config.grid
    paths = plot_all(rows, list(config.inits), list(config.grid[0].protocols), blocks, {},
                     Path(config.backbones_dir), Path(args.out or Path(args.replot_from_csv).parent))
    print("\n".join(f"wrote {path}" for path in paths))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
