"""Loss landscapes and flatness of MAE, RC-MAE, probed and supervised ViTs: surfaces, Hessian, noise, table.

Examples:
    python pipelines/landscape.py --config configs/landscape/cpu-small.yaml
    python pipelines/landscape.py --config configs/landscape/cpu-small.yaml --out runs/landscape/try --grid 5
    python pipelines/landscape.py --config configs/landscape/cpu-small.yaml --dask tcp://scheduler:8786

Run again after an interruption: finished surface rows, eigenvalues, traces and noise draws are
read from OUT/cache.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys

from rsmae.errors import RsmaeError
from rsmae.landscape.config import LandscapeConfig
from rsmae.landscape.study import run_study


def main(argv: list[str] | None = None) -> int:
    """Run the study of a config; return the exit code (2 on an rsmae error)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True, help="YAML study (configs/landscape/*.yaml)")
    p.add_argument("--out", help="output folder (overrides the config's out)")
    p.add_argument("--grid", type=int, help="grid points per side (overrides grid.size)")
    p.add_argument("--workers", type=int, help="local processes for surface rows")
    p.add_argument("--dask", help="Dask scheduler address ('local' for a local cluster)")
    p.add_argument("--threads", type=int, help="torch threads (1 helps tiny models on a busy machine)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        cfg = LandscapeConfig.from_yaml(args.config)
        if args.out:
            cfg.out = args.out
        if args.grid:
            cfg.grid = dataclasses.replace(cfg.grid, size=args.grid)
        if args.workers:
            cfg.workers = args.workers
        if args.threads:
            cfg.threads = args.threads
        if args.dask:
            cfg.dask = True if args.dask == "local" else args.dask
        result = run_study(cfg)
    except RsmaeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(result.table.read_text())
    comparisons = [f for f in result.figures if f.name.startswith("comparison_")]
    print("comparison figures:", *(str(f) for f in comparisons), sep="\n  ")
    print(f"table: {result.table} and {result.csv}; every number: {result.out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
