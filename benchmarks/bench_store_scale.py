"""Store scale: tiling time per scene and dataset opening as a tile store grows to 100 k scenes.

Real 64x64 13-band EuroSAT patches (``eurosat_ms_subset``) are hard-linked under new names until
there are enough scenes (``part####/<class>/<class>_#######.tif``, 250 per part). Two measurements:

* fresh stores of 250, 1 k, 4 k and 16 k scenes, each tiled by one ``tile_scenes`` call;
* one store grown by appending batches of 10 k scenes (one call per batch, the inputs of the
  earlier batches passed again, as a re-run with more inputs does) up to 100 k: the time per
  scene of the batch that takes the store from 90 k to 100 k is the "100 k" figure, that of the
  first batch (an empty store to 10 k) the "10 k" one.

For every store: tiles/s, MB/s of pixels written (uint16), ms per scene, size of the root
``zarr.json``, and the seconds to open the store and build a ``ShardDataset`` over it (in this
process, imports excluded). Targets (issue 13): 100 k / 10 k per-scene time <= 1.2, 16 k / 4 k
<= 1.15, ``zarr.json`` of constant size, dataset over 100 k scenes < 2 s.

Example:
    python benchmarks/bench_store_scale.py --workers 2
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from provenance import git_commit

REPO = Path(__file__).resolve().parents[1]
PART = 250
TARGET_100K = 1.2
TARGET_16K = 1.15
TARGET_OPEN = 2.0
PIXEL_BYTES = 13 * 64 * 64 * 2
MEASURED = ("rsmae/store", "rsmae/tiling", "rsmae/data")



def make_farm(data: Path, root: Path, n: int) -> list[Path]:
    """Hard links to the EuroSAT patches until ``n`` scenes; returns the part folders."""
    sources = sorted((data / "eurosat_ms_subset").rglob("*.tif"))
    if not sources:
        raise SystemExit(f"error: no EuroSAT patches under {data / 'eurosat_ms_subset'}; pass --data")
    for i in range(n):
        src = sources[i % len(sources)]
        folder = root / f"part{i // PART:04d}" / src.parent.name
        dst = folder / f"{src.parent.name}_{i:07d}.tif"
        if not dst.exists():
            folder.mkdir(parents=True, exist_ok=True)
            os.link(src, dst)
    return [root / f"part{k:04d}" for k in range(n // PART)]


def open_seconds(store: Path, repeats: int = 3) -> float:
    """Median seconds to open ``store`` and build a ``ShardDataset`` (index table) over it."""
    from rsmae.data import ShardDataset

    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        ds = ShardDataset(store)
        times.append(time.perf_counter() - started)
        del ds
    return statistics.median(times)


def tile(parts: list[Path], store: Path, workers: int) -> tuple[float, Any]:
    """Seconds of one ``tile_scenes`` call over ``parts`` into ``store``, and its summary."""
    from rsmae.tiling import TileConfig, tile_scenes

    config = TileConfig(tile_size=64, band_order="eurosat", label_from_dir=True)
    started = time.perf_counter()
    summary = tile_scenes([str(p) for p in parts], store, config, workers=workers)
    return time.perf_counter() - started, summary


def row(kind: str, store: Path, seconds: float, summary: Any, new_tiles: int) -> dict[str, Any]:
    """One result row."""
    row = {"kind": kind, "scenes": summary.scenes, "new_scenes": summary.new_scenes,
           "seconds": seconds, "ms_per_scene": 1000 * seconds / summary.new_scenes,
           "tiles_per_s": new_tiles / seconds, "mb_per_s": new_tiles * PIXEL_BYTES / seconds / 1e6,
           "zarr_json_bytes": (store / "zarr.json").stat().st_size,
           "open_dataset_s": open_seconds(store)}
    print(f"{kind:>7} {row['scenes']:>7} {row['new_scenes']:>6} {seconds:8.1f} "
          f"{row['ms_per_scene']:7.2f} {row['tiles_per_s']:8.0f} {row['mb_per_s']:6.1f} "
          f"{row['zarr_json_bytes']:>7} {row['open_dataset_s']:6.3f}", flush=True)
    return row


def run(args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    """Fresh stores, then the appended series."""
    total = max(max(args.sizes), args.batch * args.batches)
    started = time.perf_counter()
    parts = make_farm(args.data, work / "farm", total)
    print(f"{total} scenes linked in {time.perf_counter() - started:.1f} s")
    print(f"{'kind':>7} {'scenes':>7} {'new':>6} {'seconds':>8} {'ms/sc':>7} {'tiles/s':>8} "
          f"{'MB/s':>6} {'zarr.json':>7} {'open s':>6}")
    rows = []
    for n in args.sizes:
        store = work / f"fresh{n}.zarr"
        seconds, summary = tile(parts[: n // PART], store, args.workers)
        rows.append(row("fresh", store, seconds, summary, summary.tiles_kept))
        shutil.rmtree(store)
    store = work / "series.zarr"
    kept = 0
    for b in range(1, args.batches + 1):
        seconds, summary = tile(parts[: b * args.batch // PART], store, args.workers)
        rows.append(row("append", store, seconds, summary, summary.tiles_kept - kept))
        kept = summary.tiles_kept
    return rows


def ratios(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Per-scene time ratios of the targets."""
    fresh = {r["scenes"]: r["ms_per_scene"] for r in rows if r["kind"] == "fresh"}
    series = [r for r in rows if r["kind"] == "append"]
    out = {}
    if 16000 in fresh and 4000 in fresh:
        out["16k / 4k (fresh stores)"] = fresh[16000] / fresh[4000]
    if len(series) > 1:
        out[f"{series[-1]['scenes'] // 1000}k / {series[0]['scenes'] // 1000}k (append batches)"] = (
            series[-1]["ms_per_scene"] / series[0]["ms_per_scene"])
    return out


