"""Loader benchmark: tiling vs plain rasterio reads, and ``ShardDataset`` vs torchgeo loading.

Run from the repository root (``make bench`` runs the defaults)::

    .venv/bin/python benchmarks/bench_loader.py
    .venv/bin/python benchmarks/bench_loader.py --workers 2 --repeats 3 --samples 20000 \
        --out benchmarks/results --profile

One run measures, on the same real scenes (the Landsat 8 crop in ``<data>/landsat8_scene`` and the
seven OSCD Sentinel-2 L1C scenes ``<data>/oscd_subset/.../<city>/imgs_1``):

Scene sets (``--sets``): ``rgb8``, the Landsat crop as an 8-bit RGB GeoTIFF (B4, B3, B2 stretched
to uint8, written to a temporary folder) in 64 px tiles; ``landsat8``, the crop itself (uint16) in
128 px tiles; ``oscd``, 13 bands uint16 in 128 px tiles; ``oscd64``, the same in 64 px tiles.

1. Tiling: ``tile_scenes`` into a fresh temporary store with ``--workers`` processes and with 1,
   against reading the same pixels with rasterio (every band, the rows of full tiles, windowed
   strip reads at each file's native resolution) with the same parallelism: a spawn process pool
   of ``--workers`` processes reading disjoint row blocks (pool start-up included, as it is in
   ``tile_scenes``), or in this process for 1. Source files are read once beforehand so that both
   sides see a warm page cache. Target: tiling / read <= 1.5.
2. Loading: ``ShardDataset`` + ``ShardSampler`` + ``DataLoader(batch_size=32, num_workers=W)``
   against torchgeo's ``RasterDataset`` + ``RandomGeoSampler(size=tile, units=Units.PIXELS)`` +
   ``DataLoader(batch_size=32, num_workers=W, collate_fn=stack_samples)`` in samples/s. Each
   loader kind runs in its own child process (the two take turns); dataset, sampler, DataLoader
   and workers are new for every measurement. The first batch (worker start-up, file opening) is
   excluded and the timed part lasts ``--seconds`` or ``--samples`` samples, whichever comes
   first. The samplers chain epochs so that no epoch boundary drains the pipeline. Target: >= 20x.
   rsmae is measured twice: float32 samples from the workers (``ShardDataset()``), and uint16
   samples from the workers normalised to float32 by the consumer, timed (``native=True``, what
   training does: the normalisation then runs on the GPU), the consumer with
   ``--consumer-threads`` torch threads (default 1: with 2 workers on 2 cores, more threads in the
   consumer only contend with them; torch's default of one thread per core made the consumer's
   normalisation 15x slower on the 2-core test machine).
3. MB/s of delivered ``image`` tensors (float32 for both loaders) and memory: the sum of the peak
   RSS (``VmHWM``) of the main process and of each DataLoader worker, and the PSS of the same
   processes at the end of the timed part (PSS splits pages shared between the forked workers).

Every measurement is repeated ``--repeats`` times, interleaved, and the median is reported (ratios
are the median of per-repeat ratios). The Markdown table is printed and written with a CSV to
``--out`` (``loader.md``, ``loader.csv``). ``--profile`` adds a cProfile breakdown of tiling and a
per-sample cost breakdown of the loader, with the DataLoader transport ceiling on this machine.
"""


# Only light imports at module level: tiling pools use the spawn start method, so every pool
# process re-imports this module (and the modules below); torch and torchgeo are imported where
# they are used. The parts of the benchmark live beside this script, in benchmarks/:
#   loader_common.py      constants and the scene sets
#   loader_tiling.py      1. tiling vs rasterio reads
#   loader_throughput.py  2-3. loader throughput and memory, in child processes (``--_child``)
#   loader_profile.py     ``--profile`` breakdowns
#   loader_report.py      environment, Markdown and CSV report
import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from loader_common import BATCH, REPO, SET_NAMES, scene_sets
from loader_profile import profile_codecs, profile_loader_child, profile_tiling
from loader_report import code_snapshot, environment, markdown, write_csv
from loader_throughput import Child, bench_loaders, loader_child, serve
from loader_tiling import bench_tiling


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workers", type=int, default=2, help="tiling processes and DataLoader workers")
    p.add_argument("--repeats", type=int, default=3, help="repeats of every measurement (median)")
    p.add_argument("--samples", type=int, default=20000,
                   help="stop a loader's timed part after this many samples (or --seconds)")
    p.add_argument("--seconds", type=float, default=5.0, help="timed part of each loader run")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"), help="results folder")
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data",
                   help="folder holding landsat8_scene/ and oscd_subset/")
    p.add_argument("--consumer-threads", type=int, default=1,
                   help="torch threads of the main process (the consumer normalises native batches): "
                        "1 leaves the cores to the DataLoader workers")
    p.add_argument("--sets", default="rgb8,landsat8,oscd",
                   help=f"comma-separated scene sets, of {', '.join(SET_NAMES)}")
    p.add_argument("--profile", action="store_true",
                   help="add a cProfile breakdown of tiling and of the loader's per-sample costs")
    p.add_argument("--_child", default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args._child is not None:
        serve(loader_child if args._child == "loader" else profile_loader_child)
        return 0
    if args.workers < 1 or args.repeats < 1 or args.samples < BATCH or args.seconds <= 0:
        raise SystemExit("error: --workers and --repeats must be >= 1, --samples >= 32, --seconds > 0")
    env = environment()
    before = code_snapshot()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="rsmae-bench-") as tmp_name:
        tmp = Path(tmp_name)
        sets = scene_sets(args.data.resolve(), tmp / "scenes", tuple(args.sets.split(",")))
        stores: dict[str, Path] = {}
        print("tiling vs rasterio reads ...", file=sys.stderr)
        tiling = bench_tiling(sets, args.workers, args.repeats, tmp, stores)
        print("loaders ...", file=sys.stderr)
        loaders = bench_loaders(sets, stores, args)
        profile = None
        if args.profile:
            print("profiles ...", file=sys.stderr)
            profile = {"tiling": {s.name: profile_tiling(s, tmp) for s in sets},
                       "codecs": profile_codecs(sets[0]),
                       "loader": {}}
            child = Child("profile")
            try:
                for s in sets:
                    profile["loader"][s.name] = child.run({"store": str(stores[s.name]),
                                                           "workers": args.workers, "tile": s.tile})
            finally:
                child.close()
    env["load_end"] = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    text = markdown(env, tiling, loaders, args, profile)
    text += f"\nFull run: {time.perf_counter() - started:.0f} s.\n"
    after = code_snapshot()
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    if changed:
        text += (f"\n**Warning:** measured code changed during this run ({', '.join(changed)}); "
                 "the numbers mix versions, rerun.\n")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "loader.md").write_text(text)
    write_csv(args.out / "loader.csv", tiling, loaders)
    print(text)
    print(f"wrote {args.out / 'loader.md'} and {args.out / 'loader.csv'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
