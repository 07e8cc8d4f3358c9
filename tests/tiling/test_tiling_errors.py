"""Every bad input: a clear error naming the file, exit code 2, and nothing left at --out."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from tests.conftest import BIGEARTHNET, LANDSAT, OSCD, load_script

tile = load_script("pipelines/tile.py")

PATCH = BIGEARTHNET / "S2A_MSIL2A_20170613T101031_87_48"


def _run(args: list[str], out: Path, capsys: pytest.CaptureFixture[str]) -> str:
    code = tile.main([*args, "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("error: ")
    return err


def _write_tif(path: Path, data: np.ndarray, **kw: object) -> Path:
    profile = {"driver": "GTiff", "height": data.shape[1], "width": data.shape[2],
               "count": data.shape[0], "dtype": data.dtype, "crs": "EPSG:32633",
               "transform": from_origin(500000, 5000000, 10, 10), **kw}
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path


def _copy_patch(tmp_path: Path) -> Path:
    folder = tmp_path / "patch"
    shutil.copytree(PATCH, folder)
    return folder


def test_missing_path(tmp_path, capsys):
    err = _run([str(tmp_path / "nope")], tmp_path / "o.zarr", capsys)
    assert "nope: no such file or folder" in err and not (tmp_path / "o.zarr").exists()


def test_glob_matches_nothing(tmp_path, capsys):
    err = _run([str(tmp_path / "*.tif")], tmp_path / "o.zarr", capsys)
    assert "matched no file" in err and not (tmp_path / "o.zarr").exists()


def test_folder_without_rasters(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    err = _run([str(tmp_path / "empty")], tmp_path / "o.zarr", capsys)
    assert "no raster files" in err


def test_non_raster_named_tif(tmp_path, capsys):
    bad = tmp_path / "notes.tif"
    bad.write_text("not an image")
    err = _run([str(bad), "--sensor", "rgb"], tmp_path / "o.zarr", capsys)
    assert "notes.tif: not a readable raster" in err and not (tmp_path / "o.zarr").exists()


def test_truncated_geotiff(tmp_path, capsys):
    folder = _copy_patch(tmp_path)
    victim = next(folder.glob("*_B02.tif"))
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])
    err = _run([str(folder), "--sensor", "s2-l2a", "--tile-size", "60"], tmp_path / "o.zarr", capsys)
    assert "_B02.tif" in err and not (tmp_path / "o.zarr").exists()


def test_fewer_bands_than_the_sensor_needs(tmp_path, capsys):
    err = _run([str(LANDSAT), "--sensor", "s2-l1c"], tmp_path / "o.zarr", capsys)
    assert "LC08" in err and "has 3 band(s)" in err


def test_missing_band_file_in_folder(tmp_path, capsys):
    folder = _copy_patch(tmp_path)
    next(folder.glob("*_B11.tif")).unlink()
    err = _run([str(folder), "--sensor", "s2-l2a", "--tile-size", "60"], tmp_path / "o.zarr", capsys)
    assert "no file for band(s) B11" in err


def test_band_files_with_other_crs(tmp_path, capsys):
    folder = _copy_patch(tmp_path)
    b05 = next(folder.glob("*_B05.tif"))
    with rasterio.open(b05) as src:
        data, profile = src.read(), src.profile
    profile["crs"] = "EPSG:32631"
    with rasterio.open(b05, "w", **profile) as dst:
        dst.write(data)
    err = _run([str(folder), "--sensor", "s2-l2a", "--tile-size", "60"], tmp_path / "o.zarr", capsys)
    assert "_B05.tif: CRS" in err


def test_band_files_with_other_extent(tmp_path, capsys):
    folder = _copy_patch(tmp_path)
    other = BIGEARTHNET / "S2A_MSIL2A_20170617T113321_4_55"
    target = next(folder.glob("*_B05.tif"))
    with rasterio.open(next(other.glob("*_B05.tif"))) as src:
        data, profile = src.read(), src.profile
    with rasterio.open(target) as src:
        profile["crs"] = src.crs  # same CRS, another place
    with rasterio.open(target, "w", **profile) as dst:
        dst.write(data)
    err = _run([str(folder), "--sensor", "s2-l2a", "--tile-size", "60"], tmp_path / "o.zarr", capsys)
    assert "_B05.tif: extent" in err


def test_scene_smaller_than_a_tile(tmp_path, capsys):
    err = _run([str(PATCH), "--sensor", "s2-l2a", "--tile-size", "128"], tmp_path / "o.zarr", capsys)
    assert "smaller than one 128-px tile" in err and not (tmp_path / "o.zarr").exists()


def test_all_nodata_scene(tmp_path, capsys):
    path = _write_tif(tmp_path / "zeros.tif", np.zeros((3, 64, 64), np.uint16))
    err = _run([str(path), "--sensor", "rgb", "--tile-size", "32"], tmp_path / "o.zarr", capsys)
    assert "zeros.tif" in err and "nodata" in err and not (tmp_path / "o.zarr").exists()


def test_nan_filled_float_bands(tmp_path, capsys):
    path = _write_tif(tmp_path / "nan.tif", np.full((3, 64, 64), np.nan, np.float32))
    err = _run([str(path), "--sensor", "rgb", "--tile-size", "32"], tmp_path / "o.zarr", capsys)
    assert "nan.tif" in err and not (tmp_path / "o.zarr").exists()


def test_unsupported_dtype(tmp_path, capsys):
    path = _write_tif(tmp_path / "f64.tif", np.ones((3, 64, 64), np.float64))
    err = _run([str(path), "--sensor", "rgb", "--tile-size", "32"], tmp_path / "o.zarr", capsys)
    assert "f64.tif: unsupported dtype float64" in err


def test_existing_store_with_other_config(tmp_path, capsys):
    out = tmp_path / "s.zarr"
    args = [str(PATCH), "--sensor", "s2-l2a"]
    assert tile.main([*args, "--tile-size", "60", "--out", str(out)]) == 0
    before = sorted(p.name for p in out.rglob("*"))
    err = _run([*args, "--tile-size", "40"], out, capsys)
    assert "another configuration" in err and "tile_size: store 60, now 40" in err
    assert sorted(p.name for p in out.rglob("*")) == before  # untouched
    assert tile.main([*args, "--tile-size", "40", "--overwrite", "--out", str(out)]) == 0


def test_output_is_an_existing_file(tmp_path, capsys):
    out = tmp_path / "file.zarr"
    out.write_text("precious")
    err = _run([str(PATCH), "--sensor", "s2-l2a", "--tile-size", "60"], out, capsys)
    assert "is a file, not a Zarr store" in err and out.read_text() == "precious"


def test_output_is_a_non_zarr_folder(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    err = _run([str(PATCH), "--sensor", "s2-l2a", "--tile-size", "60", "--overwrite"], out, capsys)
    assert "not a Zarr store" in err and (out / "keep.txt").exists()


def test_output_not_writable(tmp_path, capsys):
    err = _run([str(PATCH), "--sensor", "s2-l2a", "--tile-size", "60"], Path("/proc/rsmae.zarr"),
               capsys)
    assert "/proc/rsmae.zarr" in err


@pytest.mark.parametrize(("flag", "value"), [("--tile-size", "0"), ("--tile-size", "-4"),
                                             ("--stride", "0"), ("--stride", "-1"),
                                             ("--max-nodata", "1.5")])
def test_bad_numbers(tmp_path, capsys, flag, value):
    err = _run([str(PATCH), "--sensor", "s2-l2a", flag, value], tmp_path / "o.zarr", capsys)
    assert flag in err and not (tmp_path / "o.zarr").exists()


def test_unknown_sensor_and_band(tmp_path, capsys):
    assert "unknown sensor" in _run([str(PATCH), "--sensor", "s3"], tmp_path / "o.zarr", capsys)
    err = _run([str(PATCH), "--sensor", "s2-l2a", "--bands", "B02,B99"], tmp_path / "o.zarr", capsys)
    assert "no band 'B99'" in err


def test_failed_append_rolls_back_when_strict_else_skips(tmp_path, capsys):
    out = tmp_path / "s.zarr"
    good = OSCD / "pisa" / "imgs_1"
    assert tile.main([str(good), "--tile-size", "64", "--out", str(out)]) == 0
    capsys.readouterr()
    bad = tmp_path / "bad" / "imgs_1"
    shutil.copytree(OSCD / "saclay_e" / "imgs_1", bad)
    victim = next(bad.glob("*_B03.tif"))
    victim.write_bytes(victim.read_bytes()[:-200000])  # the header is intact: fails while reading
    err = _run([str(good), str(bad), "--tile-size", "64", "--strict"], out, capsys)
    assert "_B03.tif" in err
    from rsmae.store import TileStore
    store = TileStore.open(out)  # still the finished one-scene store
    assert store.n_scenes == 1 and store.complete
    tiles = store.attrs["tiles"]
    assert tile.main([str(good), str(bad), "--tile-size", "64", "--out", str(out)]) == 3
    assert "skipped bad/imgs_1: " in capsys.readouterr().err
    store = TileStore.open(out)  # the damaged scene left no tile; it is recorded
    assert store.complete and store.attrs["tiles"] == tiles
    assert store.skipped()["id"].tolist() == ["bad/imgs_1"] and "_B03.tif" in store.skipped()["reason"][0]


def test_symlink_to_missing_content(tmp_path, capsys):
    farm = tmp_path / "farm"
    farm.mkdir()
    (farm / "scene_1.tif").symlink_to(tmp_path / ".git" / "annex" / "objects" / "SHA256E-s1--ab.tif")
    err = _run([str(farm), "--sensor", "rgb", "--tile-size", "32"], tmp_path / "o.zarr", capsys)
    assert "scene_1.tif: symlink to a missing file" in err and "git annex get" in err
    err = _run([str(farm / "scene_1.tif"), "--sensor", "rgb"], tmp_path / "o.zarr", capsys)
    assert "scene_1.tif: symlink to a missing file" in err and not (tmp_path / "o.zarr").exists()


def test_l1c_and_l2a_inputs_in_one_run(tmp_path, capsys):
    l2a = "B01,B02,B03,B04,B05,B06,B07,B08,B8A,B09,B11,B12"
    err = _run([str(OSCD / "pisa" / "imgs_1"), str(PATCH), "--sensor", "s2-l2a", "--bands", l2a,
                "--tile-size", "60"], tmp_path / "o.zarr", capsys)
    assert "L1C (e.g." in err and "L2A (e.g." in err and "--mix-product-levels" in err
    assert not (tmp_path / "o.zarr").exists()


def test_one_band_twice_at_its_native_resolution(tmp_path, capsys):
    folder = _copy_patch(tmp_path)
    shutil.copy(next(folder.glob("*_B02.tif")), folder / "another_scene_B02.tif")
    err = _run([str(folder), "--sensor", "s2-l2a", "--tile-size", "60"], tmp_path / "o.zarr", capsys)
    assert "two files hold band B02 at its native resolution" in err
