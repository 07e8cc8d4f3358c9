"""Summarise a pretraining run: loss and probe-accuracy curves, and the files it wrote.

Example:
    python pipelines/report.py runs/mae_tiny
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rsmae.tasks.report import find_latest_run, summarise_run


def main(argv: list[str] | None = None) -> int:
    """Print the summary of the newest run under RUN_ROOT; return the exit code."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_root", type=Path, help="the run's default_root_dir (e.g. runs/mae_tiny)")
    args = p.parse_args(argv)
    run = find_latest_run(args.run_root)
    if run is None:
        print(f"error: {args.run_root}: no metrics.csv below it; run pipelines/pretrain.py first",
              file=sys.stderr)
        return 2
    print(summarise_run(run))
    return 0


if __name__ == "__main__":
    sys.exit(main())
