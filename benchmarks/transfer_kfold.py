r"""EuroSAT fine-tuning protocols on stratified k-fold (issue 21): tables that can rank inits.

Each ``--init NAME=FILE`` backbone and the random init (``--random``) are fine-tuned under every
protocol of ``--protocols`` (``lastK``, ``mlp``, ``full``) on the training images of each fold of a
stratified k-fold over all labelled EuroSAT images, and predict the fold's test images
(:mod:`rsmae.evaluation.kfold_finetune`: the LR chosen on one inner stratified holdout of the training
fold, then refitted on the whole training fold; mean-pooled patch tokens; every init normalised with
the training fold's band statistics; same epochs, batch and seeds for every init). The spectral and
RCF floors (:mod:`rsmae.evaluation.floors`) are fitted on the same folds, as ``budget_curve.py`` does.

One JSON per (backbone file, protocol, fold) cell is written atomically under ``--cache`` (keyed by the
file's hash, the fold's test images and the recipe): a killed run resumes, adding an init computes only
its cells, and ``--time-limit`` stops computing new cells (the tables then say which folds are missing).
Writes ``<name>.md`` (accuracy with 95 % bootstrap intervals over the images; paired
differences against the random init and the floors, and between every two other inits, with
paired-bootstrap intervals and McNemar's exact p (:mod:`kfold_report`); a verdict per comparison;
the LR chosen per init and fold), ``<name>.csv`` (one row
per image, init, protocol and fold, with commit, command and machine) and ``<name>.png``.

Run::

    .venv/bin/python benchmarks/transfer_kfold.py --random runs/budget/random/backbone.safetensors \
        --init mae_8x=runs/budget/mae_8x/backbone.safetensors --protocols last1,full --name transfer_kfold
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import hashlib
import inspect
import json
import logging
import os
import sys
import time
import warnings
from pathlib import Path

import torch
from floors import load
from kfold_report import FLOORS, RANDOM, RCF, SPECTRAL, Rows, correct_vector, plot, tables  # noqa: F401 (RCF: tests)
from provenance import git_commit

from rsmae.datasets import EuroSAT
from rsmae.evaluation.floors import FloorConfig, floor_predictions
from rsmae.evaluation.folds import Fold, stratified_kfold
from rsmae.evaluation.kfold_finetune import FinetuneConfig, evaluate_fold, tuned_protocol
from rsmae.evaluation.speed import cpu_name
from rsmae.files import atomic_write_json, read_json
from rsmae.models.registry import sha256_file
from rsmae.tasks.finetune import FinetuneTask
from rsmae.tasks.precision import default_precision

ROOT = Path(__file__).resolve().parents[1]
MEASURED = ("rsmae/evaluation/kfold_finetune.py", "rsmae/tasks/finetune.py", "rsmae/evaluation/floors.py",
            "rsmae/evaluation/folds.py", "rsmae/stats.py", "benchmarks/transfer_kfold.py",
            "benchmarks/kfold_report.py")
RECIPE = 1  # bumped when a cell's computation changes in a way its key does not show


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--init", action="append", default=[], metavar="NAME=FILE",
                        help="a backbone file to fine-tune (repeat)")
    parser.add_argument("--random", type=Path, required=True, help="the random-init backbone")
    parser.add_argument("--protocols", default="last1,full", help="comma-separated tuned protocols")
    parser.add_argument("--root", type=Path, default=ROOT.parent / "shared" / "data" / "eurosat_ms_subset",
                        help="folder in the EuroSAT layout holding train/ and test/ (all images are used)")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--fold-seed", type=int, default=0)
    parser.add_argument("--fold-limit", type=int, default=None,
                        help="score only the first N folds (timing); the table then covers their images")
    parser.add_argument("--epochs", type=int, default=FinetuneConfig.epochs)
    parser.add_argument("--batch-size", type=int, default=FinetuneConfig.batch_size)
    parser.add_argument("--lrs", default=",".join(f"{v:g}" for v in FinetuneConfig.lrs),
                        help="LR candidates, the preferred first (it wins ties)")
    parser.add_argument("--holdout", type=float, default=FinetuneConfig.holdout)
    parser.add_argument("--time-limit", type=float, default=None, metavar="MIN",
                        help="compute no new cell after this many minutes (the table says what is missing)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 on a shared machine)")
    parser.add_argument("--cache", type=Path, default=ROOT / "runs" / "transfer_kfold" / "cache")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--name", default="transfer_kfold", help="stem of the written files")
    return parser.parse_args(argv)


def cell_key(path: Path, protocol: str, fold: Fold, config: FinetuneConfig) -> str:
    """Cache key of one cell: the backbone's bytes, the protocol, the fold's test images, the recipe."""
    spec = [sha256_file(path), protocol, fold.test.tolist(), dataclasses.asdict(config), RECIPE]
    return hashlib.sha256(json.dumps(spec, default=str).encode()).hexdigest()[:20]


def cell_file(path: Path, protocol: str, fold: Fold, config: FinetuneConfig, cache: Path) -> Path:
    """Where the cell's rows are cached."""
    return cache / f"{protocol}-{fold.name}-{cell_key(path, protocol, fold, config)}.json"


