r"""The budget curve (issue 22): the EuroSAT k-fold probe of every pretraining snapshot, floors beside it.

Each ``--run NAME=DIR`` is a pretraining folder (``pipelines/pretrain.py`` with
``configs/bench/pretrain/base.yaml``, whose ``BackboneExport`` writes ``backbones/step<N>.safetensors``
along training and ``backbone.safetensors`` at its end). Every snapshot is probed frozen on all
labelled EuroSAT images by stratified 5-fold CV (:mod:`rsmae.evaluation.kfold_probe`: linear and
k-NN, pooling and settings chosen inside the training fold, one normalisation rule for every init:
the training fold's band statistics), next to the floors on the same folds: the spectral signature and
random convolutional features (:mod:`rsmae.evaluation.floors`) and the random-init ViT (``--random``,
the pretrainings' step 0).
``--evaluation train`` scores on the folders' training split only (5-fold CV inside it): the
split on which recipes are chosen, so the test split stays untouched by the choice.

Writes ``budget.md`` (accuracy with 95 % intervals over the images, paired differences against the
random init and the spectral and RCF floors), ``budget.csv`` (one row per image, snapshot and protocol, with
commit, command and machine) and ``budget.png``. Probe results are cached per snapshot file
(``--cache``), so adding a run re-probes only its new snapshots.

Run::

    .venv/bin/python benchmarks/budget_curve.py --random runs/budget/random/backbone.safetensors \
        --run mae=runs/budget/mae_8x --run rcmae=runs/budget/rcmae_8x
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import inspect
import json
import os
import re
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from floors import load
from kfold_report import FLOORS, RANDOM, RCF, SPECTRAL
from provenance import git_commit

from rsmae.datasets import EuroSAT
from rsmae.errors import StoreError
from rsmae.evaluation.floors import FloorConfig, floor_predictions
from rsmae.evaluation.folds import Fold, fixed_split, stratified_kfold
from rsmae.evaluation.kfold_probe import PROTOCOLS, ProbeConfig, evaluate_backbone
from rsmae.evaluation.speed import count_flops, cpu_name, matmul_peak
from rsmae.models.registry import sha256_file
from rsmae.models.weights import read_backbone_meta
from rsmae.stats import bootstrap_interval, paired_bootstrap, pairwise_verdicts, verdict
from rsmae.store import TileStore
from rsmae.tasks import PretrainTask
from rsmae.tasks.precision import default_precision

ROOT = Path(__file__).resolve().parents[1]
MEASURED = ("rsmae/evaluation/kfold_probe.py", "rsmae/evaluation/floors.py", "rsmae/evaluation/folds.py",
            "rsmae/tasks/probe.py", "rsmae/stats.py", "benchmarks/budget_curve.py")
Rows = list[dict[str, Any]]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--run", action="append", default=[], metavar="NAME=DIR",
                        help="a pretraining folder with backbones/step*.safetensors (repeat)")
    parser.add_argument("--every", type=int, default=1,
                        help="probe only the snapshots whose step is a multiple of this (and the last)")
    parser.add_argument("--random", type=Path, required=True, help="the random-init backbone (step 0)")
    parser.add_argument("--root", type=Path, default=ROOT.parent / "shared" / "data" / "eurosat_ms_subset",
                        help="folder in the EuroSAT layout holding train/ and test/")
    parser.add_argument("--evaluation", choices=["kfold", "train", "fixed"], default="kfold",
                        help="kfold: all labelled images; train: the training split only (recipe choice); "
                        "fixed: the folders' own split (test images untouched by the recipe choice)")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--fold-seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 on a shared machine)")
    parser.add_argument("--train-threads", type=int, default=1,
                        help="threads the pretrainings ran with (OMP_NUM_THREADS): the matmul peak's")
    parser.add_argument("--cache", type=Path, default=ROOT / "runs" / "budget" / "probe_cache")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--name", default="budget", help="stem of the written files")
    return parser.parse_args(argv)


def load_images(root: Path, evaluation: str) -> tuple[torch.Tensor, torch.Tensor, list[str], int]:
    """Images, labels, paths and train count of :func:`floors.load`; only the train split for "train"."""
    images, labels, names, n_train = load(root)
    if evaluation == "train":
        return images[:n_train], labels[:n_train], names[:n_train], n_train
    return images, labels, names, n_train


def snapshots(folder: Path, every: int = 1) -> list[tuple[int, Path]]:
    """``(step, file)`` of a run's snapshots by step: those at multiples of ``every`` and the last one.

    The final ``backbone.safetensors`` counts as the snapshot of its step (from its metadata).

    Raises:
        FileNotFoundError: naming ``folder`` when it holds no backbone.
    """
    found = {int(m.group(1)): p for p in (folder / "backbones").glob("step*.safetensors")
             if (m := re.fullmatch(r"step(\d+)\.safetensors", p.name))}
    final = folder / "backbone.safetensors"
    if final.is_file():
        step = int(re.search(r"global step (\d+)", read_backbone_meta(final).source).group(1))
        found.setdefault(step, final)
    if not found:
        raise FileNotFoundError(f"{folder}: no backbones/step*.safetensors nor backbone.safetensors; "
                                "pretrain with configs/bench/pretrain/base.yaml first")
    last = max(found)
    return sorted((step, p) for step, p in found.items() if step % every == 0 or step == last)


def budget(name: str, folder: Path, step: int) -> str:
    """A sentence on a run's budget at ``step``: samples seen and passes over its corpus (``config.yaml``)."""
    file = folder / "config.yaml"
    config = yaml.safe_load(file.read_text()) if file.is_file() else {}
    data = config.get("data", {})
    batch, stores = data.get("batch_size"), data.get("stores") or []
    if not batch or not stores:
        return f"- {name}: {step} steps (no config.yaml with data.batch_size and data.stores beside it)"
    try:
        tiles = sum(int(TileStore.open(s).attrs["tiles"]) for s in stores)
    except (OSError, KeyError, StoreError):
        return f"- {name}: {step} steps of {batch} = {step * batch:,} samples (corpus {stores} not readable)"
    seen = step * batch
    return (f"- {name}: {step} steps of {batch} = {seen:,} samples, {seen / tiles:.0f} passes "
            f"over its corpus of {tiles:,} tiles; MAE's ImageNet recipe runs 800-1,600 passes over "
            "1.28 M images")


