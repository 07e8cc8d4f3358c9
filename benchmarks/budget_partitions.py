r"""The budget curve's last snapshots over several fold partitions (issue 21): calls that survive them.

Each ``budget_curve.py`` run scores every labelled EuroSAT image once, under one stratified partition
into folds (``--fold-seed``); its 95 % intervals cover test-set sampling, not the partition, and a call
can move with it (``budget_foldseed1.md``). This script reads the per-image CSVs of runs that differ
only in ``--fold-seed``, keeps each run's last snapshot, and averages every image's correctness over the
partitions before resampling images (:mod:`rsmae.stats` takes ``(partitions, images)`` scores). The
differences against the random init and the floors, and between every two runs (Bonferroni-widened),
are then called only when the interval of the partition-averaged scores excludes 0. No McNemar p is
quoted: averaged scores are not 0/1.

Writes ``<name>.md`` and ``<name>.csv`` (one row per run and protocol, with commit, command, machine and
the input CSVs' commits).

Run::

    .venv/bin/python benchmarks/budget_partitions.py benchmarks/results/budget.csv \
        benchmarks/results/budget_foldseed1.csv benchmarks/results/budget_foldseed2.csv
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np
from kfold_report import FLOORS, RANDOM
from provenance import run_provenance

from rsmae.stats import bootstrap_interval, paired_bootstrap, pairwise_verdicts, verdict

ROOT = Path(__file__).resolve().parents[1]
MEASURED = ("rsmae/stats.py", "benchmarks/budget_partitions.py")
PROTOCOLS = ("linear", "knn")


def last_snapshots(path: Path) -> tuple[dict[tuple[str, str], dict[int, int]], set[str]]:
    """``(run, protocol) -> {image: correct}`` at each run's last step, and the commits the CSV names."""
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows or not {"run", "step", "protocol", "image", "correct"} <= set(rows[0]):
        raise ValueError(f"{path}: not a budget_curve.py CSV (run, step, protocol, image, correct)")
    last: dict[str, int] = {}
    for r in rows:
        last[r["run"]] = max(last.get(r["run"], 0), int(r["step"]))
    out: dict[tuple[str, str], dict[int, int]] = {}
    for r in rows:
        if int(r["step"]) == last[r["run"]]:
            out.setdefault((r["run"], r["protocol"]), {})[int(r["image"])] = int(r["correct"])
    return out, {r["commit"] for r in rows if r.get("commit")}


def stack(parts: list[dict[tuple[str, str], dict[int, int]]]) -> dict[tuple[str, str], np.ndarray]:
    """``(partitions, images)`` correctness of every (run, protocol) all partitions hold, images aligned."""
    keys = [k for k in parts[0] if all(k in p for p in parts)]
    images = sorted(set.intersection(*(set(p[k]) for p in parts for k in keys)))
    return {k: np.array([[p[k][i] for i in images] for p in parts], dtype=float) for k in keys}


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def _diff(a: np.ndarray, b: np.ndarray) -> str:
    d = paired_bootstrap(a, b)
    return f"{100 * d.difference:+.1f} [{100 * d.low:+.1f}, {100 * d.high:+.1f}]"


def tables(scores: dict[tuple[str, str], np.ndarray]) -> tuple[list[str], list[dict[str, str]]]:
    """Markdown (a table and the verdicts per protocol) and the CSV rows."""
    md, rows = [], []
    for p in PROTOCOLS:
        runs = [r for r, q in scores if q == p]
        base = scores.get((RANDOM, p))
        floors = [f for f in FLOORS if (f, p) in scores]
        md += [f"## {p} probe", "", "| run | accuracy % [95 % CI] | − random init | "
               + "".join(f"− {f} | " for f in floors), "|---|---|---|" + "---|" * len(floors)]
        said = []
        for run in runs:
            c = scores[(run, p)]
            lo, hi = bootstrap_interval(c)
            vs = {"random": "" if base is None or run == RANDOM else _diff(c, base)}
            vs |= {f: "" if run == f else _diff(c, scores[(f, p)]) for f in floors}
            cells = " | ".join(vs.values())
            md.append(f"| {run} | {_pct(c.mean())} [{_pct(lo)}, {_pct(hi)}] | {cells} |")
            rows.append({"run": run, "protocol": p, "accuracy": f"{100 * c.mean():.2f}",
                         "low": f"{100 * lo:.2f}", "high": f"{100 * hi:.2f}", "partitions": str(c.shape[0]),
                         "images": str(c.shape[1])})
            if run not in (RANDOM, *floors):
                said += [f"- {p}: " + verdict(run, other, paired_bootstrap(c, scores[(other, p)]))
                         for other in (RANDOM, *floors) if (other, p) in scores]
        pretrained = {r: scores[(r, p)] for r in runs if r not in (RANDOM, *FLOORS)}
        level, pairs = pairwise_verdicts(pretrained, test=None)
        count = f"{len(pairs)} pair" + "s" * (len(pairs) > 1)
        md += ["", *said, "", f"Between the runs ({count}; Bonferroni: each interval at "
               f"{100 * level:.3g} % so that all hold together with 95 %):", "",
               *(f"- {p}: {t}" for t in pairs), ""]
    return md, rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("csvs", nargs="+", type=Path,
                        help="budget_curve.py CSVs differing only in --fold-seed")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--name", default="budget_partitions", help="stem of the written files")
    args = parser.parse_args(argv)
    if len(args.csvs) < 2:
        print("error: give two or more CSVs (one per fold partition)", file=sys.stderr)
        return 2
    try:
        read = [last_snapshots(path) for path in args.csvs]
    except (OSError, ValueError, KeyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    scores = stack([parts for parts, _ in read])
    head = run_provenance("benchmarks/budget_partitions.py", MEASURED, argv)
    md, rows = tables(scores)
    n_images = next(iter(scores.values())).shape[1]
    text = "\n".join([
        "# Budget curve's last snapshots over several fold partitions", "",
        f"- commit: {head['commit']}", f"- command: `{head['command']}`", f"- machine: {head['machine']}",
        "- inputs: " + "; ".join(f"`{p}` (commit {', '.join(sorted(c)) or '?'})"
                                 for p, (_, c) in zip(args.csvs, read, strict=True)),
        f"- {len(args.csvs)} partitions of the same {n_images} images; each image's correctness averaged "
        "over them, then a percentile bootstrap over the images (10,000 resamples): the intervals cover "
        "test-set sampling with the partition averaged out, not training noise (one pretraining per run); a "
        "difference is called only when its paired interval excludes 0", "", *md])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.md").write_text(text)
    with (args.out / f"{args.name}.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=[*rows[0], "commit", "command", "machine"])
        writer.writeheader()
        writer.writerows(r | head for r in rows)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
