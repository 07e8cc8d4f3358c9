"""The missing-band table (issue 24): EuroSAT k-fold linear probe of backbones fed a subset of the bands.

Each ``--backbone NAME=FILE`` is loaded on the subset's bands (``rsmae.load_backbone(bands=...)``):
a fixed-band backbone by today's adaptation (patch kernels kept for the bands given, by name), a
spectral one (``patch_embed: spectral``) by generating the kernels of those bands. Subsets: all 13
bands, the 10 m bands, RGB, a Landsat-OLI-like set, and each band dropped in turn. Every subset is
scored by the frozen linear probe of :mod:`rsmae.evaluation.kfold_probe` on stratified 5-fold CV
over all labelled images (pooling and L2 weight chosen inside the training fold; the fold's band
statistics). Paired on the same images: each backbone's loss against its own all-band score, and
the second backbone minus the first on every subset.

Writes ``missing_bands.md`` and ``missing_bands.csv`` (one row per image, backbone and subset, with
commit, command and machine); probe results are cached per backbone file and subset.

Run::

    .venv/bin/python benchmarks/missing_bands.py --backbone fixed=runs/budget/v_lr4/backbone.safetensors \
        --backbone spectral=runs/budget/spectral_1x/backbone.safetensors
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from budget_curve import load_images
from provenance import git_commit

from rsmae.bands import get_sensor
from rsmae.datasets import EuroSAT
from rsmae.evaluation.folds import Fold, stratified_kfold
from rsmae.evaluation.kfold_probe import ProbeConfig, evaluate_backbone
from rsmae.evaluation.speed import cpu_name
from rsmae.models.registry import sha256_file
from rsmae.stats import bootstrap_interval, paired_bootstrap, verdict

ROOT = Path(__file__).resolve().parents[1]
MEASURED = ("rsmae/evaluation/kfold_probe.py", "rsmae/models", "benchmarks/missing_bands.py")
# one pooling, two L2 weights, 3 inner folds: 17 subsets x backbones stay minutes on 2 cores
CONFIG = ProbeConfig(pools=("mean",), l2=(1e-2, 1e-3), inner_folds=3)
NAMED = {"all 13 bands": EuroSAT.all_bands,
         "10 m (B02 B03 B04 B08)": ("B02", "B03", "B04", "B08"),
         "RGB (B04 B03 B02)": ("B04", "B03", "B02"),
         "Landsat-OLI-like (B01 B02 B03 B04 B8A B11 B12)": ("B01", "B02", "B03", "B04", "B8A", "B11", "B12")}


def subsets() -> dict[str, tuple[str, ...]]:
    """The named subsets, then every band dropped in turn (EuroSAT's band names)."""
    out = dict(NAMED)
    for band in get_sensor(EuroSAT.sensor).names:  # wavelength order (B8A after B08)
        out[f"without {band}"] = tuple(b for b in EuroSAT.all_bands if b != band)
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--backbone", action="append", default=[], metavar="NAME=FILE", required=True,
                        help="a backbone file (repeat; the differences are the later ones minus the first)")
    parser.add_argument("--root", type=Path, default=ROOT.parent / "shared" / "data" / "eurosat_ms_subset")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--fold-seed", type=int, default=0)
    parser.add_argument("--subsets", nargs="+", help="only these subset names (default: all)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cache", type=Path, default=ROOT / "runs" / "budget" / "probe_cache")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--name", default="missing_bands", help="stem of the written files")
    return parser.parse_args(argv)


def probe(path: Path, bands: tuple[str, ...], images: torch.Tensor, labels: torch.Tensor, folds: list[Fold],
          cache: Path) -> np.ndarray:
    """0/1 correctness per image of the linear probe of ``path`` fed ``bands`` only (cached)."""
    config = CONFIG
    key = hashlib.sha256(json.dumps([sha256_file(path), list(bands), asdict(config),
                                     [f.test.tolist() for f in folds]]).encode()).hexdigest()[:20]
    hit = cache / f"bands_{key}.json"
    if hit.is_file():
        return np.array(json.loads(hit.read_text()))
    idx = [EuroSAT.all_bands.index(b) for b in bands]
    correct = np.zeros(len(labels))
    for res in evaluate_backbone(path, images[:, idx], labels, bands, EuroSAT.sensor, folds, config,
                                 protocols=("linear",)):
        correct[res.test] = res.predictions == labels[res.test].numpy()
    cache.mkdir(parents=True, exist_ok=True)
    hit.write_text(json.dumps(correct.tolist()))
    return correct


