"""Print a summary of tile stores: tiles, bands, per-band statistics, scenes, size.

Example:
    rsmae inspect demo_out/eurosat.zarr
"""

from __future__ import annotations

import argparse

from rsmae.cli.common import make_parser, run
from rsmae.store import TileStore


def print_summary(path: str) -> None:
    """Print one store's summary.

    Raises:
        StoreError: ``path`` is not a finished tile store.
    """
    store = TileStore.open(path)
    a = store.attrs
    c = a["config"]
    scenes = int((store.scenes(["id"])["id"] != "").sum())  # a skipped scene's row has no id
    skipped = len(store.skipped()["id"])
    print(f"\n{path}: {a['tiles']} tiles of {len(a['bands'])}x{c['tile_size']}x"
          f"{c['tile_size']} {a['dtype']}, {scenes} scenes"
          f"{f' ({skipped} skipped: rerun tile.py after fixing them)' if skipped else ''}, "
          f"sensor {a['sensor']}, {store.nbytes_stored() / 1e6:.1f} MB")
    if a.get("classes"):
        print(f"  classes: {', '.join(a['classes'])}")
    print(f"  {'band':>5} {'nm':>7} {'gsd':>4} {'mean':>9} {'std':>9} {'p01':>8} {'p99':>8}")
    for band in a["bands"]:
        s = a["stats"][band["name"]]
        print(f"  {band['name']:>5} {band['wavelength_nm']:7.1f} {band['gsd_m'] or 0:4.0f} "
              f"{s['mean']:9.1f} {s['std']:9.1f} {s['p01']:8.1f} {s['p99']:8.1f}")


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """Command-line options."""
    p = make_parser(__doc__, prog)
    p.add_argument("stores", nargs="+", metavar="STORE", help="tile stores (STORE.zarr)")
    return p


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Print each store's summary; return the exit code."""
    args = build_parser(prog).parse_args(argv)

    def inspect() -> int:
        for path in args.stores:
            print_summary(path)
        return 0

    return run(inspect, verbose=args.verbose)