def step_gflop(folder: Path) -> float:
    """FLOP of one training step (forward and backward, batch of ``data.batch_size``) of a run's task."""
    hp = yaml.safe_load((folder / "hparams.yaml").read_text())
    task = PretrainTask(**{k: v for k, v in hp.items() if k in inspect.signature(PretrainTask).parameters})
    batch = yaml.safe_load((folder / "config.yaml").read_text())["data"]["batch_size"]
    x = torch.randn(batch, hp["in_chans"], hp["img_size"], hp["img_size"])
    noise = task.student.make_noise(batch, generator=torch.Generator().manual_seed(0))
    return count_flops(lambda: task.model(x, noise=noise).loss.backward()) / 1e9


def speed(name: str, folder: Path, found: list[tuple[int, Path]], peak: float) -> str:
    """Steps/s from the snapshots' file times, GFLOP/s and MFU against ``peak``.

    The rate is the median over consecutive snapshots: a run stopped and resumed later (a killed run
    continued next day) has one long interval, which the median leaves out and a first-to-last rate
    would spread over the whole run.
    """
    pairs = [(s1 - s0, p1.stat().st_mtime - p0.stat().st_mtime)
             for (s0, p0), (s1, p1) in zip(found, found[1:], strict=False)]
    rates = [steps / seconds for steps, seconds in pairs if steps > 0 and seconds > 0]
    if not rates:
        return f"- {name}: one snapshot only, no speed"
    rate, gflop = float(np.median(rates)), step_gflop(folder)
    wall = sum(seconds for _, seconds in pairs)
    return (f"- {name}: {rate:.2f} steps/s (median over {len(rates)} intervals of steps {found[0][0]}-"
            f"{found[-1][0]}; {wall / 60:.0f} min between first and last snapshot, pauses included), "
            f"{gflop:.1f} GFLOP per step, {rate * gflop:.1f} GFLOP/s = {100 * rate * gflop / peak:.0f} % MFU")


