"""Loss landscapes and flatness of MAE, RC-MAE, probed and supervised ViTs: surfaces, Hessian, noise, table.

Examples:
    rsmae landscape --config cpu-small    # a shipped config (configs/landscape/cpu-small.yaml), or a path
    rsmae landscape --config cpu-small --out runs/landscape/try --grid 5
    rsmae landscape --config cpu-small --dask tcp://scheduler:8786

Run again after an interruption: finished surface rows, eigenvalues, traces and noise draws are
read from OUT/cache.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging

from rsmae.cli.common import dask_target, make_parser, run
from rsmae.cli.configs import resolve_config
from rsmae.landscape.config import LandscapeConfig
from rsmae.landscape.study import run_study


def _study(args: argparse.Namespace) -> int:
    cfg = LandscapeConfig.from_yaml(resolve_config(args.config, "landscape"))
    if args.out:
        cfg.out = args.out
    if args.grid:
        cfg.grid = dataclasses.replace(cfg.grid, size=args.grid)
    if args.workers:
        cfg.workers = args.workers
    if args.threads:
        cfg.threads = args.threads
    if args.dask:
        cfg.dask = args.dask
    result = run_study(cfg)
    print(result.table.read_text())
    comparisons = [f for f in result.figures if f.name.startswith("comparison_")]
    print("comparison figures:", *(str(f) for f in comparisons), sep="\n  ")
    print(f"table: {result.table} and {result.csv}; every number: {result.out / 'results.json'}")
    return 0


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """Command-line options."""
    p = make_parser(__doc__, prog)
    p.add_argument("--config", required=True,
                   help="YAML study: a path or a shipped name (cpu-small, sweep-cpu-small)")
    p.add_argument("--out", help="output folder (default: the config's out)")
    p.add_argument("--grid", type=int, help="grid points per side (default: the config's grid.size)")
    p.add_argument("--workers", type=int, help="local processes for surface rows (default: the config's)")
    p.add_argument("--dask", nargs="?", const=True, type=dask_target, metavar="ADDRESS|local",
                   help="run on Dask: 'local' (a LocalCluster of --workers processes) or the scheduler "
                        "at ADDRESS (default: the config's dask)")
    p.add_argument("--threads", type=int,
                   help="torch threads; 1 helps tiny models on a busy machine (default: the config's)")
    return p


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Run the study of a config; return the exit code (2 on an rsmae error)."""
    args = build_parser(prog).parse_args(argv)
    return run(lambda: _study(args), verbose=args.verbose, level=logging.INFO)
