"""Any-sensor vs per-sensor backbones (issue 24): does one spectral MAE match one backbone per sensor?

Four spectral ViT-Tiny/8 MAE backbones of the bench recipe at equal budget (1,500 steps of batch 32):
``--s2`` pretrained on the Sentinel-2 L1C store only, ``--landsat`` on the Landsat-8 OLI store only,
``--mixed`` one run over both stores (``data.mix`` 1:1: half of its batches from each store) and
``--mixed4`` one run over four stores (S2 L1C, Landsat OLI, Landsat TM of the change data's training
city Nanjing only, Tiny-ImageNet RGB; ``data.mix`` 1:1:1:1). Each is scored on each sensor's data,
paired on the same units (``mixed`` against every other backbone, ``mixed4`` against the evaluation's
per-sensor backbone and against ``mixed``):

- EuroSAT (Sentinel-2): the stratified 5-fold frozen linear probe of ``missing_bands.py`` (its
  ``probe``: same folds, probe settings, per-image 0/1) on all 13 bands and on the Landsat-OLI-like
  subset; 95 % CI by bootstrap over the 270 images, differences paired on the images.
- Landsat change detection (TM bands B1-B5, B7; train Nanjing, test Taizhou): the frozen protocol of
  ``configs/bench/cd-cpu-small.yaml`` (its ``change`` settings and seeds), each backbone loaded on the
  TM bands by wavelength. F1 of the change class pooled over the test scene at the validation
  threshold, mean over seeds; 95 % CI by bootstrap over seeds and 64-px test tiles (each draw
  resamples seeds and tiles and pools the tiles' TP / FP / FN per seed); differences paired on the
  same draws.
- LEVIR-CD samples (RGB, 0.5 m; train on the ``train_*`` pairs, test on the labelled ``test_*`` pairs
  of the dataset card): the same frozen protocol, settings, seeds, scores and bootstrap, the spectral
  backbones loaded on R G B by wavelength. RGB has no store of its own, so its per-sensor backbone is
  the natural-image MAE at equal budget (``--natural``: the conv-patch ViT-Tiny/8 MAE of 1,500 steps
  of batch 32 on Tiny-ImageNet), scored on LEVIR only.

The matched per-sensor backbone of an evaluation is the one pretrained on that sensor (S2 only for
EuroSAT, Landsat only for Landsat CD, the natural-image MAE for LEVIR-CD; ``MATCHED``). Probes and
change cells are cached under ``--cache`` (keyed by the backbone file's hash and the settings): a
rerun only assembles the table. Writes ``any_sensor.md`` and ``any_sensor.csv`` (one row per
backbone and evaluation).

Run::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/any_sensor.py
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import datetime
import logging
import os
import shlex
import sys
from pathlib import Path

import numpy as np
import torch
import yaml
from any_sensor_change import TILE, change_counts, f1
from budget_curve import load_images
from missing_bands import CONFIG, NAMED, probe
from provenance import git_commit

from rsmae.evaluation.change_config import change_dataset
from rsmae.evaluation.folds import stratified_kfold
from rsmae.evaluation.speed import cpu_name
from rsmae.stats import PairedDifference, bootstrap_interval, paired_bootstrap, verdict

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
MEASURED = ("rsmae/evaluation", "rsmae/models", "benchmarks/any_sensor.py", "benchmarks/any_sensor_change.py",
            "benchmarks/missing_bands.py")
ROLES = {"s2": "S2 only", "landsat": "Landsat only", "natural": "natural-image MAE (Tiny-ImageNet)",
         "mixed": "mixed S2 + Landsat (1:1)", "mixed4": "mixed S2 + OLI + TM + RGB (1:1:1:1)"}
SPECTRAL = ("s2", "landsat", "mixed", "mixed4")  # the spectral backbones: scored on every evaluation
MATCHED = {"s2": "s2", "landsat": "landsat", "rgb": "natural"}  # data's sensor -> per-sensor backbone
EUROSAT = {"EuroSAT, all 13 bands": "all 13 bands",
           "EuroSAT, Landsat-OLI-like (B01 B02 B03 B04 B8A B11 B12)":
               "Landsat-OLI-like (B01 B02 B03 B04 B8A B11 B12)"}
CHANGE = "Landsat CD, TM B1-B5 B7, frozen (F1 of change)"
LEVIR = "LEVIR-CD samples, RGB 0.5 m, frozen (F1 of change)"


@dataclasses.dataclass(frozen=True)
class Row:
    """One backbone on one evaluation: score, interval, ``mixed - this`` and ``mixed4 - this`` (paired)."""

    evaluation: str
    sensor: str  # the data's sensor, a key of MATCHED
    backbone: str  # a key of ROLES
    score: float
    low: float
    high: float
    units: str
    diff: PairedDifference | None  # mixed minus this backbone; None on the mixed and mixed4 rows
    diff4: PairedDifference | None = None  # mixed4 minus this: on the per-sensor and the mixed rows

    @property
    def per_sensor(self) -> bool:
        """Whether this is the backbone pretrained on the evaluation's sensor."""
        return MATCHED[self.sensor] == self.backbone