def probe_rows(path: Path, images: torch.Tensor, labels: torch.Tensor, folds: list[Fold], config: ProbeConfig,
               cache: Path) -> list[dict[str, Any]]:
    """One row per image and protocol for the backbone at ``path`` (cached by file hash and settings)."""
    key = hashlib.sha256(json.dumps([sha256_file(path), asdict(config), [f.test.tolist() for f in folds]])
                         .encode()).hexdigest()[:20]
    hit = cache / f"{key}.json"
    if hit.is_file():
        return json.loads(hit.read_text())
    rows = []
    for res in evaluate_backbone(path, images, labels, EuroSAT.all_bands, EuroSAT.sensor, folds, config):
        for i, pred in zip(res.test.tolist(), res.predictions.tolist(), strict=True):
            rows.append({"protocol": res.protocol, "fold": res.fold, "image": i, "prediction": pred,
                         "correct": int(pred == int(labels[i])), "choice": res.choice})
    cache.mkdir(parents=True, exist_ok=True)
    hit.write_text(json.dumps(rows))
    return rows


def floor_rows(method: str, images: torch.Tensor, labels: torch.Tensor, folds: list[Fold]) -> Rows:
    """A floor (``spectral``, ``rcf``) on the same folds, its predictions repeated for each protocol."""
    return [{**r, "protocol": p} for r in floor_predictions(method, images, labels, folds) for p in PROTOCOLS]


