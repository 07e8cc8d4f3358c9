"""Loader benchmark, ``--profile``: where the time of tiling and of the loader goes."""

from __future__ import annotations

import cProfile
import pstats
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from loader_common import BATCH, SceneSet
from loader_throughput import rsmae_collate
from loader_tiling import run_tiling
from rasterio.windows import Window

_TILING_PARTS = (
    ("scene discovery", "rsmae/tiling/scenes.py", "discover_scenes"),
    ("header checks (scene_grid)", "rsmae/tiling/run.py", "_plan_scenes"),
    ("store create/register", "rsmae/tiling/run.py", "_open_or_create"),
    ("read windows (SceneReader.read)", "rsmae/tiling/grid.py", "read"),
    ("nodata masks (valid_mask)", "rsmae/tiling/units.py", "valid_mask"),
    ("statistics (accumulate)", "rsmae/tiling/stats.py", "accumulate"),
    ("write_unit (zarr + Blosc encode)", "rsmae/store/tile_store.py", "write_unit"),
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

    src, tile = s.inputs[0], s.tile
    with rasterio.open(src) as ds:  # 4 tile rows from the middle of the scene (no collar)
        top = (ds.height // 2 // tile - 2) * tile
        data = ds.read(window=Window(0, top, (ds.width // tile) * tile, 4 * tile))
    c, h, w = data.shape
    tiles = data.reshape(c, h // tile, tile, w // tile, tile).transpose(1, 3, 0, 2, 4)
    tiles = tiles.reshape(-1, c, tile, tile)
    valid = (tiles != 0).any(axis=1).mean(axis=(1, 2)) >= 0.9  # kept tiles only, as in a store
    tiles = np.ascontiguousarray(tiles[valid][:64])
    rows = []
    for name, codec in (("zstd clevel 3 bitshuffle", Blosc("zstd", 3, Blosc.BITSHUFFLE)),
                        ("lz4 clevel 5 bitshuffle", Blosc("lz4", 5, Blosc.BITSHUFFLE)),
                        ("zstd clevel 1 bitshuffle", Blosc("zstd", 1, Blosc.BITSHUFFLE))):
        encoded = [codec.encode(t) for t in tiles]
        enc = _timeit(lambda c=codec: [c.encode(t) for t in tiles], 1)
        dec = _timeit(lambda c=codec, e=encoded: [c.decode(x) for x in e], 1)
        rows.append({"codec": name, "tile": f"{c}x{tile}x{tile} {tiles.dtype}",
                     "encode_us": enc / len(tiles) * 1e6,
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

    from rsmae.data.batch import TileBatch, batch_tensors
    from rsmae.data.dataset import ShardDataset
    from rsmae.data.sampler import ShardSampler

    torch.set_num_threads(1)  # as in DataLoader workers
    collate_fn, collate_name = rsmae_collate()
    ds = ShardDataset(spec["store"])
    order = np.asarray(list(ShardSampler(ds))[: 8 * BATCH])
    batches = [order[k : k + BATCH] for k in range(0, len(order) - BATCH + 1, BATCH)]
    reader = ds._arrays(0)
    n = len(batches) * BATCH
    read = _timeit(lambda: [reader.read(ds.table[b, 1]) for b in batches], 3) / n
    getitems = _timeit(lambda: [ds.__getitems__(b) for b in batches], 3) / n
    items = [ds.__getitems__(b) for b in batches]
    collate = _timeit(lambda: [collate_fn(x) for x in items], 3) / n
    total = _timeit(lambda: [collate_fn(ds.__getitems__(b)) for b in batches], 3) / n
    per_item = _timeit(lambda: [collate_fn([ds[int(i)] for i in b]) for b in batches], 1) / n
    c, tile = len(ds.bands), spec["tile"]
    real = ds[0]
    native_dtype = reader.dtype

    class Batched(Dataset):
        """Zero-cost batches: ``__getitems__`` returns a TileBatch of uninitialised tensors (one storage)."""

        def __init__(self, dtype: Any) -> None:
            self.dtype = dtype

        def __len__(self) -> int:
            return 10**8

        def __getitems__(self, indices: list[int]) -> TileBatch:
            return TileBatch(batch_tensors(len(indices), (c, tile, tile), self.dtype))

    class Constant(Dataset):
        """Zero-cost samples: a copy of a real ShardDataset sample, or its image alone."""

        def __init__(self, dtype: Any, meta: bool) -> None:
            self.dtype, self.meta = dtype, meta

        def __len__(self) -> int:
            return 10**8

        def __getitem__(self, i: int) -> dict[str, Any]:
            image = torch.zeros(c, tile, tile, dtype=self.dtype)
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
    ceilings = {"TileBatch of shared-memory float32 images (ShardDataset's batches)":
                rate(Batched(np.dtype(np.float32)), collate_fn),
                f"TileBatch of shared-memory {native_dtype} images (native=True)":
                rate(Batched(native_dtype), collate_fn),
                f"a real sample's structure (float32 image + {keys}), {collate_name}":
                rate(Constant(torch.float32, True), collate_fn),
                "float32 image only": rate(Constant(torch.float32, False), default_collate),
                f"{native_dtype} image only": rate(Constant(torch.from_numpy(np.empty(0, native_dtype)).dtype,
                                                            False), default_collate)}
    return {"read_us": read * 1e6, "sample_us": (getitems - read) * 1e6, "collate_us": collate * 1e6,
            "total_us": total * 1e6, "per_item_us": per_item * 1e6, "ceilings": ceilings,
            "channels": c, "collate": collate_name}

