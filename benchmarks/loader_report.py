"""Loader benchmark: run environment, and the Markdown and CSV report."""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import statistics
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import rasterio
from loader_common import BATCH, REPO, TARGET_LOADER, TARGET_TILING
from provenance import git_commit

from rsmae.evaluation.speed import cpu_name


def _median(values: Sequence[float]) -> float:
    return float(statistics.median(values))



def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


_MEASURED = ("rsmae/tiling", "rsmae/data", "rsmae/store", "rsmae/bands.py")



def code_snapshot() -> dict[str, float]:
    """Modification times of the measured rsmae files (to detect edits during a run)."""
    files = [p for m in _MEASURED for p in ([REPO / m] if (REPO / m).is_file()
                                             else sorted((REPO / m).rglob("*.py")))]
    return {str(p.relative_to(REPO)): p.stat().st_mtime for p in files}


def environment() -> dict[str, str]:
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    versions = {d: _version(d) for d in ("rsmae", "torch", "torchgeo", "rasterio", "zarr", "numcodecs",
                                         "numpy", "psutil")}
    versions["GDAL"] = rasterio.__gdal_version__
    versions["python"] = platform.python_version()
    return {"date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "cpu": cpu_name(), "cores": f"{os.cpu_count()} logical, {affinity} usable",
            "load": load, "versions": ", ".join(f"{k} {v}" for k, v in versions.items()),
            "commit": git_commit(_MEASURED),
            "command": shlex.join(getattr(sys, "orig_argv", [sys.executable, *sys.argv]))}


