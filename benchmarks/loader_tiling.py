"""Loader benchmark, part 1: ``tile_scenes`` vs reading the same pixels with rasterio.

The read pool uses the spawn start method: its processes import this module by name (the
``benchmarks`` folder is on ``sys.path``: the folder of the script run, ``bench_loader.py``, passed on by
spawn).
"""

from __future__ import annotations

# Only light imports at module level: spawn pool processes re-import this module.
import json
import multiprocessing
import shutil
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from loader_common import SceneSet
from rasterio.windows import Window


# --------------------------------------------------------------------------- baseline reads
@dataclass(frozen=True)
class ReadTask:
    """Rows of full tiles of one scene to read, every band file at its native resolution.

    Attributes:
        files: ``(path, band indexes, x factor, y factor)``; factors map the scene's finest grid
            to the file's grid.
        rows: Top rows (on the finest grid) of the tile rows to read.
        width: Width of the full-tile columns on the finest grid.
        tile: Tile size on the finest grid.
    """

    files: tuple[tuple[str, tuple[int, ...], float, float], ...]
    rows: tuple[int, ...]
    width: int
    tile: int


def read_plan(scene_set: SceneSet, workers: int) -> list[ReadTask]:
    """Split each scene's tile rows into ``workers`` contiguous blocks."""
    from rsmae.bands import get_sensor
    from rsmae.tiling import discover_scenes

    config = scene_set.config()
    scenes = discover_scenes(list(scene_set.inputs), get_sensor(scene_set.sensor),
                             config.band_names(), band_order=scene_set.band_order)
    tasks = []
    for scene in scenes:
        indexes: dict[str, list[int]] = {}
        for src in scene.sources:
            indexes.setdefault(src.path, []).append(src.index)
        shapes = {}
        for path in indexes:
            with rasterio.open(path) as ds:
                shapes[path] = (ds.width, ds.height, abs(ds.transform.a))
        ref_w, ref_h, _ = min(shapes.values(), key=lambda s: s[2])  # the finest grid, as the tiler
        tile = scene_set.tile
        rows = list(range(0, ref_h - tile + 1, tile))
        width = ((ref_w - tile) // tile + 1) * tile
        files = tuple((p, tuple(ix), shapes[p][0] / ref_w, shapes[p][1] / ref_h)
                      for p, ix in indexes.items())
        for block in np.array_split(np.asarray(rows), max(1, workers)):
            if len(block):
                tasks.append(ReadTask(files, tuple(int(r) for r in block), width, tile))
    return tasks


def read_block(task: ReadTask) -> int:
    """Read a block of tile rows of every band (windowed strips); return the bytes decoded."""
    nbytes = 0
    for path, indexes, fx, fy in task.files:
        with rasterio.open(path) as ds:
            for row in task.rows:
                top = int(np.floor(row * fy))
                bottom = min(ds.height, int(np.ceil((row + task.tile) * fy)))
                window = Window(0, top, min(ds.width, int(np.ceil(task.width * fx))), bottom - top)
                nbytes += ds.read(list(indexes), window=window).nbytes
    return nbytes


def run_reads(tasks: Sequence[ReadTask], workers: int) -> tuple[float, int]:
    """Seconds and bytes to run the read tasks, in a spawn pool of ``workers`` or in-process."""
    started = time.perf_counter()
    if workers <= 1:
        nbytes = sum(read_block(t) for t in tasks)
    else:
        context = multiprocessing.get_context("spawn")  # as rsmae's executor
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            nbytes = sum(pool.map(read_block, tasks))
    return time.perf_counter() - started, nbytes


def warm_cache(scene_set: SceneSet) -> None:
    """Read every source file once so that all measurements see a warm page cache."""
    for item in scene_set.inputs:
        paths = [Path(item)] if Path(item).is_file() else sorted(Path(item).rglob("*"))
        for path in paths:
            if path.is_file():
                with open(path, "rb") as fh:
                    while fh.read(1 << 22):
                        pass


# --------------------------------------------------------------------------- tiling
def run_tiling(scene_set: SceneSet, out: Path, workers: int) -> tuple[float, Any]:
    """Seconds for ``tile_scenes`` into a fresh store at ``out``, and its summary."""
    from rsmae.tiling import tile_scenes

    started = time.perf_counter()
    summary = tile_scenes(list(scene_set.inputs), out, scene_set.config(), workers=workers)
    return time.perf_counter() - started, summary


def _store_codec(store: Path) -> str:
    """Blosc codec of a store's tiles (from its ``images`` metadata)."""
    meta = json.loads((store / "images" / "zarr.json").read_text())
    found = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("name") == "blosc":
                c = node.get("configuration", {})
                found.append(f"{c.get('cname')} clevel {c.get('clevel')} {c.get('shuffle')}")
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(meta.get("codecs", []))
    return found[0] if found else "unknown"


def bench_tiling(sets: Sequence[SceneSet], workers: int, repeats: int, tmp: Path,
                 keep: dict[str, Path]) -> list[dict[str, Any]]:
    """Tiling vs reads; keeps one store per scene set (made with ``workers``) in ``keep``."""
    counts = sorted({workers, 1}, reverse=True)
    results: dict[tuple[str, int], dict[str, list[float]]] = {}
    info: dict[str, dict[str, Any]] = {}
    plans = {(s.name, w): read_plan(s, w) for s in sets for w in counts}
    for s in sets:
        warm_cache(s)
    for rep in range(repeats):
        for s in sets:
            for w in counts:
                store = tmp / f"{s.name}-w{w}-r{rep}.zarr"
                t_tile, summary = run_tiling(s, store, w)
                t_read, nbytes = run_reads(plans[(s.name, w)], w)
                r = results.setdefault((s.name, w), {"tile": [], "read": [], "ratio": []})
                r["tile"].append(t_tile)
                r["read"].append(t_read)
                r["ratio"].append(t_tile / t_read)
                info[s.name] = {"kept": summary.tiles_kept, "dropped": summary.tiles_dropped,
                                "codec": _store_codec(store),
                                "store_mb": summary.bytes_written / 1e6, "read_mb": nbytes / 1e6}
                if s.name not in keep and w == workers:
                    keep[s.name] = store
                else:
                    shutil.rmtree(store, ignore_errors=True)
                print(f"  tiling {s.name} workers={w} repeat {rep + 1}: tile_scenes {t_tile:.2f} s, "
                      f"read {t_read:.2f} s, ratio {t_tile / t_read:.2f}", file=sys.stderr)
    rows = []
    for s in sets:
        for w in counts:
            r = results[(s.name, w)]
            rows.append({"dataset": s.name, "label": s.label, "workers": w, **info[s.name],
                         "tile_s": r["tile"], "read_s": r["read"], "ratio": r["ratio"]})
    return rows