def cell_rows(path: Path, protocol: str, fold: Fold, images: torch.Tensor, labels: torch.Tensor,
              config: FinetuneConfig, cache: Path) -> tuple[Rows, bool]:
    """One row per test image of the cell (cached as one JSON, written atomically); and whether cached."""
    file = cell_file(path, protocol, fold, config, cache)
    hit = read_json(file)
    if hit is not None:
        return hit, True
    cpu = time.process_time()
    res = evaluate_fold(path, images, labels, fold, protocol, config, bands=EuroSAT.all_bands,
                        sensor=EuroSAT.sensor, num_classes=int(labels.max()) + 1)
    rows = [{"protocol": protocol, "fold": fold.name, "image": i, "prediction": p,
             "correct": int(p == int(labels[i])), "lr": res.lr, "inner_accuracy": list(res.inner_accuracy),
             "seconds": round(res.seconds, 1), "cpu_seconds": round(time.process_time() - cpu, 1)}
            for i, p in zip(res.test.tolist(), res.predictions.tolist(), strict=True)]
    atomic_write_json(file, rows)
    return rows, False


def floor_rows(images: torch.Tensor, labels: torch.Tensor, folds: list[Fold]) -> dict[str, Rows]:
    """The spectral and RCF floors on the same folds (``budget_curve.py``'s), one row per test image."""
    return {name: [{**r, "protocol": method, "lr": None}
                   for r in floor_predictions(method, images, labels, folds)]
            for name, method in FLOORS.items()}


def write_csv(path: Path, results: dict[str, Rows], floors: dict[str, Rows], files: dict[str, str],
              labels: torch.Tensor, names: list[str], head: dict[str, str]) -> None:
    """One row per image, init, protocol and fold (a floor's protocol is its method, e.g. ``rcf``)."""
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["init", "backbone", "protocol", "fold", "image", "path", "label", "prediction",
                         "correct", "lr", "commit", "command", "machine"])
        for init, rows in [*results.items(), *floors.items()]:
            for r in rows:
                writer.writerow([init, files.get(init, ""), r["protocol"], r["fold"], r["image"],
                                 names[r["image"]], int(labels[r["image"]]), r["prediction"], r["correct"],
                                 "" if r["lr"] is None else f"{r['lr']:g}", head["commit"], head["command"],
                                 head["machine"]])


def recipe() -> str:
    """FinetuneTask's default settings, e.g. ``"layer_decay 0.75, weight_decay 0.05, ..."``."""
    params = inspect.signature(FinetuneTask).parameters
    return ", ".join(f"{k} {params[k].default}" for k in ("layer_decay", "weight_decay", "drop_path",
                                                          "label_smoothing", "warmup_fraction", "crop_scale"))


def _quiet() -> None:
    """Lightning's per-fit banners and data-loader hints, a few hundred times, say nothing new."""
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*(does not have many workers|smaller than the logging int)")


def run_cells(files: dict[str, str], protocols: list[str], folds: list[Fold], images: torch.Tensor,
              labels: torch.Tensor, config: FinetuneConfig, cache: Path, stop: float = float("inf")
              ) -> tuple[dict[str, Rows], dict[str, float]]:
    """Every (init, protocol, fold) cell: rows per init; a tally of cells computed, skipped and seconds.

    Protocol by protocol, fold by fold, every init in turn (a run stopped early leaves whole folds);
    after ``stop`` (``time.perf_counter()``) no new cell is computed, cached ones are still read.
    """
    results: dict[str, Rows] = {init: [] for init in files}
    tally = dict.fromkeys(("computed", "skipped", "wall", "cpu"), 0.0)
    for protocol in protocols:
        for fold in folds:
            for init, file in files.items():
                t = time.perf_counter()
                if t > stop and read_json(cell_file(Path(file), protocol, fold, config, cache)) is None:
                    print(f"{init} {protocol} {fold.name}: skipped (time limit)", flush=True)
                    tally["skipped"] += 1
                    continue
                rows, cached = cell_rows(Path(file), protocol, fold, images, labels, config, cache)
                results[init] += rows
                tally["wall"] += rows[0]["seconds"]
                tally["cpu"] += rows[0].get("cpu_seconds", rows[0]["seconds"])  # wall where none was kept
                tally["computed"] += not cached
                print(f"{init} {protocol} {fold.name}: {'cached' if cached else 'computed'}, "
                      f"lr {rows[0]['lr']:g}, {time.perf_counter() - t:.0f} s", flush=True)
    return results, tally


