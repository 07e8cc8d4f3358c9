"""Summarise a pretraining run: loss and probe-accuracy curves, and the files it wrote.

Example:
    rsmae report runs/mae_tiny
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rsmae.cli.common import make_parser, run
from rsmae.errors import InputNotFoundError
from rsmae.tasks.report import find_latest_run, summarise_run


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """Command-line options."""
    p = make_parser(__doc__, prog)
    p.add_argument("run_root", type=Path, help="the run's default_root_dir (e.g. runs/mae_tiny)")
    return p


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Print the summary of the newest run under RUN_ROOT; return the exit code."""
    args = build_parser(prog).parse_args(argv)

    def report() -> int:
        run_dir = find_latest_run(args.run_root)
        if run_dir is None:
            raise InputNotFoundError(f"{args.run_root}: no metrics.csv below it; run rsmae fit "
                                     "(pipelines/pretrain.py) first")
        print(summarise_run(run_dir))
        return 0

    return run(report, verbose=args.verbose)
