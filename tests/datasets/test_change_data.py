"""Change-detection data on real pixels: OSCD, Landsat and LEVIR-CD pairs, alignment, crops, errors."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import Affine

from rsmae.datasets import IGNORE_INDEX, LEVIRCD, OSCD, LandsatCD, PairCrops
from rsmae.datasets.bitemporal import estimate_shift
from rsmae.errors import BandError, GridError, InputNotFoundError
from rsmae.tiling.grid import gdal_env
from tests.conftest import DATA

OSCD_ROOT = DATA / "oscd_subset"
IMAGES = OSCD_ROOT / OSCD.images_folder
LABELS = OSCD_ROOT / OSCD.label_folders[0]
LANDSAT = DATA / "landsat_cd_taizhou_nanjing"
LEVIR = DATA / "levircd_samples"
RGB = ["B04", "B03", "B02"]


def test_oscd_pair_and_label_share_the_date1_grid() -> None:
    # abudhabi's date 2 is 782 x 795 px on a slightly larger pixel: it is resampled onto date 1's grid
    ds = OSCD(OSCD_ROOT, cities=["abudhabi"], window=(300, 300, 128, 128))
    sample = ds[0]
    assert sample["image"].shape == (2, 13, 128, 128) and sample["image"].dtype.is_floating_point
    assert sample["mask"].shape == (128, 128) and set(sample["mask"].unique().tolist()) <= {0, 1}
    assert list(ds.bands) == ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09",
                              "B10", "B11", "B12"]
    # the label's change pixels are where the full-size label says 2, at the same place
    with gdal_env(), rasterio.open(LABELS / "abudhabi" / "cm" / "abudhabi-cm.tif") as src:
        raw = src.read(1)[300:428, 300:428]
    np.testing.assert_array_equal(sample["mask"].numpy(), (raw == 2).astype(np.int64))
    # date 2 is registered on date 1 (to a pixel) in every band group: 10 m, 20 m, 60 m
    image = ds.scenes[0].image.astype(np.float64)
    for band in ("B04", "B11", "B09"):
        i = ds.bands.index(band)
        dy, dx = estimate_shift(image[0, i], image[1, i])
        assert abs(dy) <= 1 and abs(dx) <= 1, (band, dy, dx)
    # a date 2 moved by (3, -2) pixels is measured as moved
    moved = np.roll(image[1, 3], (3, -2), axis=(0, 1))
    base = np.array(estimate_shift(image[0, 3], image[1, 3]))
    assert tuple(np.array(estimate_shift(image[0, 3], moved)) - base) == (3, -2)


def _copy_city(tmp: Path, city: str = "pisa", bands: tuple[str, ...] = ("B02", "B03", "B04")) -> Path:
    root = tmp / "oscd"
    for date in ("imgs_1", "imgs_2"):
        folder = root / OSCD.images_folder / city / date
        folder.mkdir(parents=True)
        for band in bands:
            src = next((IMAGES / city / date).glob(f"*_{band}.tif"))
            shutil.copy(src, folder / src.name)
    shutil.copytree(LABELS / city, root / OSCD.label_folders[0] / city)
    return root


def _shift_georef(path: Path, pixels: int) -> None:
    with rasterio.open(path, "r+") as dst:
        t = dst.transform
        dst.transform = Affine(t.a, t.b, t.c + pixels * t.a, t.d, t.e, t.f)


def test_a_date_shifted_by_pixels_is_an_error_naming_both_files(tmp_path: Path) -> None:
    root = _copy_city(tmp_path)
    ok = OSCD(root, cities=["pisa"], bands=RGB, window=(0, 0, 64, 64))
    assert ok[0]["image"].shape == (2, 3, 64, 64)
    for path in (root / OSCD.images_folder / "pisa" / "imgs_2").glob("*.tif"):
        _shift_georef(path, 5)
    with pytest.raises(GridError, match="imgs_2.*imgs_1|imgs_1.*imgs_2") as err:
        OSCD(root, cities=["pisa"], bands=RGB)
    assert "co-register" in str(err.value)


def test_a_band_missing_in_one_date_names_both_folders(tmp_path: Path) -> None:
    root = _copy_city(tmp_path)
    next((root / OSCD.images_folder / "pisa" / "imgs_2").glob("*_B03.tif")).unlink()
    with pytest.raises(BandError, match=r"imgs_2.*B03.*imgs_1"):
        OSCD(root, cities=["pisa"], bands=RGB)


def test_a_label_of_another_size_is_refused(tmp_path: Path) -> None:
    root = _copy_city(tmp_path)
    label = root / OSCD.label_folders[0] / "pisa" / "cm" / "pisa-cm.tif"
    with gdal_env(), rasterio.open(label) as src:
        data, profile = src.read(), src.profile
    profile.update(width=profile["width"] - 3)
    with gdal_env(), rasterio.open(label, "w", **profile) as dst:
        dst.write(data[..., :-3])
    with pytest.raises(GridError, match="pisa-cm.tif.*date-1 grid"):
        OSCD(root, cities=["pisa"], bands=RGB)


def test_landsat_band_count_mismatch_between_dates_names_both_files(tmp_path: Path) -> None:
    scene = tmp_path / "landsat" / "Taizhou"
    shutil.copytree(LANDSAT / "Taizhou", scene)
    raw = np.fromfile(scene / "2003TM", np.uint8).reshape(6, 400, 400)
    raw[:5].tofile(scene / "2003TM")
    header = (scene / "2003TM.HDR").read_text()
    (scene / "2003TM.HDR").write_text(re.sub(r"bands\s*=\s*6", "bands = 5", header))
    with pytest.raises(BandError, match=r"2000TM has 6 bands but .*2003TM has 5"):
        LandsatCD(tmp_path / "landsat", cities=["Taizhou"])


def test_landsat_unlabelled_pixels_carry_the_ignore_index() -> None:
    ds = LandsatCD(LANDSAT, "test")
    assert [s.name for s in ds.scenes] == ["Taizhou"] and ds.bands == ("B1", "B2", "B3", "B4", "B5", "B7")
    mask = ds[0]["mask"]
    assert ds[0]["image"].shape == (2, 6, 400, 400)
    # counts from the data card: 4,227 changed and 17,163 unchanged labelled pixels
    assert int((mask == 1).sum()) == 4227 and int((mask == 0).sum()) == 17163
    assert int((mask == IGNORE_INDEX).sum()) == 400 * 400 - 4227 - 17163


def test_levircd_splits_by_name_and_binary_labels() -> None:
    sizes = {split: len(LEVIRCD(LEVIR, split)) for split in ("train", "val", "test")}
    assert sizes == {"train": 3, "val": 1, "test": 7}
    sample = LEVIRCD(LEVIR, cities=["test_2_0000_0000"])[0]
    assert sample["image"].shape == (2, 3, 256, 256) and sample["city"] == "test_2_0000_0000"
    assert set(sample["mask"].unique().tolist()) == {0, 1}


@pytest.mark.parametrize(("cls", "name"), [(OSCD, "OSCD"), (LandsatCD, "Landsat"), (LEVIRCD, "LEVIR-CD")])
def test_a_missing_folder_names_root_and_the_fix(cls: type, name: str, tmp_path: Path) -> None:
    with pytest.raises(InputNotFoundError, match=f"{name} .*not found at .*nowhere.*pass root=") as err:
        cls(tmp_path / "nowhere")
    assert isinstance(err.value, FileNotFoundError)


def test_the_images_folder_as_root_finds_the_labels_beside_it() -> None:
    images = OSCD_ROOT / OSCD.images_folder
    ds = OSCD(images, cities=["pisa"], bands=RGB, window=(0, 0, 64, 64))
    same = OSCD(OSCD_ROOT, cities=["pisa"], bands=RGB, window=(0, 0, 64, 64))
    assert ds.scenes[0].label_path == same.scenes[0].label_path
    assert "hongkong" in ds._names() and len(ds._names()) == 7


def test_unknown_city_and_split_are_refused() -> None:
    with pytest.raises(InputNotFoundError, match="no labelled scene"):
        OSCD(OSCD_ROOT, cities=["atlantis"])
    with pytest.raises(ValueError, match="splits are"):
        LandsatCD(LANDSAT, "validation")


def test_pair_crops_take_one_window_from_both_dates_and_the_label() -> None:
    ds = OSCD(OSCD_ROOT, cities=["hongkong"], window=(200, 100, 96, 120))
    scene = ds.scenes[0]
    crops = PairCrops(ds.scenes, size=40, length=6, seed=3)
    seen = set()
    for i in range(len(crops)):
        s = crops[i]
        row, col = s["window"].tolist()
        seen.add((row, col))
        np.testing.assert_array_equal(s["image"].numpy(), scene.image[..., row:row + 40, col:col + 40])
        np.testing.assert_array_equal(s["mask"].numpy(), scene.mask[row:row + 40, col:col + 40])
    assert len(seen) > 1
    again = PairCrops(ds.scenes, size=40, length=6, seed=3)[4]
    assert again["window"].tolist() == crops[4]["window"].tolist()
    padded = PairCrops(ds.scenes, size=128, length=1)[0]  # larger than the scene: padded, pad ignored
    assert padded["image"].shape == (2, 13, 128, 128)
    assert bool((padded["mask"][96:] == IGNORE_INDEX).all())


def test_match_dates_gives_date2_the_radiometry_of_date1() -> None:
    # pisa's date 2 (February) is 20-30 % darker than date 1 (July) in most bands
    scene = OSCD(OSCD_ROOT, cities=["pisa"], bands=RGB, window=(0, 0, 200, 200)).scenes[0]
    before = scene.image.astype(np.float64)
    assert before[1].mean() < 0.9 * before[0].mean()
    matched = scene.match_dates()
    after = matched.image.astype(np.float64)
    np.testing.assert_array_equal(matched.image[0], scene.image[0])
    assert matched.image.dtype == scene.image.dtype and matched.mask is scene.mask
    np.testing.assert_allclose(after[1].mean(axis=(1, 2)), after[0].mean(axis=(1, 2)), rtol=1e-3)
    np.testing.assert_allclose(after[1].std(axis=(1, 2)), after[0].std(axis=(1, 2)), rtol=1e-2)
    # a monotone per-band map: the order of date-2 pixels is kept
    i = np.argsort(before[1, 0].ravel())
    assert bool((np.diff(after[1, 0].ravel()[i]) >= 0).all())
