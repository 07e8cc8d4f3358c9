"""End-to-end tiling on real scenes: grids, bands, statistics, determinism, resume, Dask."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
import zarr

from rsmae.store import TileStore
from rsmae.tiling import TileConfig, tile_scenes
from tests.conftest import BIGEARTHNET, DATA, EUROSAT, LANDSAT, OSCD, ROOT, load_script
from tests.store.store_helpers import assert_exact_statistics
from tests.tiling.kill_helpers import assert_same_store

TWO_CITIES = [str(OSCD / "pisa" / "imgs_1"), str(OSCD / "saclay_e" / "imgs_1")]


def _record(store: TileStore, i: int) -> dict:
    """Scene ``i`` of the scene table as a dict (the shape of the former JSON records)."""
    c = {k: v[0] for k, v in store.scenes(start=i, stop=i + 1).items()}
    return {"id": str(c["id"]), "files": list(c["files"]), "date": str(c["date"]) or None,
            "label": str(c["label"]) or None, "split": str(c["split"]) or None,
            "grid": {"crs": c["crs"], "transform": c["transform"].tolist(),
                     "width": int(c["width"]), "height": int(c["height"])}}


def test_bigearthnet_mixed_resolution_aligned(bigearthnet_store: Path) -> None:
    store = TileStore.open(bigearthnet_store)
    assert store.band_names[0] == "B01" and "B10" not in store.band_names
    assert store.attrs["tiles"] == 24  # 6 patches of 120x120 at 10 m, 60-px tiles
    scene = _record(store, 0)
    folder = BIGEARTHNET / scene["id"].split("/", 1)[1]
    assert scene["id"].startswith("bigearthnet_s2_samples/")
    first = store.read_tiles(store.index()[:1])[0]
    with rasterio.open(next(folder.glob("*_B02.tif"))) as src:
        assert src.width == 120
        np.testing.assert_array_equal(first[1], src.read(1)[:60, :60])
    with rasterio.open(next(folder.glob("*_B01.tif"))) as src:  # 60 m band, 20x20 px
        coarse = src.read(1).astype(float)
    # resampled onto the 10 m grid: the mean of a 60x60 tile matches the 10x10 coarse block
    assert abs(first[0].mean() - coarse[:10, :10].mean()) / coarse[:10, :10].mean() < 0.02


def test_statistics_exact(bigearthnet_store: Path) -> None:
    assert_exact_statistics(TileStore.open(bigearthnet_store))


def test_eurosat_band_layout_and_labels(eurosat_store: Path) -> None:
    store = TileStore.open(eurosat_store)
    attrs = store.attrs
    assert attrs["tiles"] == 270 and len(attrs["classes"]) == 10
    b8a = store.band_names.index("B8A")
    assert b8a == 8  # canonical position, although EuroSAT files keep B8A last
    k = 5
    record = _record(store, int(store.array("scene")[store.index()[k]]))
    path = Path(record["files"][0])
    assert path.is_relative_to(EUROSAT) and record["id"] == f"{path.parent.name}/{path.stem}"
    with rasterio.open(path) as src:
        raw = src.read()
    tile = store.read_tiles(store.index()[k : k + 1])[0]
    np.testing.assert_array_equal(tile[b8a], raw[12])
    np.testing.assert_array_equal(tile[9], raw[8])  # B09
    assert record["label"] == path.parent.name and record["split"] in ("train", "test")
    assert attrs["stats"]["B8A"]["mean"] == pytest.approx(2595.8, abs=0.1)  # data card value


def test_oscd_geographic_crs_and_dates(tmp_path: Path) -> None:
    out = tmp_path / "pisa.zarr"
    summary = tile_scenes([str(OSCD / "pisa" / "imgs_1")], out, TileConfig(tile_size=128))
    store = TileStore.open(out)
    scene = _record(store, 0)
    assert scene["date"] == "2015-07-04"  # from dates.txt, not the processing date in names
    with rasterio.open(next((OSCD / "pisa" / "imgs_1").glob("*_B02.tif"))) as src:
        width, height = src.width, src.height  # the 10 m grid is the reference
    assert (scene["grid"]["width"], scene["grid"]["height"]) == (width, height)
    assert {width, height} == {776, 718}
    assert "4326" in scene["grid"]["crs"] or "WGS 84" in scene["grid"]["crs"]
    assert summary.tiles_kept == (width // 128) * (height // 128)
    georef = store.georef(int(store.index()[7]))
    a, _, c, _, e, f = scene["grid"]["transform"]
    row, col = georef["window"][:2]
    assert georef["transform"][2] == pytest.approx(c + a * col)
    assert georef["transform"][5] == pytest.approx(f + e * row)
    assert georef["date"] == "2015-07-04" and georef["scene"] == "pisa/imgs_1"
    # --resolution 20 in a geographic CRS: translated through the 10 m band's native GSD
    out20 = tmp_path / "pisa20.zarr"
    tile_scenes([str(OSCD / "pisa" / "imgs_1")], out20, TileConfig(tile_size=64, resolution=20))
    grid20 = _record(TileStore.open(out20), 0)["grid"]
    assert (grid20["width"], grid20["height"]) == (width // 2, height // 2)


def test_landsat_zero_collar_dropped(tmp_path: Path) -> None:
    out = tmp_path / "l8.zarr"
    config = TileConfig(tile_size=128, sensor="landsat-oli", bands=("B2", "B3", "B4"),
                        band_order="B2,B3,B4")
    summary = tile_scenes([str(LANDSAT)], out, config, workers=2)
    assert summary.tiles_dropped > 0 and summary.tiles_kept > 100
    store = TileStore.open(out)
    assert store.array("valid")[store.index()].min() >= 0.9
    assert store.array("images").dtype == np.uint16
    assert store.attrs["stats"]["B2"]["min"] > 0  # collar zeros are not in the statistics


@pytest.mark.slow
def test_output_independent_of_workers(tmp_path: Path) -> None:
    config = TileConfig(tile_size=64, shard_tiles=16)
    tile_scenes(TWO_CITIES, tmp_path / "w1.zarr", config, workers=1)
    tile_scenes(TWO_CITIES, tmp_path / "w2.zarr", config, workers=2)
    assert_same_store(tmp_path / "w1.zarr", tmp_path / "w2.zarr")


@pytest.mark.slow
def test_dask_same_output_local_cluster_and_scheduler_address(tmp_path: Path) -> None:
    from distributed import LocalCluster

    config = TileConfig(tile_size=64, shard_tiles=16)
    tile_scenes(TWO_CITIES, tmp_path / "local.zarr", config)
    tile_scenes(TWO_CITIES, tmp_path / "dask.zarr", config, workers=2, dask=True)
    assert_same_store(tmp_path / "local.zarr", tmp_path / "dask.zarr")
    with LocalCluster(n_workers=2, threads_per_worker=1, host="127.0.0.1",
                      dashboard_address=None) as cluster:  # an existing cluster, on loopback
        tile_scenes(TWO_CITIES, tmp_path / "remote.zarr", config, dask=cluster.scheduler_address)
    assert_same_store(tmp_path / "local.zarr", tmp_path / "remote.zarr")


def _tile_cmd(out: Path) -> list[str]:
    return [sys.executable, str(ROOT / "pipelines" / "tile.py"), *TWO_CITIES, "--out", str(out),
            "--tile-size", "64", "--shard-tiles", "4"]


@pytest.mark.slow
def test_kill_and_resume_gives_identical_store(tmp_path: Path) -> None:
    reference = tmp_path / "ref.zarr"
    subprocess.run(_tile_cmd(reference), check=True, capture_output=True)
    out = tmp_path / "killed.zarr"
    proc = subprocess.Popen(_tile_cmd(out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    done = 0
    while time.time() < deadline and proc.poll() is None:
        try:
            done = int(zarr.open_array(out / "unit_done", mode="r")[:].sum())
        except Exception:  # the store is being created
            done = 0
        if done >= 3:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert done >= 3, "the run finished before it could be killed"
    with pytest.raises(Exception, match="has not finished"):
        TileStore.open(out)  # an unfinished store is never mistaken for a finished one
    subprocess.run(_tile_cmd(out), check=True, capture_output=True)
    assert_same_store(reference, out)


@pytest.mark.slow
def test_rerun_is_noop_and_new_scenes_append(tmp_path: Path) -> None:
    out = tmp_path / "s.zarr"
    config = TileConfig(tile_size=64, shard_tiles=16)
    first = tile_scenes(TWO_CITIES[:1], out, config)
    again = tile_scenes(TWO_CITIES[:1], out, config)
    assert (again.new_scenes, again.units_run, again.tiles_kept) == (0, 0, first.tiles_kept)
    before = TileStore.open(out).read_tiles(TileStore.open(out).index())
    more = tile_scenes(TWO_CITIES, out, config)
    assert more.new_scenes == 1 and more.scenes == 2
    store = TileStore.open(out)
    np.testing.assert_array_equal(store.read_tiles(store.index()[: len(before)]), before)
    alone = tile_scenes(TWO_CITIES[1:], tmp_path / "b.zarr", config)
    assert more.tiles_kept == first.tiles_kept + alone.tiles_kept


def test_float_scenes_from_numpy_adapter(tmp_path: Path) -> None:
    prepare = load_script("datasets/eolearn_s2l1c/prepare.py").prepare

    paths = prepare(DATA / "eolearn_s2l1c_testpatch", tmp_path / "tifs", dtype="float32")
    out = tmp_path / "eol.zarr"
    tile_scenes([str(tmp_path / "tifs")], out, TileConfig(tile_size=32, band_order="eolearn-l1c"))
    store = TileStore.open(out)
    assert len(paths) == 5 and store.attrs["dtype"] == "float32"
    tiles = store.read_tiles(store.index()).astype(np.float64)
    b8a = store.band_names.index("B8A")
    with rasterio.open(paths[0]) as src:  # eo-learn puts B8A at index 8 too
        np.testing.assert_array_equal(tiles[0, b8a], src.read(9)[:32, :32])
    stats = store.attrs["stats"]["B8A"]
    values = tiles[:, b8a].ravel()
    assert stats["mean"] == pytest.approx(values.mean(), rel=1e-9)
    assert stats["std"] == pytest.approx(values.std(), rel=1e-6)
    assert stats["p99"] == pytest.approx(np.percentile(values, 99), rel=1 / 128)


def test_envi_rasters_found_in_folders(tmp_path: Path) -> None:
    from tests.conftest import DATA

    out = tmp_path / "tz.zarr"
    summary = tile_scenes([str(DATA / "landsat_cd_taizhou_nanjing" / "Taizhou")], out,
                          TileConfig(tile_size=100, sensor="landsat-tm", band_order="landsat-tm-6"))
    assert summary.scenes == 2 and summary.tiles_kept == 32
    assert TileStore.open(out).band_names == ["B1", "B2", "B3", "B4", "B5", "B7"]


def test_png_without_georeferencing_keeps_pixel_coordinates(tmp_path: Path, recwarn: pytest.WarningsRecorder,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    from tests.conftest import DATA

    pngs = DATA / "levircd_samples" / "A"  # LEVIR-CD RGB pairs: PNG, no CRS, no transform
    out = tmp_path / "levir.zarr"
    summary = tile_scenes([str(pngs)], out, TileConfig(tile_size=128, sensor="rgb", band_order="R,G,B"))
    n = len(list(pngs.glob("*.png")))
    assert summary.scenes == n and summary.tiles_kept == 4 * n  # 256 px images, 2 x 2 tiles each
    store = TileStore.open(out)
    assert store.band_names == ["R", "G", "B"] and store.attrs["dtype"] == "uint8"
    ref = store.georef(int(store.index()[1]))
    assert ref["crs"] == "" and ref["transform"] == (1.0, 0.0, 128.0, 0.0, 1.0, 0.0)
    with rasterio.open(sorted(pngs.glob("*.png"))[0]) as src:
        assert np.array_equal(store.read_tiles(store.index()[1:2])[0], src.read()[:, :128, 128:])
    assert not [w for w in recwarn if "georeferenc" in str(w.message)]  # rasterio's warning, silenced
    assert [r for r in caplog.records if "no georeferencing" in r.getMessage()]  # said once instead


def test_l1c_and_l2a_share_a_store_by_band_names(tmp_path: Path) -> None:
    out = tmp_path / "mixed.zarr"
    l2a = "B01,B02,B03,B04,B05,B06,B07,B08,B8A,B09,B11,B12"
    tile_scenes([str(OSCD / "pisa" / "imgs_1")], out,
                TileConfig(tile_size=60, sensor="s2-l1c", bands=tuple(l2a.split(","))))
    with pytest.raises(Exception, match="mix Sentinel-2 product levels.*--mix-product-levels"):
        tile_scenes([str(BIGEARTHNET)], out,
                    TileConfig(tile_size=60, sensor="s2-l2a", bands=tuple(l2a.split(","))))
    summary = tile_scenes([str(BIGEARTHNET)], out,
                          TileConfig(tile_size=60, sensor="s2-l2a", bands=tuple(l2a.split(",")),
                                     mix_product_levels=True))
    store = TileStore.open(out)
    assert summary.new_scenes == 6 and store.band_names == l2a.split(",")
    assert set(store.scenes(["sensor"])["sensor"].tolist()) == {"s2-l1c", "s2-l2a"}
    assert set(store.scenes(["product_level"])["product_level"].tolist()) == {"L1C", "L2A"}
    with pytest.raises(Exception, match="another configuration"):
        tile_scenes([str(OSCD / "saclay_e" / "imgs_1")], out, TileConfig(tile_size=60))  # 13 bands
