"""Tile multispectral scenes into a sharded Zarr v3 store.

Exit status: 0 done; 2 bad input or options (error: ...; nothing changed); 3 done, but some scenes
were skipped (unreadable, wrong bands, no kept tile: listed, and recorded in the store; rerun after
fixing or removing their files to complete it; --strict fails instead).

Example:
    python pipelines/tile.py ../shared/data/bigearthnet_s2_samples --sensor s2-l2a \
        --tile-size 60 --out stores/bigearthnet.zarr
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys

from tqdm import tqdm

from rsmae.errors import RsmaeError
from rsmae.tiling import TileConfig, tile_scenes


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.split("Example:")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="raster files, folders or globs")
    p.add_argument("--out", required=True, help="store path (STORE.zarr)")
    p.add_argument("--tile-size", type=int, default=128)
    p.add_argument("--stride", type=int, default=None, help="default: the tile size")
    p.add_argument("--sensor", default="s2-l1c", help="s2-l1c, s2-l2a, landsat-oli, landsat-tm, rgb")
    p.add_argument("--bands", default=None, help="comma-separated band names to keep (default all)")
    p.add_argument("--band-order", default=None,
                   help="band order in multi-band files: a layout (eurosat) or comma-separated names")
    p.add_argument("--resolution", type=float, default=None, help="pixel size in metres")
    p.add_argument("--max-nodata", type=float, default=0.1)
    p.add_argument("--nodata", type=float, default=0.0,
                   help="value marking nodata when files declare none (all bands equal)")
    p.add_argument("--shard-tiles", type=int, default=64)
    p.add_argument("--codec", default="lz4", help="lz4 (fast, default) or zstd (smaller)")
    p.add_argument("--label-from-dir", action="store_true", help="class label = parent folder")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--dask", nargs="?", const=True, default=None, metavar="ADDRESS",
                   help="run on Dask: a LocalCluster, or the scheduler at ADDRESS")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--strict", action="store_true", help="a bad scene fails the run (exit 2)")
    p.add_argument("--mix-product-levels", action="store_true", help="allow S2 L1C with L2A")
    p.add_argument("--break-lock", action="store_true", help="take over another host's lock")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the tiler; return the exit code."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    config = TileConfig(
        tile_size=args.tile_size, stride=args.stride, sensor=args.sensor,
        bands=tuple(args.bands.split(",")) if args.bands else None, band_order=args.band_order,
        resolution=args.resolution, max_nodata=args.max_nodata, nodata=args.nodata,
        shard_tiles=args.shard_tiles, codec=args.codec, label_from_dir=args.label_from_dir,
        mix_product_levels=args.mix_product_levels, strict=args.strict)
    bar = tqdm(unit="shard", desc="tiling", disable=None)

    def progress(result: object, total: int) -> None:
        bar.total = total
        bar.update(1)

    command = shlex.join(["pipelines/tile.py", *(argv if argv is not None else sys.argv[1:])])
    try:
        s = tile_scenes(args.inputs, args.out, config, workers=args.workers, dask=args.dask,
                        overwrite=args.overwrite, command=command, on_unit=progress,
                        break_lock=args.break_lock)
    except RsmaeError as err:
        bar.close()
        print(f"error: {err}", file=sys.stderr)
        return 2
    bar.close()
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


if __name__ == "__main__":
    sys.exit(main())