def _pairs4(role: str, sensor: str, scored: dict) -> bool:
    """Whether ``mixed4`` is scored and paired against ``role`` (``sensor``'s per-sensor or the mixed)."""
    return "mixed4" in scored and role in (MATCHED[sensor], "mixed")


def eurosat_rows(evaluation: str, correct: dict[str, np.ndarray]) -> list[Row]:
    """Rows of one EuroSAT evaluation from per-image 0/1 correctness per backbone (same images)."""
    rows = []
    for role, c in correct.items():
        low, high = bootstrap_interval(c)
        diff = None if role in ("mixed", "mixed4") else paired_bootstrap(correct["mixed"], c)
        diff4 = paired_bootstrap(correct["mixed4"], c) if _pairs4(role, "s2", correct) else None
        rows.append(Row(evaluation, "s2", role, float(c.mean()), low, high, "images", diff, diff4))
    return rows


def change_rows(evaluation: str, counts: dict[str, np.ndarray], *, sensor: str = "landsat",
                resamples: int = 10_000, rng: int = 0) -> list[Row]:
    """Rows of one change evaluation on ``sensor``'s data from TP / FP / FN ``(seeds, tiles, 3)`` counts.

    The score is the mean over seeds of the F1 pooled over the test tiles. Every bootstrap draw
    resamples seeds and tiles with replacement, the same draw for every backbone (paired).
    """
    seeds, tiles = next(iter(counts.values())).shape[:2]
    gen = np.random.default_rng(rng)
    weights = gen.multinomial(tiles, np.full(tiles, 1 / tiles), size=resamples)  # (draws, tiles)
    picks = gen.integers(0, seeds, size=(resamples, seeds))  # (draws, seeds)
    draws, score = {}, {}
    for role, c in counts.items():
        per_seed = f1(np.einsum("dt,stk->dsk", weights, c))  # (draws, seeds)
        draws[role] = np.take_along_axis(per_seed, picks, axis=1).mean(axis=1)
        score[role] = float(f1(c.sum(axis=1)).mean())
    units = f"test tiles x {seeds} seeds"

    def paired(a: str, b: str) -> PairedDifference:
        low, high = np.percentile(draws[a] - draws[b], [2.5, 97.5])
        return PairedDifference(score[a] - score[b], float(low), float(high), tiles, 0.95, resamples)

    rows = []
    for role in counts:
        low, high = np.percentile(draws[role], [2.5, 97.5])
        diff = None if role in ("mixed", "mixed4") else paired("mixed", role)
        diff4 = paired("mixed4", role) if _pairs4(role, sensor, counts) else None
        rows.append(Row(evaluation, sensor, role, score[role], float(low), float(high), units, diff, diff4))
    return rows


def _ci(value: float, low: float, high: float, sign: str = "") -> str:
    return f"{100 * value:{sign}.1f} [{100 * low:{sign}.1f}, {100 * high:{sign}.1f}]"


def table(rows: list[Row]) -> tuple[list[str], list[str]]:
    """Markdown table lines and one verdict per paired difference (mixed − it, then mixed4 − it)."""
    lines = ["| evaluation | backbone | score % [95 % CI] | mixed − this backbone [paired 95 % CI] "
             "| 4-store mixed − this backbone [paired 95 % CI] |", "|---|---|---|---|---|"]
    sentences = []
    for r in rows:
        name = ROLES[r.backbone] + (" (per-sensor)" if r.per_sensor else "")
        diffs = ["" if d is None else _ci(d.difference, d.low, d.high, "+") for d in (r.diff, r.diff4)]
        lines.append(f"| {r.evaluation} | {name} | {_ci(r.score, r.low, r.high)} | {' | '.join(diffs)} |")
        if r.diff is not None:
            tag = "the per-sensor backbone" if r.per_sensor else "another sensor's backbone"
            sentences.append(f"- {r.evaluation}, against {tag}: "
                             + verdict(ROLES["mixed"], ROLES[r.backbone], r.diff, units=r.units))
        if r.diff4 is not None:
            tag = "the per-sensor backbone" if r.per_sensor else "the 2-store mixed backbone"
            sentences.append(f"- {r.evaluation}, 4-store mixed against {tag}: "
                             + verdict(ROLES["mixed4"], ROLES[r.backbone], r.diff4, units=r.units))
    return lines, sentences


