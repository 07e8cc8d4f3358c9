"""The scene table: constant-size root attributes, appends, merged statistics, dataset index."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio

from rsmae.data import ShardDataset, split_scenes
from rsmae.errors import StoreConfigError
from rsmae.store import TileStore
from rsmae.tiling import TileConfig, tile_scenes
from tests.conftest import EUROSAT
from tests.store.store_helpers import assert_exact_statistics

CONFIG = TileConfig(tile_size=64, band_order="eurosat", label_from_dir=True, shard_tiles=8)


def _files(n: int) -> list[str]:
    """The first ``n`` EuroSAT patches in scene-id order (``class/name``), spread over classes."""
    by_class: dict[str, list[Path]] = {}
    for path in sorted(EUROSAT.rglob("*.tif")):
        by_class.setdefault(path.parent.name, []).append(path)
    rounds = [group[i] for i in range(n) for group in by_class.values() if i < len(group)]
    chosen = sorted(rounds[:n], key=lambda p: f"{p.parent.name}/{p.stem}")
    return [str(p) for p in chosen]


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Stores of 20 and 60 scenes, and one of the 60 made by appending 40 to the 20."""
    tmp = tmp_path_factory.mktemp("scale")
    files = _files(60)
    out = {"20": tmp / "s20.zarr", "60": tmp / "s60.zarr", "appended": tmp / "app.zarr"}
    tile_scenes(_files(20), out["20"], CONFIG)  # every class, as the 60
    tile_scenes(files, out["60"], CONFIG)
    tile_scenes(files[:20], out["appended"], CONFIG)
    tile_scenes(files, out["appended"], CONFIG)
    return out


def test_root_metadata_size_does_not_grow_with_scenes(stores: dict[str, Path]) -> None:
    small = (stores["20"] / "zarr.json").read_text()
    large = (stores["60"] / "zarr.json").read_text()
    assert abs(len(large) - len(small)) < 64  # digits of counts and statistics only
    first_id = str(TileStore.open(stores["60"]).scenes(["id"])["id"][0])
    assert first_id not in large and "files" not in large
    attrs = json.loads(large)["attributes"]
    assert "scenes" not in attrs and attrs["n_scenes"] == 60


def test_scene_table_round_trip(stores: dict[str, Path]) -> None:
    store = TileStore.open(stores["60"])
    table = store.scenes()
    files = _files(60)
    assert table["id"].tolist() == [f"{Path(f).parent.name}/{Path(f).stem}" for f in files]
    assert [t[0] for t in table["files"]] == files
    assert table["label"].tolist() == [Path(f).parent.name for f in files]
    assert set(table["split"].tolist()) == {""}  # files passed one by one: no split folder below
    assert table["n_tiles"].tolist() == [1] * 60 and int(table["n_tiles"].sum()) == store.attrs["tiles"]
    with rasterio.open(files[7]) as src:
        assert table["transform"][7].tolist() == list(src.transform)[:6]
        assert (table["width"][7], table["height"][7]) == (src.width, src.height)
        assert "UTM" in table["crs"][7] and src.crs.to_epsg() is not None
    part = store.scenes(["id", "files"], start=10, stop=13)
    assert part["id"].tolist() == table["id"][10:13].tolist()
    assert list(part["files"]) == list(table["files"][10:13])
    with pytest.raises(KeyError, match="no scene column"):
        store.scenes(["grid"])


def test_append_equals_one_run(stores: dict[str, Path]) -> None:
    once, appended = TileStore.open(stores["60"]), TileStore.open(stores["appended"])
    assert appended.batches().tolist() == [[0, 20, 0, 3], [20, 60, 3, 8]]
    a, b = once.scenes(), appended.scenes()
    for key in a:
        assert np.asarray(a[key]).tolist() == np.asarray(b[key]).tolist(), key
    assert once.attrs["stats"] == appended.attrs["stats"]  # integer data: exact histograms
    assert once.attrs["classes"] == appended.attrs["classes"]
    np.testing.assert_array_equal(once.read_tiles(once.index()), appended.read_tiles(appended.index()))
    again = tile_scenes(_files(60), stores["appended"], CONFIG)  # nothing new: nothing written
    assert (again.new_scenes, again.units_run, again.scenes, again.tiles_kept) == (0, 0, 60, 60)


def test_merged_statistics_equal_a_computation_from_the_pixels(stores: dict[str, Path]) -> None:
    store = TileStore.open(stores["appended"])
    tiles = assert_exact_statistics(store)
    hist, _ = store.stats_totals(store.attrs["stats_buffer"])
    assert int(hist.sum()) == tiles.size  # EuroSAT patches have no nodata pixel