def _fmt(values: Sequence[float], digits: int = 2) -> str:
    med = _median(values)
    if len(values) == 1:
        return f"{med:.{digits}f}"
    return f"{med:.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def markdown(env: dict[str, str], tiling: list[dict[str, Any]], loaders: list[dict[str, Any]],
             args: argparse.Namespace, profile: dict[str, Any] | None) -> str:
    lines = [
        "# Loader benchmark",
        "",
        f"- Command: `{env['command']}`",
        f"- Date: {env['date']}",
        f"- CPU: {env['cpu']}, {env['cores']} cores; load average (1, 5, 15 min) at start "
        f"{env['load']}, at end {env.get('load_end', '?')} (shared machine: compare ratios within "
        "this run)",
        f"- Versions: {env['versions']}; rsmae commit {env['commit']}",
        f"- Tile size per scene set (column px), batch size {BATCH}, {args.repeats} repeats (median, "
        f"min-max in parentheses), main process with {args.consumer_threads} torch thread(s), "
        f"loaders timed for {args.seconds:g} s or {args.samples} samples after one warm-up batch",
        "",
        f"## 1. Tiling vs reading the same pixels with rasterio (target <= {TARGET_TILING:g}x)",
        "",
        "| scenes | workers | tiles kept / dropped | source MB decoded | store MB | tile_scenes s "
        "| rasterio read s | tiling / read | target met |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in tiling:
        ratio = _median(r["ratio"])
        met = "yes" if ratio <= TARGET_TILING else f"no ({ratio / TARGET_TILING:.1f}x over)"
        lines.append(f"| {r['dataset']} | {r['workers']} | {r['kept']} / {r['dropped']} | "
                     f"{r['read_mb']:.1f} | {r['store_mb']:.1f} | {_fmt(r['tile_s'])} | "
                     f"{_fmt(r['read_s'])} | {_fmt(r['ratio'], 1)} | {met} |")
    lines += [
        "",
        f"Stores written with the rsmae default tile codec: {tiling[0]['codec']}. "
        "The read baseline decodes every band of the rows of full tiles with windowed strip reads "
        "(each file at its native resolution), in a spawn pool of the same size (start-up "
        "included) or in-process for 1 worker. Page cache warm for both.",
        "",
        f"## 2-3. Loader throughput, MB/s and memory (target rsmae / torchgeo >= {TARGET_LOADER:g}x)",
        "",
        "| scenes | px | loader | workers | samples/s | MB/s (float32 images) | us per sample "
        "(wall) | peak RSS MB (main + workers) | PSS MB (main + workers) |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    rss_imports = _median([v for r in loaders if r["loader"] != "ratio" for v in r["rss_imports_mb"]])
    names = {"rsmae": "rsmae ShardDataset + ShardSampler (float32 from workers)",
             "rsmae-native": "rsmae ShardDataset(native=True) + ShardSampler (native dtype from workers, "
                             "normalised to float32 in the main process, timed)",
             "torchgeo": "torchgeo RasterDataset + RandomGeoSampler"}  # + the collate used
    for r in loaders:
        if r["loader"] == "ratio":
            ratio = _median(r["ratio"])
            met = "yes" if ratio >= TARGET_LOADER else f"no ({TARGET_LOADER / ratio:.1f}x short)"
            lines.append(f"| {r['dataset']} | | **{r['of']} / torchgeo** | {r['workers']} | "
                         f"**{_fmt(r['ratio'], 1)}x** | target met: {met} | | | |")
            continue
        us = [1e6 / v for v in r["samples_per_s"]]
        lines.append(f"| {r['dataset']} ({r['channels']} bands {r['dtype']}) | {r['tile']} | "
                     f"{names[r['loader']]}, {r['collate']} | "
                     f"{r['workers']} | {_fmt(r['samples_per_s'], 0)} | {_fmt(r['mb_per_s'], 1)} | "
                     f"{_fmt(us, 1)} | "
                     f"{_fmt(r['peak_rss_mb'], 0)} | {_fmt(r['pss_mb'], 0)} |")
    lines += [
        "",
        "Each library runs in its own child process, the kinds taking turns; dataset, "
        "DataLoader and workers are new for every measurement. Peak RSS is the sum of the `VmHWM` "
        "of the main process (reset before each measurement) and of each DataLoader worker "
        "(forked workers share pages, which RSS counts once per process); PSS splits shared "
        "pages and is read at the end of the timed part. "
        f"Importing torch and the loader's library alone takes {rss_imports:.0f} MB RSS in the main "
        "process (median over runs), before any data is read. "
        "torchgeo samples random windows of the tile size anywhere in the scenes (nodata collar "
        "included); rsmae reads the kept tiles. The dtype column is that of the batches the workers "
        "send. us per sample (wall) = 1e6 / samples/s: the whole pipeline's cost per sample with "
        "all its processes.",
    ]
    if profile:
        lines += _profile_markdown(profile)
    return "\n".join(lines) + "\n"


def _profile_markdown(profile: dict[str, Any]) -> list[str]:
    lines = ["", "## Where the time goes (`--profile`)", "",
             "Tiling in-process (workers=1) under cProfile, cumulative seconds per part (write_unit "
             "includes the Blosc encoding that zarr runs in its threads):", "",
             "| part | " + " | ".join(profile["tiling"]) + " |",
             "|---|" + "---:|" * len(profile["tiling"])]
    first = next(iter(profile["tiling"].values()))
    for part in first["parts"]:
        cells = [f"{p['parts'][part]:.3f}" for p in profile["tiling"].values()]
        lines.append(f"| {part} | " + " | ".join(cells) + " |")
    lines.append("| **total tile_scenes** | " + " | ".join(
        f"**{p['total']:.3f}**" for p in profile["tiling"].values()) + " |")
    tile = profile["codecs"][0].get("tile", "?") if profile["codecs"] else "?"
    lines += ["", f"Blosc codecs on up to 64 kept tiles of the first scene set ({tile}, mid-scene), "
              "per tile, best of 3:", "",
              "| codec | encode us | decode us | compression ratio |", "|---|---:|---:|---:|"]
    for c in profile["codecs"]:
        lines.append(f"| {c['codec']} | {c['encode_us']:.0f} | {c['decode_us']:.0f} | {c['ratio']:.2f} |")
    for name, lp in profile["loader"].items():
        lines += ["", f"ShardDataset per-sample cost in one process, {name} store ({lp['channels']} "
                  "bands, torch 1 thread as in workers, best of 3):", "",
                  f"- batched pread + Blosc decode (TileReader.read): {lp['read_us']:.1f} us; "
                  f"float32 normalisation of the batch + TileBatch: {lp['sample_us']:.1f} us; "
                  f"collate: {lp['collate_us']:.1f} us; total {lp['total_us']:.1f} us per sample "
                  f"(= {1e6 / lp['total_us']:.0f} samples/s per worker); one ds[i] per sample then "
                  f"collate: {lp.get('per_item_us', float('nan')):.1f} us per sample",
                  "- DataLoader transport ceiling with zero-cost samples, same workers: " + "; ".join(
                      f"{k}: {v:.0f} samples/s" for k, v in lp["ceilings"].items())]
    return lines


def write_csv(path: Path, tiling: list[dict[str, Any]], loaders: list[dict[str, Any]]) -> None:
    header = "section,dataset,method,workers,metric,median,min,max,values,target,met"
    out = [header]

    def row(section: str, dataset: str, method: str, workers: int, metric: str,
            values: Sequence[float], target: str = "", met: str = "") -> None:
        vals = ";".join(f"{v:.6g}" for v in values)
        out.append(f"{section},{dataset},{method},{workers},{metric},{_median(values):.6g},"
                   f"{min(values):.6g},{max(values):.6g},{vals},{target},{met}")

    for r in tiling:
        row("tiling", r["dataset"], "rsmae.tile_scenes", r["workers"], "seconds", r["tile_s"])
        row("tiling", r["dataset"], "rasterio_read", r["workers"], "seconds", r["read_s"])
        ok = _median(r["ratio"]) <= TARGET_TILING
        row("tiling", r["dataset"], "tile_over_read", r["workers"], "ratio", r["ratio"],
            f"<={TARGET_TILING:g}", "yes" if ok else "no")
    for r in loaders:
        if r["loader"] == "ratio":
            ok = _median(r["ratio"]) >= TARGET_LOADER
            row("loader", r["dataset"], f"{r['of']}_over_torchgeo", r["workers"], "ratio", r["ratio"],
                f">={TARGET_LOADER:g}", "yes" if ok else "no")
            continue
        for metric in ("samples_per_s", "mb_per_s", "peak_rss_mb", "pss_mb"):
            row("loader", r["dataset"], r["loader"], r["workers"], metric, r[metric])
        row("loader", r["dataset"], r["loader"], r["workers"], "us_per_sample",
            [1e6 / v for v in r["samples_per_s"]])
    path.write_text("\n".join(out) + "\n")

