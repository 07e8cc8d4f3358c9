"""Robust long runs: bad scenes skipped and recorded (exit 3), the store lock, --nodata in the warp.

Real files throughout: EuroSAT patches (two of them made corrupt), OSCD bands (one damaged, one
with a fill region).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import shutil
import signal
import socket
from pathlib import Path

import numpy as np
import pytest
import rasterio

from rsmae.errors import StoreLockedError
from rsmae.store import TileStore
from rsmae.tiling import TileConfig, tile_scenes
from rsmae.tiling.lock import lock_path, store_lock
from tests.conftest import EUROSAT, OSCD, load_script

inspect_store = load_script("pipelines/inspect_store.py")
tile = load_script("pipelines/tile.py")

CTX = mp.get_context("fork")  # the child only takes the file lock
ARGS = ["--band-order", "eurosat", "--tile-size", "32", "--shard-tiles", "4"]
PISA, SACLAY = OSCD / "pisa" / "imgs_1", OSCD / "saclay_e" / "imgs_1"


@pytest.fixture()
def patches(tmp_path: Path) -> tuple[Path, list[Path], Path, Path]:
    """Six real EuroSAT patches, one truncated copy, one copy with 12 of its 13 bands."""
    folder = tmp_path / "in" / "patches"
    folder.mkdir(parents=True)
    sources = sorted(EUROSAT.rglob("*.tif"))[:8]
    good = [Path(shutil.copy(p, folder / p.name)) for p in sources[:6]]
    truncated = folder / sources[6].name
    truncated.write_bytes(sources[6].read_bytes()[:20000])
    wrong = folder / sources[7].name
    with rasterio.open(sources[7]) as src:
        data, profile = src.read()[:12], {**src.profile, "count": 12}
    with rasterio.open(wrong, "w", **profile) as dst:
        dst.write(data)
    return folder, good, truncated, wrong


def test_bad_scenes_skipped_recorded_then_completed(patches, tmp_path, capsys):
    folder, good, truncated, wrong = patches
    out = tmp_path / "s.zarr"
    assert tile.main([str(folder), *ARGS, "--out", str(out)]) == 3
    err = capsys.readouterr().err
    assert f"skipped patches/{truncated.stem}: " in err and f"skipped patches/{wrong.stem}: " in err
    assert "2 scene(s) skipped" in err
    store = TileStore.open(out)  # the good ones are committed: 4 tiles of 32 px per 64-px patch
    assert store.complete and store.attrs["tiles"] == 4 * len(good)
    skipped = store.skipped()
    assert skipped["id"].tolist() == sorted([f"patches/{truncated.stem}", f"patches/{wrong.stem}"])
    reasons = dict(zip(skipped["id"].tolist(), skipped["reason"].tolist(), strict=True))
    assert str(truncated) in reasons[f"patches/{truncated.stem}"]
    assert "has 12 band(s)" in reasons[f"patches/{wrong.stem}"]
    ids = store.scenes(["id"])["id"].tolist()  # the registered, skipped one has lost its id
    assert sorted(ids) == ["", *sorted(f"patches/{p.stem}" for p in good)]
    assert inspect_store.main([str(out)]) == 0  # counts tiled scenes only, and says what was skipped
    assert f"{len(good)} scenes (2 skipped: rerun tile.py" in capsys.readouterr().out
    shutil.copy(EUROSAT.rglob(truncated.name).__next__(), truncated)  # fixed
    assert tile.main([str(folder), *ARGS, "--out", str(out)]) == 3  # the other one is still bad
    capsys.readouterr()
    store = TileStore.open(out)
    assert store.skipped()["id"].tolist() == [f"patches/{wrong.stem}"]
    # the unchanged bad file is not read again: its record (batch 0) stays, and says so again
    assert store.attrs["tiles"] == 4 * (len(good) + 1) and store.skipped()["batch"].tolist() == [0]
    batches = store.attrs["n_batches"]
    assert tile.main([str(folder), *ARGS, "--out", str(out)]) == 3  # a rerun changes nothing
    assert f"skipped patches/{wrong.stem}: " in capsys.readouterr().err
    assert TileStore.open(out).attrs["n_batches"] == batches
    wrong.unlink()  # removed
    assert tile.main([str(folder), *ARGS, "--out", str(out)]) == 0
    store = TileStore.open(out)
    assert store.complete and len(store.skipped()["id"]) == 0 and store.attrs["tiles"] == 28
    reference = tmp_path / "ref.zarr"  # the same scenes tiled at once, never a bad file among them
    tile_scenes([str(folder)], reference, TileConfig(tile_size=32, band_order="eurosat",
                                                     shard_tiles=4))
    ref = TileStore.open(reference)
    assert store.attrs["stats"] == ref.attrs["stats"]
    assert sorted(set(store.scenes(["id"])["id"].tolist()) - {""}) == sorted(
        ref.scenes(["id"])["id"].tolist())


def test_strict_keeps_all_or_nothing(patches, tmp_path, capsys):
    folder = patches[0]
    out = tmp_path / "s.zarr"
    assert tile.main([str(folder), *ARGS, "--strict", "--out", str(out)]) == 2
    assert capsys.readouterr().err.startswith("error: ") and not out.exists()


@pytest.mark.slow
def test_damaged_block_leaves_no_tile_of_its_scene(tmp_path, capsys):
    """A band whose tail is cut: its scene's first units read, later ones fail: all of it goes."""
    bad = tmp_path / "bad" / "imgs_1"
    shutil.copytree(SACLAY, bad)
    victim = next(bad.glob("*_B03.tif"))
    victim.write_bytes(victim.read_bytes()[:-200000])
    args = ["--tile-size", "64", "--shard-tiles", "4", "--bands", "B02,B03,B04"]
    out, alone = tmp_path / "s.zarr", tmp_path / "alone.zarr"
    assert tile.main([str(PISA), str(bad), *args, "--out", str(out)]) == 3
    assert tile.main([str(PISA), *args, "--out", str(alone)]) == 0
    store, ref = TileStore.open(out), TileStore.open(alone)
    tiles = store.tile_table()
    assert set(tiles["scene"].tolist()) == {1} and store.skipped()["id"].tolist() == ["bad/imgs_1"]
    assert store.unit_skips(0, store.attrs["n_units"]) == {0: store.skipped()["reason"][0]}
    np.testing.assert_array_equal(store.read_tiles(tiles["slot"]), ref.read_tiles(ref.index()))
    assert store.attrs["stats"] == ref.attrs["stats"]  # no pixel of the damaged scene counted
    assert store.scenes(["id", "n_tiles"])["n_tiles"].tolist() == [0, len(ref.index())]


