"""A tiling run SIGKILLed at seeded random moments always resumes to the uninterrupted run's store.

For each case, one uninterrupted run gives the reference store and its duration T; then for each
of ten kill points drawn uniformly over [0, 1.1 T] (registration, units, finalisation and just
after the end) a fresh run is killed there with its whole process group, the same call is made
again, and the store must equal the reference in tiles, scene table, statistics and skipped table.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from rsmae.tiling import TileConfig, tile_scenes
from tests.conftest import LANDSAT, OSCD
from tests.tiling.kill_helpers import (
    assert_same_store,
    crash_after_writes,
    crop_band_folder,
    crop_scenes,
    run_until,
)

pytestmark = pytest.mark.slow

KILLS = 10
LANDSAT_CONFIG = TileConfig(tile_size=32, shard_tiles=4, sensor="landsat-oli", bands=("B2", "B3", "B4"),
                            band_order="B2,B3,B4")
OSCD_CONFIG = TileConfig(tile_size=32, shard_tiles=8)


def _kill_and_resume(tmp_path: Path, inputs: list[str], config: TileConfig, seed: int,
                     base: Path | None = None, base_inputs: list[str] | None = None,
                     **kwargs: object) -> list[float]:
    """Kill points tried (seconds after the start); every one resumed to the reference store.

    ``base``: a finished store each run appends to (copied first), made from ``base_inputs``.
    """
    def fresh(name: str) -> Path:
        out = tmp_path / name
        shutil.rmtree(out, ignore_errors=True)
        if base is not None:
            shutil.copytree(base, out)
        return out

    reference = fresh("reference.zarr")
    duration = run_until(None, inputs, reference, config, **kwargs)
    points = np.random.default_rng(seed).uniform(0.0, 1.1 * duration, KILLS).tolist()
    for point in points:
        out = fresh("killed.zarr")
        run_until(point, inputs, out, config, **kwargs)
        tile_scenes(inputs, out, config, **kwargs)
        assert_same_store(reference, out)
    return points


@pytest.fixture(scope="module")
def crops(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six real Landsat crops, one all-nodata (the scene's zero collar: skipped), same-name pairs."""
    folder = tmp_path_factory.mktemp("crops")
    crop_scenes(LANDSAT, folder / "single", [f"scene{i}.tif" for i in range(5)], size=128)
    collar = crop_scenes(LANDSAT, folder / "single", ["collar.tif"], size=64)[0]
    with __import__("rasterio").open(collar, "r+") as dst:  # the collar of the real scene
        dst.write(np.zeros((3, 64, 64), dtype=np.uint16))
    crop_scenes(LANDSAT, folder / "x", ["scene.tif"], size=128)
    crop_scenes(LANDSAT, folder / "y", ["scene.tif"], size=96)
    return folder


def test_single_file_scenes(crops: Path, tmp_path: Path) -> None:
    _kill_and_resume(tmp_path, [str(crops / "single")], LANDSAT_CONFIG, seed=0)


def test_a_crash_at_every_root_metadata_write_resumes(crops: Path, tmp_path: Path) -> None:
    """Deterministic: the run dies after each of its root ``zarr.json`` writes (its commit points)."""
    inputs = [str(crops / "single")]
    reference = tmp_path / "reference.zarr"
    tile_scenes(inputs, reference, LANDSAT_CONFIG)
    for limit in range(100):
        out = tmp_path / f"crashed{limit}.zarr"
        finished = crash_after_writes(limit, inputs, out, LANDSAT_CONFIG)
        tile_scenes(inputs, out, LANDSAT_CONFIG)
        assert_same_store(reference, out)
        shutil.rmtree(out)
        if finished:
            break
    assert finished and limit > 3, f"the run made only {limit} root writes"


def test_single_file_scenes_two_workers(crops: Path, tmp_path: Path) -> None:
    _kill_and_resume(tmp_path, [str(crops / "single")], LANDSAT_CONFIG, seed=1, workers=2)


def test_same_file_name_in_two_folders(crops: Path, tmp_path: Path) -> None:
    inputs = [str(crops / "x" / "scene.tif"), str(crops / "y" / "scene.tif")]
    _kill_and_resume(tmp_path, inputs, LANDSAT_CONFIG, seed=2)


def test_band_folder_scenes(tmp_path: Path) -> None:
    cities = [crop_band_folder(OSCD / city / "imgs_1", tmp_path / "in" / city / "imgs_1", 192)
              for city in ("pisa", "saclay_e")]  # 13 bands at 10, 20 and 60 m
    _kill_and_resume(tmp_path, cities, OSCD_CONFIG, seed=3)


def test_append_to_a_finished_store(crops: Path, tmp_path: Path) -> None:
    first = sorted(str(p) for p in (crops / "single").glob("scene[0-2].tif"))
    base = tmp_path / "base.zarr"
    tile_scenes(first, base, LANDSAT_CONFIG)
    _kill_and_resume(tmp_path, [str(crops / "single")], LANDSAT_CONFIG, seed=4, base=base)


def test_dask_local_cluster(crops: Path, tmp_path: Path) -> None:
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, host="127.0.0.1",
                      dashboard_address=None) as cluster:  # outlives each killed run: its tasks too
        _kill_and_resume(tmp_path, [str(crops / "single")], LANDSAT_CONFIG, seed=5,
                         dask=cluster.scheduler_address)
