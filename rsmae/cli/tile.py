"""Tile multispectral scenes into a sharded Zarr v3 store.

Exit status: 0 done; 2 bad input or options (error: ...; nothing changed); 3 done, but some scenes
were skipped (unreadable, wrong bands, no kept tile: listed, and recorded in the store; rerun after
fixing or removing their files to complete it; --strict fails instead); 130 interrupted (rerun the
same command to finish: finished shards are kept).

Example:
    rsmae tile ../shared/data/bigearthnet_s2_samples --sensor s2-l2a --tile-size 60 --out ben.zarr
    rsmae tile EuroSAT/2750 --band-order eurosat --tile-size 64 --out stores/eurosat.zarr --dask local
"""

from __future__ import annotations

import argparse
import shlex
import sys

from tqdm import tqdm

from rsmae.cli.common import dask_target, make_parser, run
from rsmae.tiling import TileConfig, tile_scenes


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """Command-line options."""
    p = make_parser(__doc__, prog)
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="raster files, folders or globs")
    p.add_argument("--out", required=True, help="store path (STORE.zarr)")
    p.add_argument("--tile-size", type=int, default=128, help="tile side in pixels")
    p.add_argument("--stride", type=int, default=None, help="step between tiles (default: the tile size)")
    p.add_argument("--sensor", default="s2-l1c", help="s2-l1c, s2-l2a, landsat-oli, landsat-tm, rgb")
    p.add_argument("--bands", default=None, help="comma-separated band names to keep (default: all)")
    p.add_argument("--band-order", default=None,
                   help="band order in multi-band files: a layout (eurosat) or comma-separated names")
    p.add_argument("--resolution", type=float, default=None,
                   help="pixel size in metres (default: the finest band's)")
    p.add_argument("--max-nodata", type=float, default=0.1, help="largest nodata fraction of a kept tile")
    p.add_argument("--nodata", type=float, default=0.0,
                   help="value marking nodata when files declare none (all bands equal)")
    p.add_argument("--shard-tiles", type=int, default=64, help="tiles per shard file")
    p.add_argument("--codec", default="lz4", help="lz4 (fast) or zstd (smaller)")
    p.add_argument("--label-from-dir", action="store_true", help="class label = parent folder")
    p.add_argument("--workers", type=int, default=1, help="worker processes (1: this process)")
    p.add_argument("--dask", nargs="?", const=True, default=None, type=dask_target, metavar="ADDRESS|local",
                   help="run on Dask: 'local' (a LocalCluster of --workers processes; also the bare flag) "
                        "or the scheduler at ADDRESS (tcp://HOST:8786)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing store of another configuration")
    p.add_argument("--strict", action="store_true", help="a bad scene fails the run (exit 2)")
    p.add_argument("--mix-product-levels", action="store_true", help="allow S2 L1C with L2A")
    p.add_argument("--allow-vrt-outside", action="store_true",
                   help="accept .vrt inputs that read files outside their folder or URLs")
    p.add_argument("--break-lock", action="store_true", help="take over another host's lock")
    return p


def parse_args(argv: list[str] | None = None, prog: str | None = None) -> argparse.Namespace:
    """Parsed options (``argv`` default: ``sys.argv[1:]``)."""
    return build_parser(prog).parse_args(argv)


def _tile(args: argparse.Namespace, command: str) -> int:
    """Tile, print the summary and the skipped scenes; return the exit code."""
    config = TileConfig(
        tile_size=args.tile_size, stride=args.stride, sensor=args.sensor,
        bands=tuple(args.bands.split(",")) if args.bands else None, band_order=args.band_order,
        resolution=args.resolution, max_nodata=args.max_nodata, nodata=args.nodata,
        shard_tiles=args.shard_tiles, codec=args.codec, label_from_dir=args.label_from_dir,
        mix_product_levels=args.mix_product_levels, strict=args.strict,
        allow_vrt_outside=args.allow_vrt_outside)
    with tqdm(unit="shard", desc="tiling", disable=None) as bar:

        def progress(result: object, total: int) -> None:
            bar.total = total
            bar.update(1)

        s = tile_scenes(args.inputs, args.out, config, workers=args.workers, dask=args.dask,
                        overwrite=args.overwrite, command=command, on_unit=progress,
                        break_lock=args.break_lock)
    print(f"{s.store}: {s.scenes} scenes ({s.new_scenes} new), {s.tiles_kept} tiles kept, "
          f"{s.tiles_dropped} dropped, {s.bytes_written / 1e6:.1f} MB, {s.seconds:.1f} s")
    print(f"{'band':>5} {'mean':>10} {'std':>10} {'p01':>8} {'p99':>8}")
    for band, st in s.stats.items():
        print(f"{band:>5} {st['mean']:10.4g} {st['std']:10.4g} {st['p01']:8.4g} {st['p99']:8.4g}")
    for skip in s.skipped:
        print(f"skipped {skip.scene_id}: {skip.reason}", file=sys.stderr)
    if s.skipped:
        print(f"{len(s.skipped)} scene(s) skipped (recorded in {s.store}); fix or remove their "
              "files and rerun to complete the store", file=sys.stderr)
    return 3 if s.skipped else 0


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """Run the tiler; return the exit code.

    Args:
        argv: Options (default: ``sys.argv[1:]``).
        prog: Command name for the usage line and the command recorded in the store
            (default: ``pipelines/tile.py``).
    """
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv, prog)
    command = shlex.join([*(prog.split() if prog else ["pipelines/tile.py"]), *argv])
    return run(lambda: _tile(args, command), verbose=args.verbose)