def test_dataset_index_from_the_scene_table(stores: dict[str, Path]) -> None:
    store = TileStore.open(stores["appended"])
    ids = store.scenes(["id"])["id"].tolist()
    ds = ShardDataset(stores["appended"])
    slot_scene = store.array("scene")[:]
    assert len(ds) == 60
    for i in range(len(ds)):
        scene = ids[slot_scene[ds.table[i, 1]]]
        assert ds.scene_id(i) == scene
        assert ds.table[i, 5] == ds.classes.index(scene.split("/")[0])  # label: the class folder
    keep = ids[::7]
    subset = ShardDataset(stores["appended"], scenes=keep)
    assert sorted(subset.scene_id(i) for i in range(len(subset))) == sorted(keep)
    train, val = split_scenes(store.scenes(["id", "split"]), 0.1, seed=0)
    records = [{"id": i, "split": s} for i, s in zip(ids, store.scenes(["split"])["split"].tolist(),
                                                     strict=True)]
    assert (train, val) == split_scenes(records, 0.1, seed=0) and val


def test_store_of_format_1_reads_and_refuses_appends(stores: dict[str, Path], tmp_path: Path) -> None:
    """A store whose scene records are JSON attributes (format 1) still opens for reading."""
    import shutil

    import zarr

    old = tmp_path / "v1.zarr"
    shutil.copytree(stores["20"], old)
    store = TileStore.open(old)
    table = store.scenes()
    records = [{"id": str(table["id"][i]), "sensor": "s2-l1c", "files": list(table["files"][i]),
                "date": None, "label": str(table["label"][i]), "split": str(table["split"][i]),
                "grid": {"crs": table["crs"][i], "transform": table["transform"][i].tolist(),
                         "width": 64, "height": 64}, "nodata": 0.0} for i in range(20)]
    group = zarr.open_group(old, mode="r+", zarr_format=3)
    group.attrs.update({"rsmae_format": 1, "scenes": records, "batches": [[0, 20, 0, 3]]})
    shutil.rmtree(old / "scenes")
    v1 = TileStore.open(old)
    assert v1.n_scenes == 20 and v1.scenes(["id"])["id"].tolist() == table["id"].tolist()
    ds, new = ShardDataset(old), ShardDataset(stores["20"])
    np.testing.assert_array_equal(ds.table, new.table)
    assert [ds.scene_id(i) for i in range(len(ds))] == [new.scene_id(i) for i in range(len(new))]
    assert v1.georef(int(v1.index()[3]))["scene"] == str(table["id"][3])
    with pytest.raises(StoreConfigError, match="older rsmae.*--overwrite"):
        tile_scenes(_files(20), old, CONFIG)


def test_registration_killed_before_its_counts_is_redone(stores: dict[str, Path], tmp_path: Path) -> None:
    """Scene rows and unit arrays written past the registered counts are overwritten by a re-run."""
    out = tmp_path / "killed.zarr"
    files = _files(60)
    first = TileStore.open(stores["appended"]).scenes(start=20)
    tile_scenes(files[:20], out, CONFIG)
    store = TileStore.open(out, mode="r+")
    rows = {k: v[:5] for k, v in first.items() if k != "n_tiles"}
    rows["crs"] = rows["crs"].tolist()
    store.write_scenes(20, rows)  # what a run killed after writing its rows leaves
    store.resize_units(9)
    assert store.n_scenes == 20 and TileStore.open(out).scenes(["id"])["id"].tolist() == files_ids(files[:20])
    tile_scenes(files, out, CONFIG)
    done, appended = TileStore.open(out), TileStore.open(stores["appended"])
    for key, column in appended.scenes().items():
        assert np.asarray(done.scenes([key])[key]).tolist() == np.asarray(column).tolist(), key
    assert done.attrs["stats"] == appended.attrs["stats"] and done.units_done().all()


def files_ids(files: list[str]) -> list[str]:
    """Scene ids (``class/name``) of EuroSAT files."""
    return [f"{Path(f).parent.name}/{Path(f).stem}" for f in files]


def test_a_rerun_with_more_inputs_parses_only_the_new_files(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    import rsmae.tiling.scenes as scenes_module

    files = _files(12)
    out = tmp_path / "s.zarr"
    tile_scenes(files[:8], out, CONFIG)
    parsed: list[str] = []
    real = scenes_module._file_scene
    monkeypatch.setattr(scenes_module, "_file_scene",
                        lambda path, *a: parsed.append(str(path)) or real(path, *a))
    summary = tile_scenes(files, out, CONFIG)  # every earlier input passed again, 4 new ones
    assert sorted(parsed) == sorted(files[8:]) and summary.new_scenes == 4
    ids = TileStore.open(out).scenes(["id"])["id"].tolist()
    assert sorted(ids) == sorted(f"{Path(f).parent.name}/{Path(f).stem}" for f in files)
