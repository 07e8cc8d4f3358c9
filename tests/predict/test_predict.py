"""Whole-scene prediction on real OSCD pixels: georeferencing, seams, nodata, change polygons, reruns."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.features import rasterize
from rasterio.transform import Affine
from rio_cogeo.cogeo import cog_validate

from rsmae.predict import PredictConfig, predict_change, predict_embed
from tests.conftest import OSCD
from tests.predict.predict_helpers import (
    city_stack,
    read,
    read_city,
    tiny_backbone,
    tiny_change_model,
    write_stack,
)

PISA = OSCD / "pisa"


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {"backbone": tiny_backbone(root / "backbone.safetensors"),
            "change": tiny_change_model(root / "change.safetensors")}


@pytest.mark.slow
def test_embed_of_a_real_city_is_georeferenced_at_patch_resolution_and_a_rerun_skips_it(
        tmp_path: Path, models: dict[str, Path]) -> None:
    (folder,) = predict_embed([str(PISA / "imgs_1")], models["backbone"], tmp_path / "out")
    assert folder.name == "pisa__imgs_1" and sorted(p.name for p in folder.iterdir()) == [
        "embedding.tif", "info.json", "preview.png"]
    b02 = next(PISA.glob("imgs_1/*B02.tif"))
    with rasterio.open(b02) as src, rasterio.open(folder / "embedding.tif") as out:
        assert out.crs == src.crs
        assert out.transform.almost_equals(src.transform * Affine.scale(8))
        assert (out.width, out.height) == (src.width // 8, src.height // 8) and out.count == 64
        assert out.dtypes[0] == "float32" and np.isnan(out.nodata)
        features = out.read()
    assert np.isfinite(features).all() and features.std() > 0
    assert cog_validate(str(folder / "embedding.tif"))[0]
    stamp = (folder / "embedding.tif").stat().st_mtime_ns
    predict_embed([str(PISA / "imgs_1")], models["backbone"], tmp_path / "out")
    assert (folder / "embedding.tif").stat().st_mtime_ns == stamp
    pooled = predict_embed([str(PISA / "imgs_1")], models["backbone"], tmp_path / "pool",
                           PredictConfig(pool=True))[0] / "embedding.tif"
    with rasterio.open(pooled) as out:
        assert out.transform.almost_equals(features_transform(folder) * Affine.scale(4))
        assert (out.width, out.height) == (718 // 32, 776 // 32)


def features_transform(folder: Path) -> Affine:
    with rasterio.open(folder / "embedding.tif") as ds:
        return ds.transform


def test_a_scene_cut_in_two_predicts_like_the_whole_away_from_the_cut(tmp_path: Path,
                                                                      models: dict[str, Path]) -> None:
    pixels, transform, crs = read_city("pisa", 1, (300, 200, 96, 240))
    cut = 120  # a multiple of the stride (24) and of the patch (8)
    whole = write_stack(tmp_path / "whole" / "whole.tif", pixels, transform, crs)
    left = write_stack(tmp_path / "left" / "left.tif", pixels[..., :cut], transform, crs)
    right = write_stack(tmp_path / "right" / "right.tif", pixels[..., cut:],
                        transform * Affine.translation(cut, 0), crs)
    out = {p.stem: predict_embed([str(p)], models["backbone"], tmp_path / "out")[0] / "embedding.tif"
           for p in (whole, left, right)}
    full, a, b = read(out["whole"]), read(out["left"]), read(out["right"])
    assert full.shape[2] == a.shape[2] + b.shape[2]
    margin = 32 // 8  # one window from the cut
    np.testing.assert_allclose(a[..., :-margin], full[..., :a.shape[2] - margin], atol=1e-5)
    np.testing.assert_allclose(b[..., margin:], full[..., a.shape[2] + margin:], atol=1e-5)
    with rasterio.open(out["right"]) as r, rasterio.open(out["whole"]) as w:
        assert r.transform.almost_equals(w.transform * Affine.translation(cut // 8, 0))


def test_nodata_in_any_band_is_nodata_in_every_output_it_touches(tmp_path: Path,
                                                                 models: dict[str, Path]) -> None:
    pixels, transform, crs = read_city("pisa", 1, (300, 200, 96, 128))
    pixels[5, 20:30, 40:45] = 0  # one band's fill value in a block
    pixels[:, :, 120:] = 0  # a nodata border
    scene = write_stack(tmp_path / "d1" / "d1.tif", pixels, transform, crs)
    emb = read(predict_embed([str(scene)], models["backbone"], tmp_path / "emb")[0] / "embedding.tif")
    bad = np.zeros((96, 128), bool)
    bad[20:30, 40:45] = bad[:, 120:] = True
    touched = bad.reshape(12, 8, 16, 8).any(axis=(1, 3))
    assert (np.isnan(emb).all(axis=0) == touched).all() and not np.isnan(emb[:, ~touched]).any()
    date2 = city_stack(tmp_path / "d2" / "d2.tif", "pisa", 2, (300, 200, 96, 128))
    folder = predict_change(str(scene), str(date2), models["change"], tmp_path / "cd")
    prob, mask = read(folder / "change_prob.tif")[0], read(folder / "change_mask.tif")[0]
    assert (np.isnan(prob) == bad).all() and (mask[bad] == 255).all() and set(np.unique(mask[~bad])) <= {0, 1}


@pytest.mark.slow
def test_change_is_on_date_1s_grid_with_date_2_reprojected_and_polygons_cover_the_mask(
        tmp_path: Path, models: dict[str, Path]) -> None:
    d1 = city_stack(tmp_path / "d1" / "d1.tif", "pisa", 1, (300, 200, 96, 128))
    pixels, transform, _ = read_city("pisa", 2, (290, 190, 120, 150))
    d2 = _reprojected(tmp_path / "d2" / "d2.tif", pixels, transform, "EPSG:32632")
    first = predict_change(str(d1), str(d2), models["change"], tmp_path / "first")
    median = float(np.nanmedian(read(first / "change_prob.tif")))  # the untrained model's scores are close
    folder = predict_change(str(d1), str(d2), models["change"], tmp_path / "cd",
                            PredictConfig(threshold=median))
    with rasterio.open(d1) as src, rasterio.open(folder / "change_prob.tif") as prob:
        assert prob.crs == src.crs and prob.transform.almost_equals(src.transform)
        assert (prob.width, prob.height) == (src.width, src.height)
    for name in ("change_prob.tif", "change_mask.tif"):
        assert cog_validate(str(folder / name))[0]
    mask = read(folder / "change_mask.tif")[0]
    assert (mask == 255).mean() < 0.05 and 0 < (mask == 1).mean() < 1  # date 2 covers date 1
    import geopandas as gpd

    polygons = gpd.read_file(folder / "changes.gpkg", layer="changes")
    with rasterio.open(folder / "change_mask.tif") as ds:
        burnt = rasterize(((g, 1) for g in polygons.geometry), out_shape=mask.shape, transform=ds.transform)
    assert (burnt == (mask == 1)).all() and (polygons["area_m2"] > 0).all()
    info = json.loads((folder / "info.json").read_text())
    assert info["polygons"] == len(polygons) and info["threshold"] == median
    big = predict_change(str(d1), str(d2), models["change"], tmp_path / "big",
                         PredictConfig(min_area=2000.0, threshold=median))
    kept = gpd.read_file(big / "changes.gpkg", layer="changes")
    assert len(kept) == (polygons["area_m2"] >= 2000).sum()


def _reprojected(path: Path, pixels: np.ndarray, transform: Affine, crs: str) -> Path:
    from rasterio.warp import calculate_default_transform, reproject

    src_crs = rasterio.crs.CRS.from_epsg(4326)
    h, w = pixels.shape[1:]
    west, north = transform * (0, 0)
    east, south = transform * (w, h)
    dst_t, dw, dh = calculate_default_transform(src_crs, crs, w, h, west, south, east, north)
    out = np.zeros((pixels.shape[0], dh, dw), pixels.dtype)
    reproject(pixels, out, src_transform=transform, src_crs=src_crs, dst_transform=dst_t, dst_crs=crs)
    return write_stack(path, out, dst_t, crs)