def write_csv(path: Path, rows: list[Row], files: dict[str, str], provenance: dict[str, str]) -> None:
    """One line per backbone and evaluation, with the paired difference and the provenance."""
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["evaluation", "data_sensor", "backbone", "backbone_file", "per_sensor", "score",
                         "low", "high", "mixed_minus_this", "diff_low", "diff_high", "units", "verdict",
                         "mixed4_minus_this", "diff4_low", "diff4_high", "verdict4", *provenance])
        for r in rows:
            paired = []
            for d, who in ((r.diff, "mixed"), (r.diff4, "mixed4")):
                said = "" if d is None else verdict(ROLES[who], ROLES[r.backbone], d, units=r.units)
                diff = ["", "", ""] if d is None else [f"{d.difference:.4f}", f"{d.low:.4f}", f"{d.high:.4f}"]
                paired.append((diff, said))
            (diff, said), (diff4, said4) = paired
            writer.writerow([r.evaluation, r.sensor, ROLES[r.backbone], files.get(r.backbone, ""),
                             int(r.per_sensor), f"{r.score:.4f}", f"{r.low:.4f}", f"{r.high:.4f}",
                             *diff, r.units, said, *diff4, said4, *provenance.values()])


def pretrain_speed(backbone: Path) -> str:
    """Steps/s of the run that wrote ``backbone`` over its second half: its snapshots' file times.

    ``backbones/step<N>.safetensors`` of the middle and last exported steps (``BackboneExport``); a
    resumed run's config.yaml is rewritten, so the run's start is not used.
    """
    found = sorted((int(p.stem[4:]), p) for p in (backbone.parent / "backbones").glob("step*.safetensors"))
    if len(found) < 3:
        return "speed unknown (fewer than 3 snapshots in backbones/)"
    (mid, a), (last, b) = found[-2], found[-1]
    seconds = b.stat().st_mtime - a.stat().st_mtime
    return f"{(last - mid) / seconds:.2f} steps/s over steps {mid}-{last} (snapshot file times)"


def _rel(path: Path) -> str:
    """``path`` relative to the checkout when it lies inside it."""
    path = path.resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    runs = ROOT / "runs"
    parser.add_argument("--s2", type=Path, default=runs / "budget/spectral_1x/backbone.safetensors")
    parser.add_argument("--landsat", type=Path, default=runs / "anysensor/landsat_1x/backbone.safetensors")
    parser.add_argument("--mixed", type=Path, default=runs / "anysensor/mixed_1x/backbone.safetensors")
    parser.add_argument("--mixed4", type=Path, default=runs / "anysensor/mixed4_1x/backbone.safetensors",
                        help="one spectral MAE over S2, Landsat OLI, Landsat TM (Nanjing) and RGB stores")
    parser.add_argument("--natural", type=Path, default=runs / "budget/natural_1x/backbone.safetensors",
                        help="the per-sensor backbone of RGB (LEVIR-CD): natural-image MAE at equal budget")
    parser.add_argument("--eurosat", type=Path, default=DATA / "eurosat_ms_subset")
    parser.add_argument("--landsat-cd", type=Path, default=DATA / "landsat_cd_taizhou_nanjing")
    parser.add_argument("--levircd", type=Path, default=DATA / "levircd_samples")
    parser.add_argument("--change-config", type=Path, default=ROOT / "configs/bench/cd-cpu-small.yaml")
    parser.add_argument("--skip-change", action="store_true", help="EuroSAT rows only")
    parser.add_argument("--skip-levir", action="store_true", help="no LEVIR-CD rows")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--note", action="append", default=[], help="a line for the table's header")
    parser.add_argument("--cache", type=Path, default=ROOT / "runs" / "anysensor" / "cache")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    return parser.parse_args(argv)


def backbone_files(args: argparse.Namespace) -> dict[str, Path]:
    """The backbones by role; the natural-image MAE only when LEVIR-CD is scored (its only evaluation)."""
    levir = not (args.skip_change or args.skip_levir)
    return {"s2": args.s2, "landsat": args.landsat, **({"natural": args.natural} if levir else {}),
            "mixed": args.mixed, "mixed4": args.mixed4}


