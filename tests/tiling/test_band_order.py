"""Bands of multi-band files cannot be mislabelled silently (issue 19).

Real EuroSAT patches: 13 bands in B01..B12, B8A order, no band descriptions.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio

from rsmae.bands import get_layout, get_sensor
from rsmae.cli import tile
from rsmae.errors import BandError, StoreConfigError
from rsmae.store import TileStore
from rsmae.tiling import TileConfig, tile_scenes
from tests.conftest import EUROSAT, LANDSAT

EUROSAT_ORDER = get_layout("eurosat", get_sensor("s2-l1c"))


@pytest.fixture()
def patch(tmp_path: Path) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    return Path(shutil.copy(sorted(EUROSAT.rglob("*.tif"))[0], folder / "patch.tif"))


def _describe(path: Path, names: tuple[str, ...]) -> Path:
    with rasterio.open(path, "r+") as dst:
        dst.descriptions = names
    return path


def test_many_unnamed_bands_without_band_order_are_refused(patch: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "s.zarr"
    with pytest.raises(BandError, match="13 bands and no band descriptions") as err:
        tile_scenes([str(patch)], out, TileConfig(tile_size=32))
    assert str(patch) in str(err.value) and "--band-order" in str(err.value) and "eurosat" in str(err.value)
    assert tile.main([str(patch), "--out", str(out), "--tile-size", "32"]) == 2
    assert capsys.readouterr().err.startswith(f"error: {patch}: 13 bands") and not out.exists()


def test_band_descriptions_name_the_bands(patch: Path, tmp_path: Path) -> None:
    reference, named = tmp_path / "ref.zarr", tmp_path / "named.zarr"
    tile_scenes([str(patch)], reference, TileConfig(tile_size=32, band_order="eurosat"))
    _describe(patch, EUROSAT_ORDER)
    tile_scenes([str(patch)], named, TileConfig(tile_size=32))  # no --band-order: the file's names
    a, b = TileStore.open(reference), TileStore.open(named)
    np.testing.assert_array_equal(a.read_tiles(a.index()), b.read_tiles(b.index()))
    with rasterio.open(patch) as src:  # B8A is the file's 13th band, stored in canonical place
        np.testing.assert_array_equal(b.read_tiles(b.index()[:1])[0, b.band_names.index("B8A")],
                                      src.read(13)[:32, :32])


def test_band_order_that_contradicts_the_descriptions_is_refused(patch: Path, tmp_path: Path) -> None:
    _describe(patch, EUROSAT_ORDER)
    config = TileConfig(tile_size=32, band_order="eolearn-l1c", strict=True)  # B8A after B08
    with pytest.raises(BandError, match=r"puts B8A at position 9, but the file describes that band as B09"):
        tile_scenes([str(patch)], tmp_path / "s.zarr", config)


def test_another_band_order_on_the_same_store_is_another_configuration(patch: Path, tmp_path: Path,
                                                                       capsys) -> None:
    out = tmp_path / "s.zarr"
    tile_scenes([str(patch)], out, TileConfig(tile_size=32, band_order="eolearn-l1c"))  # wrong
    assert TileStore.open(out).config["band_order"] == list(get_layout("eolearn-l1c", get_sensor("s2-l1c")))
    with pytest.raises(StoreConfigError, match="band_order"):
        tile_scenes([str(patch)], out, TileConfig(tile_size=32, band_order="eurosat"))
    args = [str(patch), "--out", str(out), "--tile-size", "32", "--band-order", "eurosat"]
    assert tile.main(args) == 2 and "--overwrite" in capsys.readouterr().err
    assert tile.main([*args, "--overwrite"]) == 0  # rebuilt with the right order
    assert TileStore.open(out).config["band_order"] == list(EUROSAT_ORDER)


def test_three_unnamed_bands_are_read_in_the_sensor_order(tmp_path: Path) -> None:
    config = TileConfig(tile_size=256, sensor="landsat-oli", bands=("B2", "B3", "B4"))
    with pytest.raises(BandError, match="expected at position 4; pass the file.s real --band-order"):
        tile_scenes([str(LANDSAT)], tmp_path / "s.zarr", config)
    rgb = TileConfig(tile_size=256, sensor="rgb")
    assert tile_scenes([str(LANDSAT)], tmp_path / "rgb.zarr", rgb).tiles_kept > 0


def test_band_folders_and_files_of_an_explicit_order_share_a_store(patch: Path, tmp_path: Path) -> None:
    from tests.conftest import OSCD

    out = tmp_path / "s.zarr"
    tile_scenes([str(OSCD / "pisa" / "imgs_1")], out, TileConfig(tile_size=32))  # no order: band files
    assert TileStore.open(out).config["band_order"] is None
    tile_scenes([str(patch)], out, TileConfig(tile_size=32, band_order="eurosat"))  # as make demo does
    assert TileStore.open(out).config["band_order"] == list(EUROSAT_ORDER)  # the first explicit one
    tile_scenes([str(OSCD / "pisa" / "imgs_1")], out, TileConfig(tile_size=32))  # no order fits it
    with pytest.raises(StoreConfigError, match="band_order"):
        tile_scenes([str(patch)], out, TileConfig(tile_size=32, band_order="eolearn-l1c"))


def test_evaluation_refuses_files_whose_names_contradict_the_layout(patch: Path, tmp_path: Path) -> None:
    from rsmae.datasets.scene_folder import SceneFolder

    folder = tmp_path / "task" / "River"
    folder.mkdir(parents=True)
    _describe(Path(shutil.copy(patch, folder / "a.tif")), get_layout("eolearn-l1c", get_sensor("s2-l1c")))
    with pytest.raises(BandError, match="puts B09 at position 9, but the file describes that band as B8A"):
        SceneFolder(tmp_path / "task", layout="eurosat")  # evaluate's default layout
    assert len(SceneFolder(tmp_path / "task", layout="eolearn-l1c")) == 1
