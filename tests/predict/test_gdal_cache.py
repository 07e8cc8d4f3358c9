"""GDAL's block cache during prediction: bounded, and in megabytes (rasterio reads an integer as bytes)."""

from __future__ import annotations

from pathlib import Path

import pytest
from rasterio.env import get_gdal_config

import rsmae.predict.run as run
import rsmae.predict.sink as sink
from rsmae.predict import predict_change, predict_embed
from tests.predict.predict_helpers import city_stack, tiny_backbone, tiny_change_model

WINDOW = (300, 200, 64, 96)


def test_gdal_cache_sets_megabytes_not_bytes() -> None:
    with sink.gdal_cache(64):
        assert get_gdal_config("GDAL_CACHEMAX") == 64 * 2**20


def _recording(monkeypatch: pytest.MonkeyPatch, module: object, name: str, seen: list[int]) -> None:
    original = getattr(module, name)

    def wrapped(*args: object, **kwargs: object) -> object:
        seen.append(int(get_gdal_config("GDAL_CACHEMAX")))
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapped)


def test_change_products_and_cog_copies_run_with_a_cache_of_megabytes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[int] = []
    _recording(monkeypatch, run, "change_polygons", seen)
    _recording(monkeypatch, sink.rasterio.shutil, "copy", seen)
    d1 = city_stack(tmp_path / "d1" / "d1.tif", "pisa", 1, WINDOW)
    d2 = city_stack(tmp_path / "d2" / "d2.tif", "pisa", 2, WINDOW)
    predict_change(str(d1), str(d2), tiny_change_model(tmp_path / "cd.safetensors"), tmp_path / "out")
    # the three COG copies (probability, mask, polygon flags), then the polygons
    assert seen == [sink.COPY_CACHE_MB * 2**20] * 3 + [sink.RUN_CACHE_MB * 2**20]


def test_embed_preview_runs_with_a_cache_of_megabytes(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[int] = []
    _recording(monkeypatch, run, "pca_preview", seen)
    scene = city_stack(tmp_path / "s" / "s.tif", "pisa", 1, WINDOW)
    predict_embed([str(scene)], tiny_backbone(tmp_path / "b.safetensors"), tmp_path / "out")
    assert seen == [sink.RUN_CACHE_MB * 2**20]


def test_the_part_file_is_written_in_strips_of_a_few_rows(tmp_path: Path) -> None:
    import numpy as np
    import rasterio
    from rasterio.crs import CRS

    from rsmae.tiling.grid import Grid

    grid = Grid(CRS.from_epsg(32632), (10.0, 0.0, 500000.0, 0.0, -10.0, 4800000.0), 1300, 600)
    with sink.RasterSink(tmp_path / "e.tif", grid, count=3, dtype="float32", nodata=float("nan")) as out:
        # a write of a few rows touches a few strips of each band, not a row of 256-px tiles of all bands
        assert out._ds.block_shapes == [(sink.PART_ROWS, 1300)] * 3
        for row in range(0, 600, 4):
            out.write(row, np.full((3, 4, 1300), row, np.float32))
    with rasterio.open(tmp_path / "e.tif") as ds:  # the COG: tiled, with overviews, every row in place
        assert ds.block_shapes[0] == (256, 256) and ds.overviews(1)
        np.testing.assert_array_equal(ds.read(2)[:, 0], np.repeat(np.arange(0, 600, 4), 4))