def change_evaluations(args: argparse.Namespace, files: dict[str, Path]) -> list[tuple]:
    """``(name, dataset, data sensor, root, backbones)`` of each change evaluation to run."""
    if args.skip_change:
        return []
    spectral = {r: files[r] for r in SPECTRAL}
    levir = [(LEVIR, "levircd", "rgb", args.levircd, files)] if "natural" in files else []
    return [(CHANGE, "landsat", "landsat", args.landsat_cd, spectral), *levir]


def measure(args: argparse.Namespace, files: dict[str, Path]) -> list[Row]:
    """Every evaluation of every backbone (from the cache where it holds them)."""
    images, labels, _, _ = load_images(args.eurosat, "kfold")
    folds = stratified_kfold(labels.numpy(), 5, seed=0)
    rows = []
    for evaluation, subset in EUROSAT.items():
        correct = {role: probe(files[role], NAMED[subset], images, labels, folds, args.cache)
                   for role in SPECTRAL}
        rows += eurosat_rows(evaluation, correct)
        logging.info("%s: %s", evaluation, {r: round(100 * c.mean(), 1) for r, c in correct.items()})
    grid = yaml.safe_load(args.change_config.read_text())
    settings = {**grid["change"], "threads": args.threads}
    for evaluation, dataset, sensor, root, backbones in change_evaluations(args, files):
        counts = {role: np.stack([change_counts(path, seed, settings, root, args.cache, dataset=dataset)
                                  for seed in grid["seeds"]]) for role, path in backbones.items()}
        rows += change_rows(evaluation, counts, sensor=sensor)
        logging.info("%s: %s", evaluation, {r: round(100 * float(f1(c.sum(axis=1)).mean()), 1)
                                            for r, c in counts.items()})
    return rows


def levir_header(args: argparse.Namespace) -> str:
    """The LEVIR-CD protocol line of the table's header: its pairs by split and the RGB backbone."""
    pairs = {split: change_dataset("levircd")(args.levircd, split).scenes for split in ("train", "test")}
    natural = yaml.safe_load((args.natural.parent / "config.yaml").read_text())
    return (f"- {LEVIR}: `{_rel(args.change_config)}` change settings and seeds, train on the "
            f"{len(pairs['train'])} `train_*` pairs of `{_rel(args.levircd)}`, test on its "
            f"{len(pairs['test'])} labelled `test_*` pairs (dataset card; whole 256-px pairs, sliding "
            "windows), spectral backbones loaded on R G B by wavelength; per-sensor backbone for RGB: the "
            f"natural-image MAE ({natural['model']['patch_embed']} patch embedding, "
            f"{natural['trainer']['max_steps']:,} steps of batch {natural['data']['batch_size']} on "
            f"`{'`, `'.join(natural['data']['stores'])}`); 95 % CI by bootstrap over seeds and {TILE}-px "
            "test tiles, differences paired on the same draws")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)
    given = sys.argv[1:] if argv is None else argv
    files = backbone_files(args)
    rows = measure(args, files)
    command = "OMP_NUM_THREADS=1 .venv/bin/python benchmarks/any_sensor.py " + shlex.join(given)
    provenance = {"commit": git_commit(MEASURED), "command": command.strip(),
                  "machine": f"{cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}, "
                             f"{args.threads} thread(s)",
                  "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")}
    lines, sentences = table(rows)
    text = "\n".join([
        "# Any sensor: one spectral MAE over several sensors' stores vs one per sensor, equal budget", "",
        *[f"- {k}: {v if k != 'command' else f'`{v}`'}" for k, v in provenance.items()],
        *[f"- {ROLES[r]}: `{_rel(p)}`; pretraining {pretrain_speed(p)}" for r, p in files.items()],
        "- EuroSAT: all 270 labelled images, stratified 5-fold CV (fold seed 0), frozen linear probe on the "
        f"mean patch token (L2 among {CONFIG.l2} by {CONFIG.inner_folds} inner folds), each backbone "
        "loaded on the subset's bands; 95 % CI by bootstrap over images, differences paired on images",
        *([] if args.skip_change else [
            f"- {CHANGE}: `{_rel(args.change_config)}` change settings and seeds, train Nanjing, test "
            "Taizhou (whole scene, sliding windows, each backbone loaded on the TM bands by wavelength); "
            f"95 % CI by bootstrap over seeds and {TILE}-px test tiles, differences paired on the same "
            "draws"]),
        *([levir_header(args)] if "natural" in files else []),
        *[f"- {n}" for n in args.note],
        "- a difference is called only when its interval excludes 0", "", *lines, "", *sentences, ""])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "any_sensor.md").write_text(text)
    write_csv(args.out / "any_sensor.csv", rows, {r: _rel(p) for r, p in files.items()}, provenance)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
