"""Every write of a tiling run survives a kill, and input files stay data (issue 18).

Real EuroSAT patches throughout (one made unreadable, so the store has a skipped scene).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from rsmae.bands import get_sensor
from rsmae.errors import RasterReadError, StoreRunChangedError
from rsmae.files import remove_tree
from rsmae.store import TileStore
from rsmae.tiling import TileConfig, tile_scenes
from rsmae.tiling.finalise import RunContext, unit_tasks
from rsmae.tiling.scenes import discover_scenes
from rsmae.tiling.units import run_unit
from tests.conftest import EUROSAT
from tests.tiling.kill_helpers import assert_same_store

CONFIG = TileConfig(tile_size=32, band_order="eurosat", shard_tiles=4)


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    """Four real EuroSAT patches and one truncated copy (skipped: 'read failed')."""
    folder = tmp_path / "in" / "patches"
    folder.mkdir(parents=True)
    sources = sorted(EUROSAT.rglob("*.tif"))[:5]
    for p in sources[:4]:
        shutil.copy(p, folder / p.name)
    (folder / sources[4].name).write_bytes(sources[4].read_bytes()[:20000])
    return folder


def test_a_task_of_another_run_writes_nothing(folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "s.zarr"
    tile_scenes([str(folder)], out, CONFIG)
    store = TileStore.open(out, mode="r+")
    scenes = discover_scenes([str(folder)], get_sensor(CONFIG.sensor), CONFIG.band_names(),
                             band_order="eurosat")
    run = RunContext(scenes, CONFIG, 1, None, None)  # a new run id, not the store's
    task = unit_tasks(store, run, start=0, units={0})[0]
    slots = np.arange(CONFIG.shard_tiles)
    store.array("images")[slots] = 0  # what the stale task would overwrite
    with pytest.raises(StoreRunChangedError, match="unit 0 belongs to run"):
        run_unit(task)
    assert not store.read_tiles(slots).any()
    store.update_attrs(run_id=run.run_id)  # once the run owns the store, the same task writes
    run_unit(task)
    assert store.read_tiles(slots).any()


@pytest.fixture()
def stores(folder: Path, tmp_path: Path) -> tuple[Path, Path]:
    """The same store twice: one to damage, one untouched to compare with."""
    out, reference = tmp_path / "s.zarr", tmp_path / "ref.zarr"
    tile_scenes([str(folder)], out, CONFIG)
    tile_scenes([str(folder)], reference, CONFIG)
    return out, reference


def test_an_uncommitted_skipped_table_is_invisible_then_dropped(folder: Path,
                                                                stores: tuple[Path, Path]) -> None:
    out, reference = stores
    store = TileStore.open(out, mode="r+")
    before = store.skipped()
    assert before["id"].tolist() and before["stamp"][0]  # the truncated patch, with its files' stamp
    store.write_skipped({k: [] for k in before})  # a run killed before its commit
    assert store.skipped()["id"].tolist() == before["id"].tolist()
    tile_scenes([str(folder)], out, CONFIG)  # the rerun tidies up
    assert sorted(n for n, _ in TileStore.open(out)._group.groups() if n.startswith("skipped")) == \
        ["skipped_1"]
    assert_same_store(reference, out)


def test_a_kill_between_commit_and_clearing_ids_is_repaired(folder: Path, stores: tuple[Path, Path]) -> None:
    out, reference = stores
    store = TileStore.open(out, mode="r+")
    table = store.skipped()
    row, sid = int(table["row"][0]), str(table["id"][0])
    store._scene_table()._array("id")[row] = sid  # the commit landed, the clearing did not
    summary = tile_scenes([str(folder)], out, CONFIG)
    assert [s.scene_id for s in summary.skipped] == [sid] and summary.units_run == 0
    assert_same_store(reference, out)


def test_a_skipped_scene_is_retried_when_its_file_changes(folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "s.zarr"
    first = tile_scenes([str(folder)], out, CONFIG)
    again = tile_scenes([str(folder)], out, CONFIG)
    assert again.units_run == 0 and [s.scene_id for s in again.skipped] == \
        [s.scene_id for s in first.skipped]
    bad = Path(first.skipped[0].file)
    shutil.copy(next(EUROSAT.rglob(bad.name)), bad)  # fixed
    fixed = tile_scenes([str(folder)], out, CONFIG)
    assert fixed.skipped == [] and fixed.tiles_kept == first.tiles_kept + 4


def test_a_store_removal_killed_half_way_leaves_nothing_under_its_name(folder: Path, tmp_path: Path,
                                                                       monkeypatch) -> None:
    out = tmp_path / "s.zarr"
    tile_scenes([str(folder)], out, CONFIG)

    def killed(path: object, ignore_errors: bool = False) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(shutil, "rmtree", killed)
    with pytest.raises(KeyboardInterrupt):
        remove_tree(out)
    monkeypatch.undo()
    assert not out.exists() and len(list(tmp_path.glob(".s.zarr.removing-*"))) == 1
    tile_scenes([str(folder)], out, CONFIG)  # a new store there
    remove_tree(out)  # also deletes what the killed removal left aside
    assert not list(tmp_path.glob(".s.zarr*")) and not out.exists()


def test_a_store_creation_killed_half_way_leaves_no_store(folder: Path, tmp_path: Path,
                                                         monkeypatch) -> None:
    import rsmae.store.layout as layout

    def killed(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(layout, "create_layout", killed)
    out = tmp_path / "s.zarr"
    with pytest.raises(KeyboardInterrupt):
        tile_scenes([str(folder)], out, CONFIG)
    monkeypatch.undo()
    assert not out.exists() and not list(tmp_path.glob(".s.zarr*"))
    assert tile_scenes([str(folder)], out, CONFIG).tiles_kept == 16


def _vrt(path: Path, source: str, relative: bool = True, extra: str = "") -> Path:
    path.write_text(f"""<VRTDataset rasterXSize="64" rasterYSize="64">
  <VRTRasterBand dataType="UInt16" band="1">{extra}
    <SimpleSource>
      <SourceFilename relativeToVRT="{int(relative)}">{source}</SourceFilename>
      <SourceBand>1</SourceBand>
    </SimpleSource>
  </VRTRasterBand>
