"""Loader benchmark: tiling vs plain rasterio reads, and ``ShardDataset`` vs torchgeo loading.

Run from the repository root (``make bench`` runs the defaults)::

    .venv/bin/python benchmarks/bench_loader.py
    .venv/bin/python benchmarks/bench_loader.py --workers 2 --repeats 3 --samples 20000 \
        --out benchmarks/results --profile

One run measures, on the same real scenes (the Landsat 8 crop in ``<data>/landsat8_scene`` and the
seven OSCD Sentinel-2 L1C scenes ``<data>/oscd_subset/.../<city>/imgs_1``), tile size 128:

1. Tiling: ``tile_scenes`` into a fresh temporary store with ``--workers`` processes and with 1,
   against reading the same pixels with rasterio (every band, the rows of full tiles, windowed
   strip reads at each file's native resolution) with the same parallelism: a spawn process pool
   of ``--workers`` processes reading disjoint row blocks (pool start-up included, as it is in
   ``tile_scenes``), or in this process for 1. Source files are read once beforehand so that both
   sides see a warm page cache. Target: tiling / read <= 1.5.
2. Loading: ``ShardDataset`` + ``ShardSampler`` + ``DataLoader(batch_size=32, num_workers=W)``
   against torchgeo's ``RasterDataset`` + ``RandomGeoSampler(size=128, units=Units.PIXELS)`` +
   ``DataLoader(batch_size=32, num_workers=W, collate_fn=stack_samples)`` in samples/s. Each
   loader kind runs in its own child process (the two take turns); dataset, sampler, DataLoader
   and workers are new for every measurement. The first batch (worker start-up, file opening) is
   excluded and the timed part lasts ``--seconds`` or ``--samples`` samples, whichever comes
   first. The samplers chain epochs so that no epoch boundary drains the pipeline. Target: >= 20x.
   rsmae is measured twice: float32 samples from the workers (``ShardDataset()``), and uint16
   samples from the workers normalised to float32 by the consumer, timed (``native=True``, what
   training does: the normalisation then runs on the GPU).
3. MB/s of delivered ``image`` tensors (float32 for both loaders) and memory: the sum of the peak
   RSS (``VmHWM``) of the main process and of each DataLoader worker, and the PSS of the same
   processes at the end of the timed part (PSS splits pages shared between the forked workers).

Every measurement is repeated ``--repeats`` times, interleaved, and the median is reported (ratios
are the median of per-repeat ratios). The Markdown table is printed and written with a CSV to
``--out`` (``loader.md``, ``loader.csv``). ``--profile`` adds a cProfile breakdown of tiling and a
per-sample cost breakdown of the loader, with the DataLoader transport ceiling on this machine.
"""

from __future__ import annotations

# Only light imports at module level: tiling pools use the spawn start method, so every pool
# process re-imports this module; torch and torchgeo are imported where they are used.
import argparse
import cProfile
import functools
import glob
import json
import multiprocessing
import os
import platform
import pstats
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.windows import Window

REPO = Path(__file__).resolve().parents[1]
TILE = 128
BATCH = 32
TARGET_TILING = 1.5  # tiling seconds / read seconds, at most
TARGET_LOADER = 20.0  # rsmae samples/s / torchgeo samples/s, at least
RSMAE_KINDS = ("rsmae", "rsmae-native")
LANDSAT_FILE = "LC08_L1TP_224078_20200518_20200518_01_RT.TIF"
OSCD_DIR = "oscd_subset/Onera Satellite Change Detection dataset - Images"
S2_BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12")


# --------------------------------------------------------------------------- inputs
@dataclass(frozen=True)
class SceneSet:
    """A set of real scenes tiled and loaded by the benchmark.

    Attributes:
        name: Short name used in tables.
        label: Description used in tables.
        inputs: Paths passed to ``tile_scenes``.
        sensor: Registry sensor name.
        bands: Bands to keep (``None``: all bands of the sensor).
        band_order: Band order inside multi-band files.
    """

    name: str
    label: str
    inputs: tuple[str, ...]
    sensor: str
    bands: tuple[str, ...] | None = None
    band_order: str | None = None

    def config(self) -> Any:
        """The ``TileConfig`` of this set."""
        from rsmae.tiling import TileConfig

        return TileConfig(tile_size=TILE, sensor=self.sensor, bands=self.bands,
                          band_order=self.band_order)


