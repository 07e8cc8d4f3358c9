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
from loader_common import BATCH, TILE, SceneSet
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

