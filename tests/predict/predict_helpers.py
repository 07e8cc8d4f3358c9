"""Helpers of the prediction tests (no tests here): a tiny backbone and change model, real OSCD crops."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
import torch
from rasterio.transform import Affine
from rasterio.windows import Window

from rsmae.bands import get_sensor
from rsmae.models import BackboneMeta, create_encoder, save_backbone
from rsmae.predict.scene import find_scenes, open_scene
from rsmae.tasks.change import ChangeTask, save_change_model
from rsmae.tiling.grid import SceneReader
from tests.conftest import OSCD

SENSOR = get_sensor("s2-l1c")
S2 = list(SENSOR.names)


def tiny_backbone(path: Path) -> Path:
    """A vit_test backbone (window 32, patch 8) with statistics."""
    torch.manual_seed(0)
    enc = create_encoder("vit_test", in_chans=13, img_size=32, patch_size=8)
    meta = BackboneMeta(preset="vit_test", img_size=32, patch_size=8, in_chans=13, bands=S2, sensor="s2-l1c",
                        mean=[1500.0] * 13, std=[600.0] * 13, gsd=10.0)
    return save_backbone(enc, path, meta)


def tiny_change_model(path: Path, threshold: float = 0.5) -> Path:
    """An untrained siamese vit_test change model (window 32) saved as ``rsmae evaluate --out`` does."""
    torch.manual_seed(0)
    task = ChangeTask(bands=S2, preset="vit_test", patch_size=8, img_size=32, sensor="s2-l1c")
    task.set_statistics([1500.0] * 13, [600.0] * 13)
    return save_change_model(task, path, extra={"threshold": threshold})


def read_city(city: str, date: int, window: tuple[int, int, int, int]) -> tuple[np.ndarray, Affine, object]:
    """``(13, h, w)`` uint16 of a city's date on its 10 m grid, the window's transform and the CRS."""
    (scene,) = find_scenes([str(OSCD / city / f"imgs_{date}")], SENSOR, S2)
    ps = open_scene(scene, SENSOR)
    row, col, h, w = window
    with SceneReader(ps.scene, ps.grid, ps.dtype) as reader:
        pixels = reader.read(row, col, h, w)
    transform = ps.grid.affine * Affine.translation(col, row)
    return pixels, transform, rasterio.crs.CRS.from_wkt(ps.grid.crs)


def write_stack(path: Path, pixels: np.ndarray, transform: Affine, crs: object,
                bands: list[str] = S2) -> Path:
    """A multi-band GeoTIFF whose band descriptions name its bands."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", driver="GTiff", width=pixels.shape[2], height=pixels.shape[1],
                       count=pixels.shape[0], dtype=pixels.dtype, transform=transform, crs=crs) as ds:
        ds.write(pixels)
        for i, name in enumerate(bands, start=1):
            ds.set_band_description(i, name)
    return path


def city_stack(path: Path, city: str, date: int, window: tuple[int, int, int, int]) -> Path:
    """A 13-band stack of a crop of an OSCD city."""
    return write_stack(path, *read_city(city, date, window))


def read(path: Path, window: Window | None = None) -> np.ndarray:
    """All bands of a raster."""
    with rasterio.open(path) as ds:
        return ds.read(window=window)


SCENE_RASTERS = {"classify": ("class_index.tif", "class_prob.tif"), "embed": ("embedding.tif",)}


def two_cities(root: Path) -> dict[str, Path]:
    """Two small real OSCD crops (date 1) as multi-band files under ``root/scenes``: ``pisa``, ``beihai``."""
    return {"pisa": city_stack(root / "scenes" / "pisa.tif", "pisa", 1, (300, 200, 72, 100)),
            "beihai": city_stack(root / "scenes" / "beihai.tif", "beihai", 1, (100, 150, 80, 64))}


def assert_same_outputs(folders: list[Path], expected: list[Path], task: str) -> None:
    """The scene folders of a run hold the files and rasters (atol 1e-5) of the reference run's."""
    assert [f.name for f in folders] == [f.name for f in expected] == ["scenes__beihai", "scenes__pisa"]
    for folder, reference in zip(folders, expected, strict=True):
        assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in reference.iterdir())
        for name in SCENE_RASTERS[task]:
            got, want = read(folder / name), read(reference / name)
            assert got.shape == want.shape, (folder, name)
            assert np.allclose(got, want, atol=1e-5, equal_nan=True), (folder, name)