def scene_sets(data: Path) -> list[SceneSet]:
    landsat = data / "landsat8_scene" / LANDSAT_FILE
    oscd = sorted(glob.glob(str(data / OSCD_DIR / "*" / "imgs_1")))
    if not landsat.is_file():
        raise SystemExit(f"error: {landsat} not found; pass --data")
    if not oscd:
        raise SystemExit(f"error: no OSCD scene folders under {data / OSCD_DIR}; pass --data")
    return [
        SceneSet("landsat8", "Landsat 8 OLI, 1 scene 2041x1860, 3 bands uint16 (tiled LZW)",
                 (str(landsat),), "landsat-oli", ("B2", "B3", "B4"), "B2,B3,B4"),
        SceneSet("oscd", f"OSCD Sentinel-2 L1C, {len(oscd)} scenes, 13 band files at 10/20/60 m",
                 tuple(oscd), "s2-l1c"),
    ]


# --------------------------------------------------------------------------- baseline reads
@dataclass(frozen=True)
class ReadTask:
    """Rows of full tiles of one scene to read, every band file at its native resolution.

    Attributes:
        files: ``(path, band indexes, x factor, y factor)``; factors map the scene's finest grid
            to the file's grid.
        rows: Top rows (on the finest grid) of the tile rows to read.
        width: Width of the full-tile columns on the finest grid.
    """

    files: tuple[tuple[str, tuple[int, ...], float, float], ...]
    rows: tuple[int, ...]
    width: int


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
        rows = list(range(0, ref_h - TILE + 1, TILE))
        width = ((ref_w - TILE) // TILE + 1) * TILE
        files = tuple((p, tuple(ix), shapes[p][0] / ref_w, shapes[p][1] / ref_h)
                      for p, ix in indexes.items())
        for block in np.array_split(np.asarray(rows), max(1, workers)):
            if len(block):
                tasks.append(ReadTask(files, tuple(int(r) for r in block), width))
    return tasks


def read_block(task: ReadTask) -> int:
    """Read a block of tile rows of every band (windowed strips); return the bytes decoded."""
    nbytes = 0
    for path, indexes, fx, fy in task.files:
        with rasterio.open(path) as ds:
            for row in task.rows:
                top = int(np.floor(row * fy))
                bottom = min(ds.height, int(np.ceil((row + TILE) * fy)))
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


# --------------------------------------------------------------------------- loaders (subprocess)
class ChainedEpochs:
    """A sampler that chains epochs of ``base`` (calling ``set_epoch``) up to ``length`` indices."""

    def __init__(self, base: Any, length: int) -> None:
        self.base = base
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Iterator[int]:
        produced, epoch = 0, 0
        while True:
            self.base.set_epoch(epoch)
            epoch += 1
            for index in self.base:
                if produced >= self.length:
                    return
                yield index
                produced += 1


def _proc_status(pid: int, key: str) -> int:
    """A ``kB`` field of ``/proc/<pid>/status`` in bytes (0 if the process is gone)."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _proc_pss(pid: int) -> int:
    """Proportional set size of a process in bytes (0 if unavailable)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _child_pids(parent: int) -> list[int]:
    """Live child processes of ``parent`` (scanning ``/proc``; psutil is not needed)."""
    pids = []
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            with open(stat) as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == parent:
            pids.append(int(stat.split("/")[2]))
    return pids


def _import_torchgeo() -> Any:
    """Import torchgeo; 0.8.1 imports ``requests`` in ``torchgeo.datasets`` (OpenStreetMap).

    ``requests`` is only in torchgeo's ``datasets`` extra and is not installed here; it is used
    for downloads only, so a placeholder module is registered in this process when it is missing.
    """
    try:
        import requests  # noqa: F401
    except ImportError:
        import types

        sys.modules["requests"] = types.ModuleType("requests")
    import torchgeo

    return torchgeo


def _torchgeo_dataset(dataset: str, data: Path) -> Any:
    _import_torchgeo()
    from torchgeo.datasets import RasterDataset

    if dataset == "landsat8":
        class Landsat8Crop(RasterDataset):
            filename_glob = LANDSAT_FILE
            is_image = True
            separate_files = False
            all_bands = ("B2", "B3", "B4")

        return Landsat8Crop([str(data / "landsat8_scene")], bands=["B2", "B3", "B4"])

    class OSCDScenes(RasterDataset):
        filename_glob = "*_B02.tif"
        filename_regex = r"^.+_(?P<band>B\d[\dA])\.tif$"
        is_image = True
        separate_files = True
        all_bands = S2_BANDS

    return OSCDScenes(sorted(glob.glob(str(data / OSCD_DIR / "*" / "imgs_1"))), bands=list(S2_BANDS))


def _reset_peak_rss() -> bool:
    """Reset this process's ``VmHWM`` to its current RSS (Linux >= 4.0); False if not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def rsmae_collate() -> tuple[Callable[[list[Any]], Any], str]:
    """The collate function rsmae's own DataModule uses (``collate_tiles``), else the default."""
    import rsmae.data

    collate = getattr(rsmae.data, "collate_tiles", None)
    if collate is not None:
        return collate, "rsmae.data.collate_tiles"
    from torch.utils.data import default_collate

    return default_collate, "torch default_collate"


def loader_child(spec: dict[str, Any]) -> dict[str, Any]:
    """Measure one loader in this process (a loader server); returns throughput and memory.

    The dataset, sampler and DataLoader (and so its workers) are new for every measurement; the
    main process's peak RSS is reset first, so each measurement reports its own peak.
    """
    import torch
    from torch.utils.data import DataLoader

    workers, seconds, max_samples = spec["workers"], spec["seconds"], spec["samples"]
    import rsmae.data  # noqa: F401  (imports counted in the baseline RSS below)

    if spec["loader"] == "torchgeo":
        _import_torchgeo()
    rss_imports = _proc_status(os.getpid(), "VmRSS")
    peak_reset = _reset_peak_rss()
    length = max_samples + BATCH * (4 + 4 * max(1, workers))  # never runs dry before the stop
    finish = None  # what the consumer does to a batch before using it (timed)
    if spec["loader"] in RSMAE_KINDS:
        from rsmae.data.dataset import ShardDataset, normalize_images
        from rsmae.data.sampler import ShardSampler

        native = spec["loader"] == "rsmae-native"
        ds = ShardDataset(spec["store"], native=native)
        if native:  # uint16 between processes, normalised by the consumer (on the device in training)
            mean, std = torch.as_tensor(ds.mean), torch.as_tensor(ds.std)
            finish = functools.partial(normalize_images, mean=mean, std=std)
        collate, collate_name = rsmae_collate()
        loader = DataLoader(ds, batch_size=BATCH, sampler=ChainedEpochs(ShardSampler(ds), length),
                            num_workers=workers, collate_fn=collate)
        spec = {**spec, "collate": collate_name}
    else:
        tg = _import_torchgeo()
        from torchgeo.datasets import stack_samples
        from torchgeo.samplers import RandomGeoSampler, Units

        ds = _torchgeo_dataset(spec["dataset"], Path(spec["data"]))
        sampler = RandomGeoSampler(ds, size=TILE, length=length, units=Units.PIXELS)
        loader = DataLoader(ds, batch_size=BATCH, sampler=sampler, num_workers=workers,
                            collate_fn=stack_samples)
        spec = {**spec, "torchgeo": tg.__version__, "collate": "torchgeo stack_samples"}
    it = iter(loader)
    first = next(it)["image"]  # warm-up batch: excluded
    dtype = str(first.dtype)
    if finish is not None:
        first = finish(first)
    if tuple(first.shape[-2:]) != (TILE, TILE):
        raise RuntimeError(f"{spec['loader']}: got {tuple(first.shape)} batches, not {TILE}x{TILE}")
    samples = nbytes = 0
    started = time.perf_counter()
    for batch in it:
        image = batch["image"]
        if finish is not None:
            image = finish(image)
        samples += image.shape[0]
        nbytes += image.element_size() * image.nelement()
        elapsed = time.perf_counter() - started
        if elapsed >= seconds or samples >= max_samples:
            break
    me = os.getpid()
    pids = [me, *_child_pids(me)]
    hwm = sum(_proc_status(p, "VmHWM") for p in pids)
    pss = sum(_proc_pss(p) for p in pids)
    del it
    return {**spec, "samples": samples, "seconds_timed": elapsed, "samples_per_s": samples / elapsed,
            "mb_per_s": nbytes / elapsed / 1e6, "peak_rss_mb": hwm / 1e6, "pss_mb": pss / 1e6,
            "processes": len(pids), "rss_imports_mb": rss_imports / 1e6, "dtype": dtype,
            "channels": int(first.shape[1]), "torch_threads": torch.get_num_threads(),
            "peak_reset": peak_reset}


_RESULT = "RESULT "


def serve(task: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
    """Child main loop: one JSON spec per stdin line, one ``RESULT`` JSON line per spec."""
    for line in sys.stdin:
        if line.strip():
            print(_RESULT + json.dumps(task(json.loads(line))), flush=True)


class Child:
    """A benchmark child process (started once: torch imports cost seconds) fed specs by pipe."""

    def __init__(self, kind: str) -> None:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--_child", kind]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     cwd=REPO, bufsize=1)

    def run(self, spec: dict[str, Any]) -> dict[str, Any]:
        """Send one spec; wait for its result."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(spec) + "\n")
        self.proc.stdin.flush()
        for line in self.proc.stdout:
            if line.startswith(_RESULT):
                return json.loads(line[len(_RESULT):])
        raise RuntimeError(f"benchmark child exited with {self.proc.wait()} on {spec}")

    def close(self) -> None:
        """End the child (closing its stdin ends its loop)."""
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(timeout=120)


def bench_loaders(sets: Sequence[SceneSet], stores: dict[str, Path], args: argparse.Namespace
                  ) -> list[dict[str, Any]]:
    """Both loaders on every scene set, interleaved over repeats.

    Each loader kind lives in its own child process (rsmae's never imports torchgeo); the two
    children take turns, so that a slow spell of a shared machine hits both.
    """
    runs: dict[tuple[str, str], list[dict[str, Any]]] = {}
    ours = Child("loader")  # both rsmae kinds share a process that never imports torchgeo
    children = {"rsmae": ours, "rsmae-native": ours, "torchgeo": Child("loader")}
    kinds = list(children)
    try:
        for rep, s in ((rep, s) for rep in range(args.repeats) for s in sets):
            order = kinds[rep % 3:] + kinds[:rep % 3]
            for loader in order:
                spec = {"loader": loader, "dataset": s.name,
                        "store": str(stores[s.name]), "data": str(args.data),
                        "workers": args.workers, "seconds": args.seconds, "samples": args.samples}
                res = children[loader].run(spec)
                runs.setdefault((s.name, loader), []).append(res)
                print(f"  loader {s.name} {loader} repeat {rep + 1}: {res['samples_per_s']:.0f} "
                      f"samples/s, peak RSS {res['peak_rss_mb']:.0f} MB", file=sys.stderr)
    finally:
        for child in {id(c): c for c in children.values()}.values():
            child.close()
    rows = []
    for s in sets:
        for loader in kinds:
            r = runs[(s.name, loader)]
            rows.append({"dataset": s.name, "loader": loader, "workers": args.workers,
                         "channels": r[0]["channels"], "dtype": r[0]["dtype"],
                         "collate": r[0]["collate"],
                         **{k: [x[k] for x in r] for k in
                            ("samples_per_s", "mb_per_s", "peak_rss_mb", "pss_mb", "samples",
                             "rss_imports_mb")}})
        b = runs[(s.name, "torchgeo")]
        for kind in RSMAE_KINDS:
            a = runs[(s.name, kind)]
            ratios = [x["samples_per_s"] / y["samples_per_s"] for x, y in zip(a, b, strict=True)]
            rows.append({"dataset": s.name, "loader": "ratio", "of": kind, "workers": args.workers,
                         "ratio": ratios})
    return rows


# --------------------------------------------------------------------------- profiles
_TILING_PARTS = (
    ("scene discovery", "rsmae/tiling/scenes.py", "discover_scenes"),
    ("header checks (scene_grid)", "rsmae/tiling/run.py", "_plan_scenes"),
    ("store create/register", "rsmae/tiling/run.py", "_open_or_create"),
    ("read windows (SceneReader.read)", "rsmae/tiling/grid.py", "read"),
    ("nodata masks (valid_mask)", "rsmae/tiling/units.py", "valid_mask"),
    ("statistics (accumulate)", "rsmae/tiling/stats.py", "accumulate"),
    ("write_unit (zarr + Blosc encode)", "rsmae/store.py", "write_unit"),
    ("finalise (index, stats)", "rsmae/tiling/run.py", "_finalise"),
)


def profile_tiling(s: SceneSet, tmp: Path) -> dict[str, Any]:
    """Profile an in-process (workers=1) tiling run; cumulative seconds of its parts."""
    out = tmp / f"{s.name}-profile.zarr"
    profiler = cProfile.Profile()
    profiler.enable()
    started = time.perf_counter()
    run_tiling(s, out, 1)
    total = time.perf_counter() - started
    profiler.disable()
    shutil.rmtree(out, ignore_errors=True)
    stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    parts = {}
    for label, suffix, name in _TILING_PARTS:
        parts[label] = sum(v[3] for (path, _, fn), v in stats.items()
                           if fn == name and path.endswith(suffix))
    return {"total": total, "parts": parts}


def profile_codecs(s: SceneSet) -> list[dict[str, Any]]:
    """Blosc encode/decode cost of one shard of real tiles: the store's codec vs alternatives."""
    from numcodecs import Blosc

    src = s.inputs[0]
    with rasterio.open(src) as ds:  # 4 tile rows from the middle of the scene (no collar)
        top = (ds.height // 2 // TILE - 2) * TILE
        data = ds.read(window=Window(0, top, (ds.width // TILE) * TILE, 4 * TILE))
    c, h, w = data.shape
    tiles = data.reshape(c, h // TILE, TILE, w // TILE, TILE).transpose(1, 3, 0, 2, 4)
    tiles = tiles.reshape(-1, c, TILE, TILE)
    valid = (tiles != 0).any(axis=1).mean(axis=(1, 2)) >= 0.9  # kept tiles only, as in a store
    tiles = np.ascontiguousarray(tiles[valid][:64])
    rows = []
    for name, codec in (("zstd clevel 3 bitshuffle", Blosc("zstd", 3, Blosc.BITSHUFFLE)),
                        ("lz4 clevel 5 bitshuffle", Blosc("lz4", 5, Blosc.BITSHUFFLE)),
                        ("zstd clevel 1 bitshuffle", Blosc("zstd", 1, Blosc.BITSHUFFLE))):
        encoded = [codec.encode(t) for t in tiles]
        enc = _timeit(lambda c=codec: [c.encode(t) for t in tiles], 1)
        dec = _timeit(lambda c=codec, e=encoded: [c.decode(x) for x in e], 1)
        rows.append({"codec": name, "encode_us": enc / len(tiles) * 1e6,
                     "decode_us": dec / len(tiles) * 1e6,
                     "ratio": tiles.nbytes / sum(len(e) for e in encoded)})
    return rows


def _timeit(fn: Callable[[], Any], n: int, rounds: int = 3) -> float:
    """Seconds per call of ``fn``: the best of ``rounds`` rounds of ``n`` calls (after one call)."""
    fn()
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - started) / n)
    return best


def profile_loader_child(spec: dict[str, Any]) -> dict[str, Any]:
    """Per-sample costs of ``ShardDataset`` in one process, and the DataLoader transport ceiling."""
    import torch
    from torch.utils.data import DataLoader, Dataset, default_collate

    from rsmae.data.dataset import ShardDataset
    from rsmae.data.sampler import ShardSampler

    torch.set_num_threads(1)  # as in DataLoader workers
    collate_fn, collate_name = rsmae_collate()
    ds = ShardDataset(spec["store"])
    order = list(ShardSampler(ds))[: 4 * BATCH]
    batches = [order[k : k + BATCH] for k in range(0, len(order) - BATCH + 1, BATCH)]
    reader = ds._arrays(0)
    slots = [int(ds.table[i, 1]) for i in order]
    n = len(order)
    read = _timeit(lambda: [reader.read(sl) for sl in slots], 3) / n
    pixels = reader.read(slots[0])
    sample = _timeit(lambda: ds._sample(0, ds.table[0], pixels), 200)
    items = [ds.__getitems__(b) for b in batches]
    collate = _timeit(lambda: [collate_fn(x) for x in items], 3) / n
    total = _timeit(lambda: [collate_fn(ds.__getitems__(b)) for b in batches], 3) / n
    c = len(ds.bands)
    real = ds[0]

    class Constant(Dataset):
        """Zero-cost samples: a copy of a real ShardDataset sample, or its image alone."""

        def __init__(self, dtype: Any, meta: bool) -> None:
            self.dtype, self.meta = dtype, meta

        def __len__(self) -> int:
            return 10**8

        def __getitem__(self, i: int) -> dict[str, Any]:
            image = torch.zeros(c, TILE, TILE, dtype=self.dtype)
            return {**real, "image": image} if self.meta else {"image": image}

    def rate(dataset: Any, collate: Callable[[list[Any]], Any]) -> float:
        it = iter(DataLoader(dataset, batch_size=BATCH, num_workers=spec["workers"],
                             collate_fn=collate))
        next(it)
        count, started = 0, time.perf_counter()
        for batch in it:
            count += len(batch["image"])
            if time.perf_counter() - started >= 2.0:
                break
        return count / (time.perf_counter() - started)

    keys = ", ".join(k for k in real if k != "image")
    ceilings = {f"a real sample's structure (float32 image + {keys}), {collate_name}":
                rate(Constant(torch.float32, True), collate_fn),
                "float32 image only": rate(Constant(torch.float32, False), default_collate),
                "uint16 image only": rate(Constant(torch.uint16, False), default_collate)}
    return {"read_us": read * 1e6, "sample_us": sample * 1e6, "collate_us": collate * 1e6,
            "total_us": total * 1e6, "ceilings": ceilings, "channels": c, "collate": collate_name}


# --------------------------------------------------------------------------- report
def _median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


_MEASURED = ("rsmae/tiling", "rsmae/data", "rsmae/store.py", "rsmae/bands.py")


def _git_commit() -> str:
    """Commit of the repository (read-only git calls), flagged when the measured code has changes."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=REPO, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", *_MEASURED], capture_output=True,
                               text=True, cwd=REPO, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{head} + uncommitted changes in {', '.join(_MEASURED)}" if dirty else head


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
    return {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "cpu": _cpu_model(), "cores": f"{os.cpu_count()} logical, {affinity} usable",
            "load": load, "versions": ", ".join(f"{k} {v}" for k, v in versions.items()),
            "commit": _git_commit(),
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
        f"- CPU: {env['cpu']}, {env['cores']} cores; load average at start {env['load']} "
        "(shared machine: compare ratios within this run)",
        f"- Versions: {env['versions']}; rsmae commit {env['commit']}",
        f"- Tile size {TILE}, batch size {BATCH}, {args.repeats} repeats (median, min-max in "
        f"parentheses), loaders timed for {args.seconds:g} s or {args.samples} samples after one "
        "warm-up batch",
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
        "| scenes | loader | workers | samples/s | MB/s (float32 images) | peak RSS MB "
        "(main + workers) | PSS MB (main + workers) |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    rss_imports = _median([v for r in loaders if r["loader"] != "ratio" for v in r["rss_imports_mb"]])
    names = {"rsmae": "rsmae ShardDataset + ShardSampler (float32 from workers)",
             "rsmae-native": "rsmae ShardDataset(native=True) + ShardSampler (uint16 from workers, "
                             "normalised to float32 in the main process, timed)",
             "torchgeo": "torchgeo RasterDataset + RandomGeoSampler"}  # + the collate used
    for r in loaders:
        if r["loader"] == "ratio":
            ratio = _median(r["ratio"])
            met = "yes" if ratio >= TARGET_LOADER else f"no ({TARGET_LOADER / ratio:.1f}x short)"
            lines.append(f"| {r['dataset']} | **{r['of']} / torchgeo** | {r['workers']} | "
                         f"**{_fmt(r['ratio'], 1)}x** | target met: {met} | | |")
            continue
        lines.append(f"| {r['dataset']} ({r['channels']} bands) | {names[r['loader']]}, "
                     f"{r['collate']} | "
                     f"{r['workers']} | {_fmt(r['samples_per_s'], 0)} | {_fmt(r['mb_per_s'], 1)} | "
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
        "torchgeo samples random 128x128 windows anywhere in the scenes (nodata collar included); "
        "rsmae reads the kept tiles. torchgeo 0.8.1 needs `requests` to import "
        "`torchgeo.datasets`; when it is missing the benchmark registers a placeholder module.",
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
    lines += ["", "Blosc codecs on 64 kept Landsat tiles (3x128x128 uint16, mid-scene), per tile, "
              "best of 3:", "",
              "| codec | encode us | decode us | compression ratio |", "|---|---:|---:|---:|"]
    for c in profile["codecs"]:
        lines.append(f"| {c['codec']} | {c['encode_us']:.0f} | {c['decode_us']:.0f} | {c['ratio']:.2f} |")
    for name, lp in profile["loader"].items():
        lines += ["", f"ShardDataset per-sample cost in one process, {name} store ({lp['channels']} "
                  "bands, torch 1 thread as in workers, best of 3):", "",
                  f"- pread + Blosc decode: {lp['read_us']:.0f} us; float32 cast + normalise + dict: "
                  f"{lp['sample_us']:.0f} us; collate: {lp['collate_us']:.0f} us; "
                  f"total {lp['total_us']:.0f} us per sample "
                  f"(= {1e6 / lp['total_us']:.0f} samples/s per worker)",
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
    path.write_text("\n".join(out) + "\n")


# --------------------------------------------------------------------------- main
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
    sets = scene_sets(args.data.resolve())
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="rsmae-bench-") as tmp_name:
        tmp = Path(tmp_name)
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
                                                           "workers": args.workers})
            finally:
                child.close()
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