def _cell(c: np.ndarray) -> str:
    lo, hi = bootstrap_interval(c)
    return f"{100 * c.mean():.1f} [{100 * lo:.1f}, {100 * hi:.1f}]"


def _diff(a: np.ndarray, b: np.ndarray) -> str:
    d = paired_bootstrap(a, b)
    return f"{100 * d.difference:+.1f} [{100 * d.low:+.1f}, {100 * d.high:+.1f}]"


def table(scores: dict[str, dict[str, np.ndarray]], names: list[str]) -> tuple[list[str], list[str]]:
    """Markdown rows (subset x backbone, losses against all bands, differences) and verdicts."""
    first, others = names[0], names[1:]
    head = ["subset", *[f"{n} % [95 % CI]" for n in names], *[f"{n} − all bands" for n in names],
            *[f"{o} − {first}" for o in others]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    sentences = []
    full = "all 13 bands" if "all 13 bands" in scores else None
    for subset, per in scores.items():
        cells = [_cell(per[n]) for n in names]
        cells += ["" if full in (None, subset) else _diff(per[n], scores[full][n]) for n in names]
        cells += [_diff(per[o], per[first]) for o in others]
        lines.append(f"| {subset} | " + " | ".join(cells) + " |")
        if subset in NAMED:
            sentences += [f"- {subset}: " + verdict(o, first, paired_bootstrap(per[o], per[first]))
                          for o in others]
    return lines, sentences


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    given = sys.argv[1:] if argv is None else argv
    command = " ".join([".venv/bin/python", "benchmarks/missing_bands.py", *given])
    load_start, started = os.getloadavg()[0], time.perf_counter()
    images, labels, paths, _ = load_images(args.root, "kfold")
    folds = stratified_kfold(labels.numpy(), args.folds, seed=args.fold_seed)
    backbones = dict(spec.split("=", 1) for spec in args.backbone)
    chosen = {k: v for k, v in subsets().items() if not args.subsets or k in args.subsets}
    scores: dict[str, dict[str, np.ndarray]] = {}
    for subset, bands in chosen.items():
        scores[subset] = {name: probe(Path(p), bands, images, labels, folds, args.cache)
                          for name, p in backbones.items()}
        print(subset, {n: round(100 * c.mean(), 1) for n, c in scores[subset].items()}, flush=True)
    lines, sentences = table(scores, list(backbones))
    commit = git_commit(MEASURED)
    machine = f"{cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}, {args.threads} thread(s)"
    text = "\n".join([
        "# Missing bands: EuroSAT k-fold linear probe on band subsets", "",
        f"- commit: {commit}", f"- command: `{command}`", f"- machine: {machine}",
        f"- load average (1 min) at start / end: {load_start:.2f} / {os.getloadavg()[0]:.2f}; wall time "
        f"{(time.perf_counter() - started) / 60:.1f} min",
        "- backbones: " + ", ".join(f"{n} = `{p}`" for n, p in backbones.items()),
        f"- data: `{args.root}`, all {len(labels)} labelled images, stratified {args.folds}-fold CV "
        f"(fold seed "
        f"{args.fold_seed}); frozen linear probe on the mean patch token, L2 weight among {CONFIG.l2} chosen "
        f"by {CONFIG.inner_folds} inner folds of each training fold, "
        "the training fold's band statistics; each backbone loaded on the subset's bands",
        "- 95 % CI: bootstrap over the images; differences paired on the same images; a difference is "
        "called only when its interval excludes 0", "", *lines, "", *sentences, ""])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.md").write_text(text)
    with (args.out / f"{args.name}.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["backbone", "subset", "image", "path", "label", "correct", "commit", "command",
                         "machine"])
        for subset, per in scores.items():
            for name, c in per.items():
                for i, ok in enumerate(c):
                    writer.writerow([name, subset, i, paths[i], int(labels[i]), int(ok), commit, command,
                                     machine])
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
