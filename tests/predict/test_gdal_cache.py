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


def test_change_products_and_cog_copies_run_with_a_cache_of_megabytes(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[int] = []
    _recording(monkeypatch, run, "change_polygons", seen)
    _recording(monkeypatch, sink.rasterio.shutil, "copy", seen)
    d1 = city_stack(tmp_path / "d1" / "d1.tif", "pisa", 1, WINDOW)
    d2 = city_stack(tmp_path / "d2" / "d2.tif", "pisa", 2, WINDOW)
    predict_change(str(d1), str(d2), tiny_change_model(tmp_path / "cd.safetensors"), tmp_path / "out")
    assert len(seen) == 4  # polygons, then probability, mask and flag copies
    assert min(seen) >= sink.RUN_CACHE_MB * 2**20


def test_embed_preview_runs_with_a_cache_of_megabytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[int] = []
    _recording(monkeypatch, run, "pca_preview", seen)
    scene = city_stack(tmp_path / "s" / "s.tif", "pisa", 1, WINDOW)
    predict_embed([str(scene)], tiny_backbone(tmp_path / "b.safetensors"), tmp_path / "out")
    assert seen == [sink.RUN_CACHE_MB * 2**20]