def header(args: argparse.Namespace, head: dict[str, str], config: FinetuneConfig, *, files: dict[str, str],
           scored: int, cells: int, tally: dict[str, float], tested: int, load_start: float,
           wall: float) -> list[str]:
    """The bullet lines above the tables: provenance, budget, recipe, choices and statistics."""
    only = f", only the first {scored} fold(s) scored" if scored < args.folds else ""
    scope = (f"all labelled images (train/ + test/), stratified {args.folds}-fold CV (fold seed "
             f"{args.fold_seed}){only}")
    lrs = ", ".join(f"{v:g}" for v in config.lrs)
    return [
        f"- commit: {head['commit']}", f"- command: `{head['command']}`", f"- machine: {head['machine']}",
        f"- load average (1 min) at start / end: {load_start:.2f} / {os.getloadavg()[0]:.2f} (2 cores "
        f"shared with other jobs); wall time {wall / 60:.1f} min; of {cells} cells {tally['computed']:.0f} "
        f"computed in this run, {tally['skipped']:.0f} skipped (time limit), the others read from the cache",
        f"- budget: {config.epochs} epochs of batch {config.batch_size} (last partial batch dropped) per fit,"
        f" {len(config.lrs) + (len(config.lrs) > 1)} fits per cell: {tally['cpu'] / 60:.1f} min of CPU "
        f"({tally['wall'] / 60:.1f} min wall) summed over the cells done, one thread each",
        f"- data: `{args.root}`, {scope}; {tested} test images, each tested once per protocol",
        "- fine-tuning (`rsmae.evaluation.kfold_finetune`: `FinetuneTask` under a Lightning `Trainer`, "
        f"precision {config.precision or default_precision('cpu')}): mean patch token + LayerNorm + "
        "linear head for every init; AdamW with layer-wise LR decay, warmup then cosine, D4 + multiscale "
        f"crops; FinetuneTask's defaults ({recipe()}); seed {config.seed}",
        f"- LR chosen per fold among {lrs} (ties: the first) on **one** stratified inner holdout "
        f"({100 * config.holdout:.0f} % of the training fold; one split, not inner k-fold, to keep the "
        "cost down), then refitted on the whole training fold; the test fold is never read for a choice",
        "- 95 % CI: percentile bootstrap over the images (10,000 resamples); differences paired on the same "
        "images (paired bootstrap), McNemar's exact p on the discordant images; a difference is called only "
        "when its interval excludes 0; intervals cover test-set sampling, not training noise (one seed)",
        "- normalisation, one rule for every init: each band standardised with the training fold's images; "
        f"floors, a linear classifier on the training fold with L2 by inner {FloorConfig().inner_folds}-fold "
        f"CV, same folds: spectral (per-band mean and std), RCF ({FloorConfig().rcf_filters} whitened "
        f"{FloorConfig().rcf_kernel}x{FloorConfig().rcf_kernel} patches of the training fold, seed 0)",
        "- backbones: " + "; ".join(f"{k} `{v}`" for k, v in files.items()), ""]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    _quiet()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    given = sys.argv[1:] if argv is None else argv
    command = " ".join(["OMP_NUM_THREADS=1", ".venv/bin/python", "benchmarks/transfer_kfold.py", *given])
    load_start, started = os.getloadavg()[0], time.perf_counter()
    protocols = [p.strip() for p in args.protocols.split(",") if p.strip()]
    for p in protocols:
        tuned_protocol(p)  # refuse a frozen or unknown protocol before any fit
    config = FinetuneConfig(lrs=tuple(float(v) for v in args.lrs.split(",")), epochs=args.epochs,
                            batch_size=args.batch_size, holdout=args.holdout)
    images, labels, names, _ = load(args.root)
    folds = stratified_kfold(labels.numpy(), args.folds, seed=args.fold_seed)[: args.fold_limit]
    files = {RANDOM: str(args.random), **dict(s.split("=", 1) for s in args.init)}
    stop = float("inf") if args.time_limit is None else started + 60 * args.time_limit
    results, tally = run_cells(files, protocols, folds, images, labels, config, args.cache, stop)
    floors = floor_rows(images, labels, folds)
    n = len(labels)
    tested = len(correct_vector(floors[SPECTRAL], n))
    head = {"commit": git_commit(MEASURED), "command": command,
            "machine": f"{cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}, "
                       f"{torch.get_num_threads()} thread(s)"}
    lines = header(args, head, config, files=files, scored=len(folds),
                   cells=len(files) * len(protocols) * len(folds), tally=tally, tested=tested,
                   load_start=load_start, wall=time.perf_counter() - started)
    text = "\n".join(["# Transfer on EuroSAT by k-fold: fine-tuning protocols", "", *lines,
                      *tables(results, floors, protocols, n, [f.name for f in folds], config.lrs)])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.md").write_text(text)
    plot(results, floors, protocols, n, [f.name for f in folds], args.out / f"{args.name}.png")
    write_csv(args.out / f"{args.name}.csv", results, floors, files, labels, names, head)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