</VRTDataset>
""")
    return path


@pytest.mark.parametrize(("source", "relative", "message"), [
    ("../outside/patch.tif", True, "outside its folder"),
    ("/vsicurl/http://127.0.0.1:9/patch.tif", False, "virtual file system"),
])
def test_a_vrt_reading_outside_its_folder_is_refused(tmp_path: Path, source: str, relative: bool,
                                                    message: str) -> None:
    (tmp_path / "outside").mkdir()
    shutil.copy(next(EUROSAT.rglob("*.tif")), tmp_path / "outside" / "patch.tif")
    (tmp_path / "in").mkdir()
    vrt = _vrt(tmp_path / "in" / "scene.vrt", source, relative)
    config = TileConfig(tile_size=32, sensor="rgb", bands=("R",), band_order="R")
    with pytest.raises(RasterReadError, match=message) as err:
        tile_scenes([str(vrt)], tmp_path / "s.zarr", config)
    assert str(vrt) in str(err.value) and "--allow-vrt-outside" in str(err.value)
    assert not (tmp_path / "s.zarr").exists()
    if not source.startswith("/vsi"):  # the user's opt-in
        opted = TileConfig(**{**config.__dict__, "allow_vrt_outside": True})
        assert tile_scenes([str(vrt)], tmp_path / "s.zarr", opted).scenes == 1


def test_a_vrt_inside_its_folder_is_tiled_and_code_in_one_is_refused(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    shutil.copy(next(EUROSAT.rglob("*.tif")), tmp_path / "in" / "patch.tif")
    vrt = _vrt(tmp_path / "in" / "scene.vrt", "patch.tif")
    config = TileConfig(tile_size=32, sensor="rgb", bands=("R",), band_order="R")
    assert tile_scenes([str(vrt)], tmp_path / "s.zarr", config).tiles_kept == 4
    code = _vrt(tmp_path / "in" / "code.vrt", "patch.tif", extra="""
    <PixelFunctionLanguage>Python</PixelFunctionLanguage>""")
    with pytest.raises(RasterReadError, match="Python pixel functions"):
        tile_scenes([str(code)], tmp_path / "t.zarr", config)