def write_results(rows: list[dict[str, Any]], args: argparse.Namespace, machine: str,
                  minutes: float) -> None:
    """CSV, Markdown table and plot under ``args.out``."""
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "store_scale.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    found = ratios(rows)
    big = [r for r in rows if r["kind"] == "append"]
    sizes = sorted({r["zarr_json_bytes"] for r in rows})
    lines = [
        "# Tile store scale (`benchmarks/bench_store_scale.py`)", "",
        f"Machine: {machine}. Commit {git_commit(MEASURED)}; {args.workers} tiling worker(s); "
        f"{minutes:.1f} min in all.", "",
        f"Command: `python benchmarks/bench_store_scale.py {' '.join(args.argv)}`", "",
        "64x64 13-band uint16 EuroSAT patches (real files hard-linked under new names), "
        "`TileConfig(tile_size=64, band_order='eurosat', label_from_dir=True)`, 64 tiles per "
        "shard. *fresh*: a new store tiled in one call; *append*: one store grown by one call per "
        f"batch of {args.batch} new scenes (earlier inputs passed again). ms/scene, tiles/s and "
        "MB/s (pixels written) count the new scenes of the call, which includes discovering "
        "every input and checking the headers of the new ones. `open s`: opening the store and "
        "building a `ShardDataset` over it (median of 3, imports excluded).", "",
        "| kind | scenes | new | seconds | ms/scene | tiles/s | MB/s | zarr.json bytes | open s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['kind']} | {r['scenes']} | {r['new_scenes']} | {r['seconds']:.1f} | "
                     f"{r['ms_per_scene']:.2f} | {r['tiles_per_s']:.0f} | {r['mb_per_s']:.1f} | "
                     f"{r['zarr_json_bytes']} | {r['open_dataset_s']:.3f} |")
    lines += ["", "Targets (issue 13):", ""]
    for name, value in found.items():
        limit = TARGET_16K if name.startswith("16k") else TARGET_100K
        lines.append(f"- per-scene time {name}: {value:.3f} (target <= {limit}: "
                     f"{'met' if value <= limit else 'missed'})")
    lines.append(f"- root `zarr.json`: {sizes[0]}-{sizes[-1]} bytes over every size "
                 "(statistics digits and counts; no per-scene content)")
    if big:
        ok = big[-1]["open_dataset_s"] < TARGET_OPEN
        lines.append(f"- `ShardDataset` over {big[-1]['scenes']} scenes: "
                     f"{big[-1]['open_dataset_s']:.3f} s (target < {TARGET_OPEN} s: "
                     f"{'met' if ok else 'missed'})")
    (out / "store_scale.md").write_text("\n".join(lines) + "\n")
    plot(rows, out / "store_scale.png", machine)
    print("\n".join(lines[-len(found) - 3:]))


def plot(rows: list[dict[str, Any]], path: Path, machine: str) -> None:
    """Per-scene time, zarr.json size and dataset opening time against store size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for kind, marker in (("fresh", "o"), ("append", "s")):
        sel = [r for r in rows if r["kind"] == kind]
        x = [r["scenes"] for r in sel]
        axes[0].plot(x, [r["ms_per_scene"] for r in sel], marker=marker, label=kind)
        axes[1].plot(x, [r["zarr_json_bytes"] / 1e3 for r in sel], marker=marker, label=kind)
        axes[2].plot(x, [r["open_dataset_s"] for r in sel], marker=marker, label=kind)
    titles = ("tiling ms per new scene", "root zarr.json (kB)", "open + ShardDataset (s)")
    for ax, title in zip(axes, titles, strict=True):
        ax.set_xscale("log")
        ax.set_xlabel("scenes in the store")
        ax.set_title(title)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"Tile store scale, 64x64 13-band EuroSAT patches ({machine})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print the table and write the results."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    p.add_argument("--sizes", type=lambda s: [int(v) for v in s.split(",")],
                   default=[250, 1000, 4000, 16000], help="fresh store sizes (multiples of 250)")
    p.add_argument("--batch", type=int, default=10000, help="scenes per appended batch")
    p.add_argument("--batches", type=int, default=10, help="appended batches")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temp dir)")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    p.add_argument("--from-csv", type=Path, default=None,
                   help="rewrite the report and plot from an earlier run's CSV (no tiling)")
    p.add_argument("--minutes", type=float, default=0.0, help="with --from-csv: that run's length")
    args = p.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else argv
    from rsmae.evaluation.speed import cpu_name

    machine = f"{cpu_name()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    print(f"{machine}; load average {os.getloadavg()[0]:.1f}")
    if args.from_csv is not None:
        with open(args.from_csv) as fh:
            rows = [{k: v if k == "kind" else float(v) if "." in v else int(v) for k, v in r.items()}
                    for r in csv.DictReader(fh)]
        write_results(rows, args, machine, args.minutes)
        return 0
    started = time.perf_counter()
    work = args.work or Path(tempfile.mkdtemp(prefix="store_scale_"))
    try:
        rows = run(args, work)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    write_results(rows, args, machine, (time.perf_counter() - started) / 60)
    return 0


if __name__ == "__main__":
    sys.exit(main())
