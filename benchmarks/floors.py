"""Floors of the EuroSAT classification tables (issue 21), scored by stratified 5-fold and the fixed split.

Floors (``rsmae.evaluation.floors``): the spectral signature (per-band mean and std of each image ->
linear classifier), random convolutional features (MOSAIKS/RCF) and a frozen random-init ViT-Tiny/8.
Every choice (band statistics, RCF patches, L2 weight, pooling) is made inside the training fold.
The main evaluation is stratified 5-fold cross-validation over all labelled images (train + test
folders: each image tested once); the folder's own train/test split is scored beside it. Per-image
predictions go to ``floors.csv`` (one row per image, fold, seed and floor, with commit, command and
machine); ``floors.md`` holds the accuracies with 95 % intervals over the test images and the paired
differences between floors (paired bootstrap, McNemar, a verdict only when the interval excludes 0).

Run (about 3 minutes per seed on 2 busy cores)::

    .venv/bin/python benchmarks/floors.py
    .venv/bin/python benchmarks/floors.py --seeds 0 1 2 --root ../shared/data/eurosat_ms_subset
"""

from __future__ import annotations

import argparse
import csv
import itertools
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from provenance import git_commit

from rsmae.datasets import EuroSAT
from rsmae.evaluation.floors import FLOORS, FloorConfig, evaluate_floor
from rsmae.evaluation.folds import Fold, fixed_split, stratified_kfold
from rsmae.evaluation.speed import cpu_name
from rsmae.stats import bootstrap_interval, mcnemar_exact, paired_bootstrap, verdict

ROOT = Path(__file__).resolve().parents[1]
MEASURED = ("rsmae/evaluation/floors.py", "rsmae/evaluation/folds.py", "rsmae/stats.py",
            "rsmae/tasks/probe.py", "rsmae/models/vit.py", "benchmarks/floors.py")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--root", type=Path, default=ROOT.parent / "shared" / "data" / "eurosat_ms_subset",
                        help="folder in the EuroSAT layout holding train/ and test/")
    parser.add_argument("--methods", nargs="+", default=list(FLOORS), choices=list(FLOORS))
    parser.add_argument("--folds", type=int, default=5, help="outer stratified folds")
    parser.add_argument("--fold-seed", type=int, default=0, help="seed of the outer folds")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0],
                        help="floor seeds (RCF patches, ViT init, inner folds)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 on a shared machine)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    return parser.parse_args(argv)


def load(root: Path) -> tuple[torch.Tensor, torch.Tensor, list[str], int]:
    """All labelled images (train folder, then test folder), labels, relative paths, train count."""
    train, test = EuroSAT(root, "train"), EuroSAT(root, "test")
    names = [str(Path(p).relative_to(root)) for p in [*train.paths, *test.paths]]
    return torch.cat([train.images, test.images]), torch.cat([train.labels, test.labels]), names, len(train)