def _same(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> bool:
    """Whether two probes predicted every image alike (a run's step 0 and the random init)."""
    def key(r: dict[str, Any]) -> tuple:
        return r["protocol"], r["image"], r["prediction"]
    return sorted(map(key, a)) == sorted(map(key, b))


def correct_vector(rows: list[dict[str, Any]], protocol: str, n: int) -> np.ndarray:
    """0/1 correctness of the tested images (of ``n``), in image order: aligned across runs."""
    out = np.full(n, np.nan)
    for r in rows:
        if r["protocol"] == protocol:
            out[r["image"]] = r["correct"]
    return out[~np.isnan(out)]


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def _diff(a: np.ndarray, b: np.ndarray) -> str:
    d = paired_bootstrap(a, b)
    return f"{100 * d.difference:+.1f} [{100 * d.low:+.1f}, {100 * d.high:+.1f}]"


def tables(results: dict[tuple[str, int], list[dict[str, Any]]], floors: dict[str, list[dict[str, Any]]],
           n: int) -> tuple[list[str], list[str]]:
    """The Markdown table rows and the verdict sentences (each run's last snapshot)."""
    lines = ["| run | step | linear % [95 % CI] | − random | − spectral | − RCF | k-NN % [95 % CI] | "
             "− random | pooling chosen (linear; k-NN) |", "|---|---:|---|---|---|---|---|---|---|"]
    base = {p: correct_vector(floors[RANDOM], p, n) for p in PROTOCOLS}
    low = {name: correct_vector(floors[name], "linear", n) for name in (SPECTRAL, RCF)}
    for name in (RANDOM, SPECTRAL, RCF):
        c = correct_vector(floors[name], "linear", n)
        lo, hi = bootstrap_interval(c)
        knn = correct_vector(floors[name], "knn", n) if name == RANDOM else None
        knn_cell = "-" if knn is None else f"{_pct(knn.mean())} [{_pct(bootstrap_interval(knn)[0])}, " \
                                           f"{_pct(bootstrap_interval(knn)[1])}]"
        lines.append(f"| {name} | 0 | {_pct(c.mean())} [{_pct(lo)}, {_pct(hi)}] | | | | {knn_cell} | | |")
    sentences = []
    last = {run: max(s for r, s in results if r == run) for run, _ in results}
    for (run, step), rows in results.items():
        cells = []
        for p in PROTOCOLS:
            c = correct_vector(rows, p, n)
            lo, hi = bootstrap_interval(c)
            cells.append(f"{_pct(c.mean())} [{_pct(lo)}, {_pct(hi)}] | {_diff(c, base[p])}")
            if p == "linear":
                cells[-1] += "".join(f" | {_diff(c, f)}" for f in low.values())
            if step == last[run]:
                said = f"- {p}, {run} at step {step}: "
                sentences.append(said + verdict(run, RANDOM, paired_bootstrap(c, base[p])))
                if p == "linear":
                    sentences += [said + verdict(run, floor, paired_bootstrap(c, f))
                                  for floor, f in low.items()]
        pools = "; ".join(" ".join(sorted({r["choice"].split()[0] for r in rows if r["protocol"] == p}))
                          for p in PROTOCOLS)
        lines.append(f"| {run} | {step} | {cells[0]} | {cells[1]} | {pools} |")
    for p in PROTOCOLS:
        ends = {run: correct_vector(results[run, step], p, n) for run, step in last.items()}
        level, said = pairwise_verdicts(ends)
        if said:
            count = f"{len(said)} pair" + "s" * (len(said) > 1)
            sentences += ["", f"Between the runs' last snapshots, {p} probe ({count}; Bonferroni: "
                          f"each interval at {100 * level:.3g} % so that all hold together with 95 %):", "",
                          *(f"- {p}: {t}" for t in said)]
    return lines, sentences



def plot(results: dict[tuple[str, int], Rows], floors: dict[str, Rows], n: int, path: Path,
         scored: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, p in zip(axes, PROTOCOLS, strict=True):
        for floor, style in ((RANDOM, "0.45"), (SPECTRAL, "tab:red"), (RCF, "tab:green")):
            if floor != RANDOM and p == "knn":
                continue
            c = correct_vector(floors[floor], p, n)
            lo, hi = bootstrap_interval(c)
            ax.axhspan(100 * lo, 100 * hi, color=style, alpha=0.12)
            ax.axhline(100 * c.mean(), color=style, ls="--", lw=1, label=f"{floor} (95 % CI band)")
        for run in dict.fromkeys(r for r, _ in results):
            steps = sorted({0, *(s for r, s in results if r == run)})  # step 0: the random init
            acc, err = [], []
            for s in steps:
                c = correct_vector(results.get((run, s), floors[RANDOM]), p, n)
                lo, hi = bootstrap_interval(c)
                acc.append(100 * c.mean())
                err.append([100 * (c.mean() - lo), 100 * (hi - c.mean())])
            ax.errorbar(steps, acc, yerr=np.array(err).T, marker="o", capsize=3, label=run)
        ax.set_xlabel("pretraining steps (batch 32)")
        tested = len(correct_vector(floors[RANDOM], p, n))
        ax.set_title(f"{'linear probe' if p == 'linear' else 'k-NN'}: EuroSAT {scored}, {tested} images",
                     fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy (%), 95 % CI over the images")
    handles = dict(zip(*reversed(axes[0].get_legend_handles_labels()), strict=True))
    handles.update(zip(*reversed(axes[1].get_legend_handles_labels()), strict=True))
    axes[1].legend(handles.values(), handles.keys(), loc="center left", bbox_to_anchor=(1.02, 0.5),
                   fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    given = sys.argv[1:] if argv is None else argv
    command = " ".join([".venv/bin/python", "benchmarks/budget_curve.py", *given])
    load_start, started = os.getloadavg()[0], time.perf_counter()
    images, labels, names, n_train = load_images(args.root, args.evaluation)
    if args.evaluation == "fixed":
        folds = [fixed_split(n_train, len(labels) - n_train)]
    else:
        folds = stratified_kfold(labels.numpy(), args.folds, seed=args.fold_seed)
    config = ProbeConfig()
    floors = {RANDOM: probe_rows(args.random, images, labels, folds, config, args.cache),
              **{name: floor_rows(method, images, labels, folds) for name, method in FLOORS.items()}}
    precision = default_precision("cpu")  # what trainer.precision "auto" chose for the runs on this machine
    torch.set_num_threads(args.train_threads)
    peak = matmul_peak(torch.bfloat16 if precision.startswith("bf16") else torch.float32)
    torch.set_num_threads(args.threads)
    results, budgets, speeds = {}, [], []
    for spec in args.run:
        name, _, folder = spec.partition("=")
        every = snapshots(Path(folder))
        found = [(step, p) for step, p in every if step % args.every == 0 or step == every[-1][0]]
        budgets.append(budget(name, Path(folder), found[-1][0]))
        speeds.append(speed(name, Path(folder), every, peak))
        for step, path in found:
            t = time.perf_counter()
            rows = probe_rows(path, images, labels, folds, config, args.cache)
            print(f"{name} step {step}: {time.perf_counter() - t:.0f} s", flush=True)
            if step == 0 and _same(rows, floors[RANDOM]):
                continue  # the run's start is the random init: its row above
            results[(name, step)] = rows
    n = len(labels)
    lines, sentences = tables(results, floors, n)
    head = {"commit": git_commit(MEASURED), "command": command,
            "machine": f"{cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}, "
                       f"{torch.get_num_threads()} thread(s)"}
    scored = {"kfold": f"all labelled images (train/ + test/), stratified {args.folds}-fold CV (fold seed "
                       f"{args.fold_seed})",
              "train": f"the train/ split only, stratified {args.folds}-fold CV (fold seed {args.fold_seed})",
              "fixed": "trained on train/, scored on test/ (the folders' split)"}[args.evaluation]
    text = "\n".join([
        "# Budget curve: EuroSAT probes of the pretraining snapshots", "",
        f"- commit: {head['commit']}", f"- command: `{command}`", f"- machine: {head['machine']}",
        f"- load average (1 min) at start / end: {load_start:.2f} / {os.getloadavg()[0]:.2f}; "
        f"wall time {(time.perf_counter() - started) / 60:.1f} min",
        f"- data: `{args.root}`, {scored}; {len(folds[0].test) if len(folds) == 1 else n} test images, "
        "each tested once",
        f"- frozen probes (`rsmae.evaluation.kfold_probe`): linear (L2 among {config.l2}) and weighted "
        f"cosine k-NN (k among {config.knn_k}); pooling (cls token or mean patch token) and setting chosen "
        f"by inner {config.inner_folds}-fold CV of each training fold; every init normalised with the "
        "training fold's band statistics",
        "- 95 % CI: percentile bootstrap over the images (10,000 resamples); differences paired on the same "
        "images (paired bootstrap); a difference is called only when its interval excludes 0",
        f"- random init: `{args.random}` (a run's step 0 is shown only when it predicts otherwise); "
        "floors, a linear classifier with L2 by inner CV on the same folds: spectral (per-band mean and "
        f"std), RCF ({FloorConfig().rcf_filters} whitened {FloorConfig().rcf_kernel} px patches of the "
        "training fold)",
        "- a run's snapshots before its last are taken mid-schedule (warmup + cosine over its max_steps): "
        "only its last point is an annealed budget; the plot's bars are each row's own interval, the "
        "comparisons are the paired columns", "", *lines, "", *sentences, "",
        "Budgets at the last snapshot:", "", *budgets, "",
        f"Training speed (from the snapshots' file times, on this machine while other jobs shared it; "
        f"{precision}; matmul peak in that precision {peak:.0f} GFLOP/s at {args.train_threads} thread(s), "
        "measured in this run):", "",
        *speeds, ""])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.md").write_text(text)
    plot(results, floors, n, args.out / f"{args.name}.png",
         "fixed split" if args.evaluation == "fixed" else f"{args.folds}-fold CV")
    with (args.out / f"{args.name}.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["run", "step", "protocol", "fold", "image", "path", "label", "prediction", "correct",
                         "choice", "commit", "command", "machine"])
        everything = [((k, 0), v) for k, v in floors.items()] + list(results.items())
        for (run, step), rows in everything:
            for r in rows:
                writer.writerow([run, step, r["protocol"], r["fold"], r["image"], names[r["image"]],
                                 int(labels[r["image"]]), r["prediction"], r["correct"], r["choice"],
                                 head["commit"], command, head["machine"]])
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