def _hold(store: str, held: mp.Event, release: mp.Event) -> None:
    with store_lock(store):
        held.set()
        release.wait(60)


def _hold_forever(store: str, held: mp.Event) -> None:
    with store_lock(store):
        held.set()
        signal.pause()


def test_second_run_on_one_store_fails_naming_the_holder(patches, tmp_path, capsys):
    folder, out = patches[0], tmp_path / "s.zarr"
    held, release = CTX.Event(), CTX.Event()
    child = CTX.Process(target=_hold, args=(str(out), held, release))
    child.start()
    try:
        assert held.wait(20)
        with pytest.raises(StoreLockedError, match=f"pid {child.pid} on host {socket.gethostname()}"):
            tile_scenes([str(folder)], out, TileConfig(tile_size=32, band_order="eurosat"))
        assert tile.main([str(folder), *ARGS, "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and f"pid {child.pid}" in err and str(lock_path(out)) in err
        assert not out.exists()  # the second run wrote nothing
    finally:
        release.set()
        child.join(20)


def test_stale_lock_of_a_killed_run_is_taken_over_by_a_run(patches, tmp_path, capsys):
    folder, out = patches[0], tmp_path / "s.zarr"
    held = CTX.Event()
    child = CTX.Process(target=_hold_forever, args=(str(out), held))
    child.start()
    assert held.wait(20)
    os.kill(child.pid, signal.SIGKILL)
    child.join(20)
    assert lock_path(out).exists()  # left behind
    assert tile.main([str(folder), *ARGS, "--out", str(out)]) == 3  # runs (two bad patches)
    assert TileStore.open(out).complete and not lock_path(out).exists()


def _fill_scene(folder: Path) -> int:
    """Pisa's B02 (10 m) and B05 (20 m) with the left 30 columns of B05 set to fill (0)."""
    folder.mkdir(parents=True)
    shutil.copy(next(PISA.glob("*_B02.tif")), folder / "x_B02.tif")
    with rasterio.open(next(PISA.glob("*_B05.tif"))) as src:
        data, profile = src.read(), src.profile
    data[:, :, :30] = 0
    with rasterio.open(folder / "x_B05.tif", "w", **profile) as dst:
        dst.write(data)
    return int(data[0, :, 30:].min())


def test_nodata_reaches_the_warp_in_a_tiling_run(tmp_path):
    low = _fill_scene(tmp_path / "scene")
    config = {"tile_size": 64, "bands": ("B02", "B05"), "max_nodata": 1.0}
    tile_scenes([str(tmp_path / "scene")], tmp_path / "n0.zarr", TileConfig(nodata=0, **config))
    tile_scenes([str(tmp_path / "scene")], tmp_path / "none.zarr", TileConfig(nodata=None, **config))
    clean = TileStore.open(tmp_path / "n0.zarr")
    b05 = clean.read_tiles(clean.index())[:, 1]
    assert (b05 == 0).any() and not ((b05 > 0) & (b05 < low)).any()  # fill, or a valid blend
    blended = TileStore.open(tmp_path / "none.zarr")
    b05 = blended.read_tiles(blended.index())[:, 1]
    assert ((b05 > 0) & (b05 < low)).any()  # without --nodata the fill blends in (the test bites)