def run(images: torch.Tensor, labels: torch.Tensor, names: list[str], splits: dict[str, list[Fold]],
        args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every floor on every fold of every evaluation and seed: one row per test image."""
    rows = []
    for method, seed, (evaluation, folds) in itertools.product(args.methods, args.seeds, splits.items()):
        config = FloorConfig(seed=seed)
        for fold in folds:
            start = time.perf_counter()
            res = evaluate_floor(method, images, labels, fold, config, num_classes=int(labels.max()) + 1)
            truth = labels[res.test].numpy()
            for i, pred, y in zip(res.test.tolist(), res.predictions.tolist(), truth.tolist(), strict=True):
                rows.append({"method": method, "evaluation": evaluation, "fold": fold.name, "seed": seed,
                             "image": i, "path": names[i], "label": y, "prediction": pred,
                             "correct": int(pred == y), "choice": res.choice,
                             "inner_accuracy": round(res.inner_accuracy, 4)})
            acc = float((res.predictions == truth).mean())
            print(f"{method:>10} seed {seed} {evaluation:>5} {fold.name}: {100 * acc:5.1f} %  "
                  f"({res.choice}; {time.perf_counter() - start:.1f} s)", flush=True)
    return rows


def correctness(rows: list[dict[str, Any]], method: str, evaluation: str) -> np.ndarray:
    """``(seeds, images)`` 0/1 correctness, images in index order."""
    sel = [r for r in rows if r["method"] == method and r["evaluation"] == evaluation]
    seeds, images = sorted({r["seed"] for r in sel}), sorted({r["image"] for r in sel})
    out = np.zeros((len(seeds), len(images)))
    col = {img: j for j, img in enumerate(images)}
    for r in sel:
        out[seeds.index(r["seed"]), col[r["image"]]] = r["correct"]
    return out


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def _labels(folds: int) -> dict[str, str]:
    return {"kfold": f"stratified {folds}-fold CV", "fixed": "fixed split"}


def accuracy_table(rows: list[dict[str, Any]], methods: list[str], folds: int) -> list[str]:
    """One row per floor: k-fold and fixed-split accuracy with 95 % intervals, per-fold accuracy, choices."""
    lines = [f"| floor | {folds}-fold CV accuracy [95 % CI] | per fold | fixed split [95 % CI] | chosen in "
             "the training sets (count) |", "|---|---|---|---|---|"]
    for m in methods:
        cells = []
        for evaluation in _labels(folds):
            c = correctness(rows, m, evaluation)
            low, high = bootstrap_interval(c)
            seeds = f", seeds {_pct(c.mean(1).min())}–{_pct(c.mean(1).max())}" if len(c) > 1 else ""
            cells.append(f"{_pct(c.mean())} [{_pct(low)}, {_pct(high)}] (n={c.shape[1]}{seeds})")
        per_fold = []
        for fold in sorted({r["fold"] for r in rows if r["evaluation"] == "kfold"}):
            sel = [r["correct"] for r in rows if r["method"] == m and r["fold"] == fold]
            per_fold.append(_pct(float(np.mean(sel))))
        choices = sorted({r["choice"] for r in rows if r["method"] == m})
        counts = {ch: len({(r["fold"], r["seed"]) for r in rows if r["method"] == m and r["choice"] == ch})
                  for ch in choices}
        chosen = ", ".join(f"{ch} ({n}x)" for ch, n in counts.items())
        lines.append(f"| {FLOORS[m]} | {cells[0]} | {' '.join(per_fold)} | {cells[1]} | {chosen} |")
    return lines


def pairs_table(rows: list[dict[str, Any]], methods: list[str], folds: int) -> tuple[list[str], list[str]]:
    """Paired differences between floors (table rows) and their verdict sentences."""
    lines = ["| A − B | evaluation | A − B (points) | paired 95 % CI | only A right / only B right | "
             "McNemar p |", "|---|---|---:|---|---|---:|"]
    sentences = []
    for a, b in itertools.combinations(methods, 2):
        for evaluation, label in _labels(folds).items():
            ca, cb = correctness(rows, a, evaluation), correctness(rows, b, evaluation)
            diff = paired_bootstrap(ca, cb)
            test = mcnemar_exact(ca[0], cb[0])  # the first seed's predictions
            lines.append(f"| {FLOORS[a]} − {FLOORS[b]} | {label} | {100 * diff.difference:+.1f} | "
                         f"[{100 * diff.low:+.1f}, {100 * diff.high:+.1f}] | {test.only_a} / {test.only_b} | "
                         f"{test.p_value:.2g} |")
            sentences.append(f"- {label}: " + verdict(FLOORS[a], FLOORS[b], diff, p_value=test.p_value))
    return lines, sentences


def write(rows: list[dict[str, Any]], args: argparse.Namespace, head: dict[str, str]) -> str:
    """Write ``floors.md`` and ``floors.csv`` into ``args.out``; return the Markdown."""
    acc = accuracy_table(rows, args.methods, args.folds)
    pairs, sentences = pairs_table(rows, args.methods, args.folds)
    n_images = len({r["image"] for r in rows if r["evaluation"] == "kfold"})
    text = "\n".join([
        "# Floors of the EuroSAT classification tables", "",
        f"- commit: {head['commit']}", f"- command: `{head['command']}`", f"- machine: {head['machine']}",
        f"- load average (1 min) at start / end: {head['load']}; wall time {head['minutes']} min",
        f"- data: `{args.root}` (train/ + test/, {n_images} images); {args.folds}-fold stratified CV over "
        f"all of them (fold seed {args.fold_seed}, each image tested once per seed) and the folders' own "
        "train/test split; floor seeds " + ", ".join(map(str, args.seeds)),
        "- every choice inside the training fold: band statistics, RCF patches, L2 weight and pooling "
        f"(inner {FloorConfig().inner_folds}-fold CV); head: `rsmae.tasks.probe.fit_linear_probe` "
        f"({FloorConfig().probe_steps} full-batch Adam steps, standardised features)",
        "- 95 % CI: percentile bootstrap over the test images (10,000 resamples; seeds averaged per "
        "image), i.e. test-set sampling; the seeds' spread is given beside it; differences: paired "
        "bootstrap on the same images (seeds averaged per image), McNemar's exact test on the discordant "
        f"ones (seed {args.seeds[0]}'s predictions); a difference is called only when the paired CI "
        "excludes 0",
        "", "## Accuracy (%)", "", *acc, "", "## Paired differences", "", *pairs, "", *sentences, ""])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "floors.md").write_text(text)
    with (args.out / "floors.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=[*rows[0], "commit", "command", "machine"])
        writer.writeheader()
        for r in rows:
            writer.writerow({**r, "commit": head["commit"], "command": head["command"],
                             "machine": head["machine"]})
    return text


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    given = sys.argv[1:] if argv is None else argv
    command = " ".join([".venv/bin/python", "benchmarks/floors.py", *given])
    load_start, started = os.getloadavg()[0], time.perf_counter()
    images, labels, names, n_train = load(args.root)
    splits = {"kfold": stratified_kfold(labels.numpy(), args.folds, seed=args.fold_seed),
              "fixed": [fixed_split(n_train, len(labels) - n_train)]}
    rows = run(images, labels, names, splits, args)
    head = {"commit": git_commit(MEASURED), "command": command,
            "machine": f"{cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}, "
                       f"{torch.get_num_threads()} thread(s)",
            "load": f"{load_start:.2f} / {os.getloadavg()[0]:.2f}",
            "minutes": f"{(time.perf_counter() - started) / 60:.1f}"}
    print(write(rows, args, head))
    return 0


if __name__ == "__main__":
    sys.exit(main())
