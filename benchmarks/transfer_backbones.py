"""Build the backbones of the transfer benchmark (issue 10): corpora, pretrainings, manifest.

The entry point of :func:`rsmae.experiments.backbones.build_backbones`, and its table.

The inits, the Sentinel-2 corpus (``saclay_w`` left out: it lies on evaluation images), the leak
check and the resume rules are described once, in :mod:`rsmae.experiments.backbones`.
Writes ``OUT/backbones.json``: ``{init: {path, sha256, steps, corpus, images, scenes, ...}}``.

Example (N = 1500: 5 pretrainings, 52 minutes measured with --threads 1 on a busy shared 2-core CPU;
an idle one should need about 3-5 minutes per pretraining with the default threads)::

    python benchmarks/transfer_backbones.py --out runs/transfer --steps 1500
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from pathlib import Path
from typing import Any

import torch
from provenance import git_commit

from rsmae.errors import RsmaeError
from rsmae.evaluation.speed import cpu_name
from rsmae.experiments.backbones import build_backbones
from rsmae.experiments.config import DATA, log_to_stdout
from rsmae.experiments.inits import manifest_table, summary_rows

MEASURED = ("rsmae/experiments", "rsmae/tasks", "rsmae/models", "rsmae/data", "rsmae/store", "rsmae/tiling",
            "rsmae/datasets", "configs/bench/pretrain", "benchmarks/transfer_backbones.py")


def write_results(manifest: dict[str, dict[str, Any]], folder: Path, command: str) -> Path:
    """``transfer_backbones.md`` and ``.csv`` in ``folder``: commit, command, machine, the table.

    Every CSV row (one per init) carries the commit, command and machine too.
    """
    folder.mkdir(parents=True, exist_ok=True)
    threads = sorted({str(s.get("threads") or "torch default") for e in manifest.values()
                      for s in e.get("stages", [])})
    head = {"commit": git_commit(MEASURED), "command": command,
            "machine": f"{cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}; pretraining "
                       f"threads: {', '.join(threads)}; load average now {os.getloadavg()[0]:.1f}"}
    rows = [{**row, **head} for row in summary_rows(manifest)]
    with open(folder / "transfer_backbones.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    path = folder / "transfer_backbones.md"
    path.write_text(f"# Transfer-benchmark backbones\n\n- commit: {head['commit']}\n- command: `{command}`\n"
                    f"- machine: {head['machine']}\n\n{manifest_table(manifest)}\n\n"
                    "kNN / linear: EuroSAT probe (216 train / 54 test) of the initial and final weights of "
                    "the last stage (probe.json); minutes: wall time of the pretraining subprocesses.\n")
    return path


def main(argv: list[str] | None = None) -> int:
    """Command line; exit code 2 on an rsmae error (a leak, a failed subprocess)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("runs/transfer"))
    p.add_argument("--steps", type=int, default=1500, help="N: pretraining steps of every init")
    p.add_argument("--data", type=Path, default=DATA, help="the shared data folder")
    p.add_argument("--workers", type=int, default=2, help="tiling processes")
    p.add_argument("--threads", type=int, default=None,
                   help="OMP_NUM_THREADS of the pretrainings (1 on a busy shared machine)")
    p.add_argument("--results", type=Path, default=None, help="also write transfer_backbones.md there")
    args = p.parse_args(argv)
    if args.steps < 2:
        print(f"error: --steps {args.steps}: need at least 2 (N/2 + N/2 for the continued init)",
              file=sys.stderr)
        return 2
    log_to_stdout()
    try:
        manifest = build_backbones(args.out, args.steps, args.data, args.workers, args.threads)
    except RsmaeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(manifest_table(manifest))
    if args.results:
        given = argv if argv is not None else sys.argv[1:]
        command = " ".join(["python benchmarks/transfer_backbones.py", *given])
        print(f"wrote {write_results(manifest, args.results, command)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
