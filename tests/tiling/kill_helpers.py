"""Kill a tiling run at a chosen moment: the run in its own process group, SIGKILLed as a whole.

The run is forked from a fork server that has imported the tiler already, so a kill point costs
the work up to it, not an interpreter start; the run's worker processes (local pool or Dask
nannies it starts) share its process group and die with it.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.windows import Window

from rsmae.store import TileStore
from rsmae.store.skipped import COLUMNS

_CTX = multiprocessing.get_context("forkserver")
_CTX.set_forkserver_preload(["rsmae.tiling", "tests.tiling.kill_helpers"])


def _child(args: tuple[Any, ...], kwargs: dict[str, Any], ready: Any) -> None:  # noqa: ANN401
    os.setpgid(0, 0)  # its own group: the pool or cluster it starts dies with it
    from rsmae.tiling import tile_scenes

    ready.set()
    tile_scenes(*args, **kwargs)


def _crashing_child(limit: int, root_only: bool, args: tuple[Any, ...],
                    kwargs: dict[str, Any]) -> None:  # noqa: ANN401
    from zarr.storage import LocalStore

    from rsmae.tiling import tile_scenes

    count, if_absent = [0], LocalStore.set_if_not_exists  # never overwrites an existing root
    for name in ("set", "set_if_not_exists", "delete", "delete_dir", "move"):
        method = getattr(LocalStore, name)

        async def counted(self: LocalStore, key: str = "", *rest: Any, _method: Any = method,
                          **kw: Any) -> Any:  # noqa: ANN401
            if not root_only or (key == "zarr.json" and _method is not if_absent):
                count[0] += 1
                if count[0] > limit:
                    os._exit(9)  # as SIGKILL: no cleanup, no flush
            return await _method(self, key, *rest, **kw)

        setattr(LocalStore, name, counted)
    tile_scenes(*args, **kwargs)


def crash_after_writes(limit: int, *args: Any, root_only: bool = True, **kwargs: Any) -> bool:  # noqa: ANN401
    """Run ``tile_scenes(*args, **kwargs)``, dying the moment it makes store write ``limit + 1``.

    Writes are the store's mutations (set, delete, move); ``root_only`` counts only the root
    ``zarr.json`` (not the no-op ``set_if_not_exists`` of parents), where a run's commit points
    are. Returns whether the run finished first.
    """
    proc = _CTX.Process(target=_crashing_child, args=(limit, root_only, args, kwargs))
    proc.start()
    proc.join(300)
    if proc.exitcode not in (0, 9):
        raise RuntimeError(f"tiling child failed (exit {proc.exitcode})")
    return proc.exitcode == 0


def run_until(delay: float | None, *args: Any, **kwargs: Any) -> float:  # noqa: ANN401
    """Run ``tile_scenes(*args, **kwargs)`` in a process group, SIGKILLed ``delay`` s after it starts.

    ``delay=None`` lets it finish. Returns the seconds from its start to its end (or the kill).
    """
    ready = _CTX.Event()
    proc = _CTX.Process(target=_child, args=(args, kwargs, ready))
    proc.start()
    if not ready.wait(60):
        raise RuntimeError("the tiling child did not start")
    started = time.perf_counter()
    if delay is None:
        proc.join(300)
        if proc.exitcode != 0:
            raise RuntimeError(f"uninterrupted tiling run failed (exit {proc.exitcode})")
    else:
        proc.join(delay)
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:  # finished before the kill point, its group gone
            pass
        proc.join(60)
    return time.perf_counter() - started


def crop_scenes(source: Path, folder: Path, names: list[str], size: int = 256) -> list[str]:
    """Write real crops of ``source`` (one GeoTIFF each, shifted by ``size // 2`` columns)."""
    paths = []
    with rasterio.open(source) as src:
        for i, name in enumerate(names):
            window = Window(400 + (size // 2) * i, 600, size, size)
            profile = {**src.profile, "width": size, "height": size, "tiled": False,
                       "transform": src.window_transform(window)}
            profile.pop("blockxsize", None)
            profile.pop("blockysize", None)
            path = folder / name
            path.parent.mkdir(parents=True, exist_ok=True)
            with rasterio.open(path, "w", **profile) as dst:
                dst.write(src.read(window=window))
            paths.append(str(path))
    return paths


def crop_band_folder(source: Path, folder: Path, size: int) -> str:
    """Copy a band folder (one file per band, mixed resolutions), its top-left ``size`` px at 10 m."""
    files = sorted(source.glob("*.tif"))
    finest = min(rasterio.open(f).transform.a for f in files)
    folder.mkdir(parents=True, exist_ok=True)
    for f in files:
        with rasterio.open(f) as src:
            n = round(size * finest / src.transform.a)
            window = Window(0, 0, n, n)
            profile = {**src.profile, "width": n, "height": n, "transform": src.window_transform(window)}
            with rasterio.open(folder / f.name, "w", **profile) as dst:
                dst.write(src.read(window=window))
    return str(folder)


def store_content(path: Path) -> dict[str, Any]:
    """Everything a finished store holds but its command line and run bookkeeping.

    Tiles, scene table, per-unit records, index, statistics and the skipped table.
    """
    store = TileStore.open(path)
    attrs = {k: v for k, v in store.attrs.items() if k not in ("command", "committed", "run_id")}
    arrays = {name: store.array(name)[:] for name in
              ("images", "scene", "row", "col", "valid", "index", "unit_count", "unit_hist")}
    scenes = {f"scenes/{k}": v for k, v in store.scenes().items() if k not in ("crs", "files")}
    files = json.dumps([list(f) for f in store.scenes(["files"])["files"]])
    skipped = {f"skipped/{k}": v for k, v in store.skipped().items()}
    assert set(store.skipped()) == set(COLUMNS)
    return {"attrs": attrs, "files": files, **arrays, **scenes, **skipped}


def assert_same_store(a: Path, b: Path) -> None:
    """``a`` and ``b`` hold the same tiles, scene table, statistics and skipped table."""
    ca, cb = store_content(a), store_content(b)
    assert ca.keys() == cb.keys()
    attrs = {k: (ca["attrs"].get(k), cb["attrs"].get(k)) for k in ca["attrs"].keys() | cb["attrs"].keys()
             if ca["attrs"].get(k) != cb["attrs"].get(k)}
    assert not attrs, f"root attributes differ (first store, second store): {attrs}"
    assert ca["files"] == cb["files"]
    for key in ca:
        if key not in ("attrs", "files"):
            np.testing.assert_array_equal(ca[key], cb[key], err_msg=key)
