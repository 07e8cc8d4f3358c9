"""Transfer benchmark (issue 10): inits x protocols x label fractions x seeds -> tables and plots.

An entry point over :mod:`rsmae.experiments`: builds the backbones it needs
(:func:`rsmae.experiments.inits.grid_manifest`: stores, pretrainings, manifest), then runs every cell
of the grid (:func:`rsmae.experiments.run_grid`), one result file per cell, so cells run anywhere
(local processes, the Dask cluster the tiler uses, SLURM array tasks) and a killed run resumes where
it stopped. Tables and plots are assembled from whatever cells are done (``transfer_tables.py``).

Examples::

    python benchmarks/transfer.py --config configs/bench/cpu-small.yaml
    python benchmarks/transfer.py --config configs/bench/cpu-small.yaml --workers 2
    python benchmarks/transfer.py --config configs/bench/gpu-full.yaml --dask tcp://scheduler:8786
    # SLURM: sbatch --array=0-$(($(python benchmarks/transfer.py --config C --count) - 1)) ...
    python benchmarks/transfer.py --config C --cell-index $SLURM_ARRAY_TASK_ID
    python benchmarks/transfer.py --config C --tables-only
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

from transfer_tables import write_tables

from rsmae.experiments import grid_manifest, load_config, plan_cells, run_grid
from rsmae.experiments.config import ROOT, log_to_stdout
from rsmae.experiments.inits import MissingInitsError


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options (``--results`` is a deprecated spelling of ``--out``)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/bench/cpu-small.yaml")
    p.add_argument("--workers", type=int, default=None, help="local processes (default: the config's)")
    p.add_argument("--dask", default=None, metavar="ADDRESS", help="run the cells on a Dask scheduler")
    p.add_argument("--cell-index", type=int, default=None, help="run only this cell (SLURM arrays)")
    p.add_argument("--count", action="store_true", help="print the number of cells and exit")
    p.add_argument("--tables-only", action="store_true", help="assemble tables from finished cells")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="folder of the tables")
    p.add_argument("--results", default=None, help="deprecated: use --out")
    args = p.parse_args(argv)
    if args.results is not None:
        warnings.warn("--results is deprecated; use --out", FutureWarning, stacklevel=2)
        args.out = args.results
    return args


def main(argv: list[str] | None = None, writer: Callable[..., list[Path]] = write_tables) -> int:
    """Build backbones, run the grid, write the tables (with ``writer``); return the exit code."""
    args = parse_args(argv)
    config = load_config(args.config)
    if args.workers:  # the tables say how many workers ran the cells
        config = dataclasses.replace(config, workers=args.workers)
    if args.count:
        print(len(plan_cells(config)))
        return 0
    log_to_stdout()
    start = time.perf_counter()
    try:
        manifest = grid_manifest(config, build=not args.tables_only)
    except MissingInitsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    cells = plan_cells(config)
    if args.cell_index is not None:
        cells = [cells[args.cell_index]]
    if not args.tables_only:
        run_grid(config, cells, manifest, workers=config.workers,
                 dask=args.dask, log=print)
    if args.cell_index is None:
        paths = writer(config, plan_cells(config), manifest, Path(args.out),
                       elapsed=0.0 if args.tables_only else time.perf_counter() - start)
        print("\n".join(f"wrote {p}" for p in paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
