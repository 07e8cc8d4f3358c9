"""Products as delivered: .SAFE folders, Landsat Collection folders, symlink farms, offsets, nodata.

The products are built from real band files (small crops of OSCD's Pisa L1C bands and of the
Landsat 8 scene), laid out and named as the providers deliver them; non-band rasters (TCI, SCL,
AOT, WVP, QA, angles) are made from real bands too.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.windows import Window

from rsmae.bands import get_sensor
from rsmae.errors import BandError, InputNotFoundError, TilingError
from rsmae.store import TileStore
from rsmae.tiling.grid import SceneReader, scene_grid
from rsmae.tiling.products import apply_offset, product_info
from rsmae.tiling.scenes import BandSource, Scene, discover_scenes
from tests.conftest import BIGEARTHNET, EUROSAT, LANDSAT, OSCD, load_script

tile = load_script("pipelines/tile.py")

PISA = OSCD / "pisa" / "imgs_1"
S2_BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12")
GSD = {"B02": 10, "B03": 10, "B04": 10, "B08": 10, "B05": 20, "B06": 20, "B07": 20, "B8A": 20,
       "B11": 20, "B12": 20, "B01": 60, "B09": 60, "B10": 60}
SIDE_10M = 120  # 1.2 km: 120 px at 10 m, 60 at 20 m, 20 at 60 m
L1C = "S2A_MSIL1C_20220315T101031_N0400_R022_T32TPP_20220315T121314"
L2A = "S2B_MSIL2A_20220320T101029_N0400_R022_T32TPP_20220320T130442"
LANDSAT_ID = "LC08_L1TP_224078_20200518_20200529_02_T1"


def _crop(band: str, gsd: float | None = None) -> tuple[np.ndarray, dict]:
    """A real Pisa band, cropped to the test footprint, at ``gsd`` metres (block means)."""
    with rasterio.open(next(PISA.glob(f"*_{band}.tif"))) as src:
        n = SIDE_10M * 10 // GSD[band]
        window = Window(0, 0, n, n)
        data, profile = src.read(window=window), dict(src.profile)
        profile["transform"] = src.window_transform(window)
    factor = int((gsd or GSD[band]) // GSD[band])
    if factor > 1:
        m = n // factor
        data = data.reshape(1, m, factor, m, factor).mean(axis=(2, 4)).round().astype(data.dtype)
        profile["transform"] = profile["transform"] @ profile["transform"].scale(factor)
    return data, profile


def _write(path: Path, data: np.ndarray, profile: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {k: profile[k] for k in ("crs", "transform")}
    opts = {"driver": "JP2OpenJPEG", "QUALITY": 100, "REVERSIBLE": "YES"} if path.suffix == ".jp2" \
        else {"driver": "GTiff"}
    with rasterio.open(path, "w", width=data.shape[2], height=data.shape[1], count=data.shape[0],
                       dtype=data.dtype, **meta, **opts) as dst:
        dst.write(data)
    return path


def _tci(gsd: float | None = None) -> tuple[np.ndarray, dict]:
    rgb = [_crop(b, gsd) for b in ("B04", "B03", "B02")]
    data = np.concatenate([np.clip(d / 12, 0, 255) for d, _ in rgb]).astype(np.uint8)
    return data, rgb[0][1]


def _mtd(level: str, baseline: str, offsets: bool) -> str:
    tag = "RADIO_ADD_OFFSET" if level == "1C" else "BOA_ADD_OFFSET"
    items = "".join(f'<{tag} band_id="{i}">-1000</{tag}>' for i in range(13)) if offsets else ""
    spectral = "".join(f'<Spectral_Information bandId="{i}" physicalBand="{b.replace("B0", "B")}"/>'
                       for i, b in enumerate(S2_BANDS))
    return (f'<?xml version="1.0" encoding="UTF-8"?><n1:Level-{level}_User_Product '
            f'xmlns:n1="https://psd-14.sentinel2.eo.esa.int/PSD/User_Product_Level-{level}.xsd">'
            f"<n1:General_Info><Product_Info><PRODUCT_TYPE>S2MSI{level}</PRODUCT_TYPE>"
            f"<PROCESSING_LEVEL>Level-{level}</PROCESSING_LEVEL>"
            f"<PROCESSING_BASELINE>{baseline}</PROCESSING_BASELINE></Product_Info>"
            f"<Product_Image_Characteristics><Offsets>{items}</Offsets>"
            f"<Spectral_Information_List>{spectral}</Spectral_Information_List>"
            f"</Product_Image_Characteristics></n1:General_Info></n1:Level-{level}_User_Product>")


def make_l1c(root: Path, name: str = L1C, baseline: str = "04.00", offsets: bool = True) -> Path:
    """A Level-1C .SAFE: 13 band JP2s + TCI in IMG_DATA, masks in QI_DATA, PNG banners in HTML."""
    safe = root / f"{name}.SAFE"
    granule = safe / "GRANULE" / "L1C_T32TPP_A035000_20220315T101031"
    prefix = granule / "IMG_DATA" / "T32TPP_20220315T101031"
    for band in S2_BANDS:
        _write(Path(f"{prefix}_{band}.jp2"), *_crop(band))
    _write(Path(f"{prefix}_TCI.jp2"), *_tci())
    b01, profile = _crop("B01")
    _write(granule / "QI_DATA" / "MSK_DETFOO_B01.jp2", (b01 > 1300).astype(np.uint8), profile)
    _write(safe / "HTML" / "banner_1.png", *_tci())
    (safe / "MTD_MSIL1C.xml").write_text(_mtd("1C", baseline, offsets))
    (safe / "manifest.safe").write_text("<xfdu/>")
    return safe


def make_l2a(root: Path) -> Path:
    """A Level-2A .SAFE: R10m/R20m/R60m with each band at several resolutions, AOT/WVP/TCI/SCL."""
    safe = root / f"{L2A}.SAFE"
    img = safe / "GRANULE" / "L2A_T32TPP_A035071_20220320T101029" / "IMG_DATA"
    folders = {10: ("B02", "B03", "B04", "B08"),
               20: ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B8A", "B11", "B12"),
               60: ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B8A", "B09", "B11", "B12")}
    for res, bands in folders.items():
        prefix = img / f"R{res}m" / "T32TPP_20220320T101029"
        for band in bands:
            _write(Path(f"{prefix}_{band}_{res}m.jp2"), *_crop(band, max(res, GSD[band])))
        _write(Path(f"{prefix}_TCI_{res}m.jp2"), *_tci(res))
        for aux, band in (("AOT", "B01"), ("WVP", "B09")):
            _write(Path(f"{prefix}_{aux}_{res}m.jp2"), *_crop(band, 60))
        if res > 10:
            nir, profile = _crop("B8A", res)
            _write(Path(f"{prefix}_SCL_{res}m.jp2"), np.where(nir > 2000, 4, 6).astype(np.uint8), profile)
    (safe / "MTD_MSIL2A.xml").write_text(_mtd("2A", "04.00", True))
    return safe


@pytest.fixture(scope="module")
def products(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("products")
    return {"l1c": make_l1c(root / "l1c"), "l2a": make_l2a(root / "l2a")}


def _skip_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "rsmae.tiling.scenes"]


def test_l1c_safe_is_one_scene_with_offsets(products, caplog):
    s2 = get_sensor("s2-l1c")
    with caplog.at_level(logging.WARNING):
        (scene,) = discover_scenes([str(products["l1c"])], s2, s2.names)
    assert scene.scene_id == f"{L1C}/L1C_T32TPP_A035000_20220315T101031"
    assert scene.date == "2022-03-15" and scene.product_level == "L1C" and scene.baseline == "04.00"
    assert [s.band for s in scene.sources] == list(s2.names)
    assert all("/IMG_DATA/" in s.path and s.path.endswith(f"_{s.band}.jp2") for s in scene.sources)
    assert scene.offset == (-1000.0,) * 13
    (line,) = _skip_lines(caplog)  # TCI skipped in one line; masks and banners never looked at
    assert "skipped 1 raster(s)" in line and "TCI (1)" in line


def test_l2a_safe_takes_each_band_at_its_native_resolution(products, caplog):
    s2 = get_sensor("s2-l2a")
    with caplog.at_level(logging.WARNING):
        (scene,) = discover_scenes([str(products["l2a"])], s2, s2.names)
    for src in scene.sources:
        assert f"/R{GSD[src.band]}m/" in src.path and src.path.endswith(f"_{src.band}_{GSD[src.band]}m.jp2")
    assert scene.product_level == "L2A" and set(scene.offset) == {-1000.0}
    (line,) = _skip_lines(caplog)
    for kind in ("AOT (3)", "SCL (2)", "TCI (3)", "WVP (3)", "band copies at another resolution (13)"):
        assert kind in line


def test_tile_py_on_a_safe_folder_applies_the_offset(products, tmp_path, capsys):
    out = tmp_path / "l2a.zarr"
    assert tile.main([str(products["l2a"]), "--sensor", "s2-l2a", "--tile-size", "60",
                      "--out", str(out)]) == 0, capsys.readouterr().err
    store = TileStore.open(out)
    first = store.read_tiles(store.index()[:1])[0]
    raw, _ = _crop("B02")
    b02 = store.band_names.index("B02")
    np.testing.assert_array_equal(first[b02], np.maximum(raw[0, :60, :60].astype(int) - 1000, 1))
    assert store.attrs["stats"]["B02"]["mean"] < raw.mean() - 900  # statistics on the old scale
    recorded = store.scenes(["product_level", "baseline", "offset"])
    assert (recorded["product_level"].tolist(), recorded["baseline"].tolist(),
            recorded["offset"].tolist()) == (["L2A"], ["04.00"], [-1000.0])


def test_l1c_and_l2a_are_not_mixed_unless_asked(products, tmp_path, capsys):
    s2 = get_sensor("s2-l2a")
    both = [str(products["l1c"]), str(products["l2a"])]
    with pytest.raises(TilingError, match=r"L1C \(e\.g\. .*L2A \(e\.g\. .*--mix-product-levels"):
        discover_scenes(both, s2, s2.names)
    scenes = discover_scenes(both, s2, s2.names, mix_product_levels=True)
    assert sorted(s.product_level for s in scenes) == ["L1C", "L2A"]
    out = tmp_path / "l1c.zarr"  # an L2A run appending to an L1C store: refused, or asked for
    assert tile.main([both[0], "--sensor", "s2-l2a", "--tile-size", "60", "--out", str(out)]) == 0
    assert tile.main([both[1], "--sensor", "s2-l2a", "--tile-size", "60", "--out", str(out)]) == 2
    assert "and the new inputs mix Sentinel-2 product levels" in capsys.readouterr().err
    assert tile.main([both[1], "--sensor", "s2-l2a", "--tile-size", "60", "--out", str(out),
                      "--mix-product-levels"]) == 0
    assert TileStore.open(out).scenes(["product_level"])["product_level"].tolist() == ["L1C", "L2A"]
    with pytest.raises(TilingError, match="mix Sentinel-2 product levels"):  # by names alone too
        discover_scenes([str(PISA), str(BIGEARTHNET / "S2A_MSIL2A_20170613T101031_87_48")], s2,
                        s2.names)


def test_offset_only_from_baseline_04(tmp_path):
    s2 = get_sensor("s2-l1c")
    old = make_l1c(tmp_path / "a", name=L1C.replace("N0400", "N0204"), baseline="02.04", offsets=False)
    img = next(old.glob("GRANULE/*/IMG_DATA"))
    assert product_info(img, s2).offsets == {} and product_info(img, s2).level == "L1C"
    (old / "MTD_MSIL1C.xml").write_text(_mtd("1C", "04.00", offsets=False))  # baseline alone
    assert product_info(img, s2).offsets == dict.fromkeys(S2_BANDS, -1000.0)
    data = np.array([[[0, 500, 1000, 1001, 3000]]], dtype=np.uint16)
    np.testing.assert_array_equal(apply_offset(data, [-1000.0], 0), [[[0, 1, 1, 1, 2000]]])


_GOOD_MTD = _mtd("1C", "04.00", offsets=True)
_BOGUS_ENCODING = _GOOD_MTD.replace('encoding="UTF-8"', 'encoding="bogus"')


@pytest.mark.parametrize(("content", "what"), [
    (_GOOD_MTD[: len(_GOOD_MTD) // 2].encode(), "not readable XML (unclosed token"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR garbage", "not readable XML (not well-formed"),
    (_BOGUS_ENCODING.encode(), "not readable XML (unknown encoding"),
    (_GOOD_MTD.replace(">-1000<", ">minus 1000<", 1).encode(),
     "RADIO_ADD_OFFSET of band_id 0 is 'minus 1000', not a number"),
    (_GOOD_MTD.replace(">-1000<", ">-1e999<", 1).encode(), "RADIO_ADD_OFFSET of band_id 0 is '-1e999'"),
], ids=["truncated", "garbage", "unknown-encoding", "offset-text", "offset-infinite"])
def test_malformed_product_metadata_names_the_file(tmp_path, content, what):
    safe = tmp_path / f"{L1C}.SAFE"
    img = safe / "GRANULE" / "L1C_T32TPP_A035000_20220315T101031" / "IMG_DATA"
    img.mkdir(parents=True)
    mtd = safe / "MTD_MSIL1C.xml"
    mtd.write_bytes(content)
    with pytest.raises(TilingError, match=re.escape(f"{mtd}: {what}")) as err:
        product_info(img, get_sensor("s2-l1c"))
    assert "restore the product's metadata file" in str(err.value) and isinstance(err.value, ValueError)


def test_tile_py_on_a_product_with_malformed_metadata_is_an_error(products, tmp_path, capsys):
    safe = Path(shutil.copytree(products["l1c"], tmp_path / products["l1c"].name))
    mtd = safe / "MTD_MSIL1C.xml"
    mtd.write_text(_BOGUS_ENCODING)  # was a traceback (LookupError)
    assert tile.main([str(safe), "--tile-size", "60", "--out", str(tmp_path / "s.zarr")]) == 2
    assert capsys.readouterr().err.startswith(f"error: {mtd}: not readable XML")
    assert not (tmp_path / "s.zarr").exists()


def _landsat_folder(root: Path) -> Path:
    folder = root / LANDSAT_ID
    window = Window(800, 800, 128, 128)
    with rasterio.open(LANDSAT) as src:
        data, profile = src.read(window=window), dict(src.profile)
        profile["transform"] = src.window_transform(window)
    for i, band in enumerate(("B2", "B3", "B4")):
        _write(folder / f"{LANDSAT_ID}_{band}.TIF", data[i : i + 1], profile)
    coarse = data[:1].reshape(1, 64, 2, 64, 2).mean(axis=(2, 4)).astype(np.uint16)
    _write(folder / f"{LANDSAT_ID}_B2_60m.TIF", coarse,
           {**profile, "transform": profile["transform"] @ profile["transform"].scale(2)})
    for aux in ("QA_PIXEL", "QA_RADSAT", "SAA", "SZA", "VAA", "VZA"):
        _write(folder / f"{LANDSAT_ID}_{aux}.TIF", (data[2:3] // 7).astype(np.uint16), profile)
    for meta in ("MTL.txt", "MTL.xml", "MTL.json", "ANG.txt"):
        (folder / f"{LANDSAT_ID}_{meta}").write_text("GROUP = LANDSAT_METADATA_FILE\n")
    return folder


def test_landsat_collection_folder(tmp_path, capsys, caplog):
    folder = _landsat_folder(tmp_path)
    out = tmp_path / "ls.zarr"
    with caplog.at_level(logging.WARNING):
        code = tile.main([str(folder), "--sensor", "landsat-oli", "--bands", "B2,B3,B4",
                          "--tile-size", "64", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    (line,) = _skip_lines(caplog)
    assert "QA_PIXEL (1)" in line and "SAA (1)" in line and "band copies at another resolution (1)" in line
    store = TileStore.open(out)
    assert store.attrs["tiles"] == 4
    with rasterio.open(LANDSAT) as src:
        expected = src.read(window=Window(800, 800, 64, 64))
    np.testing.assert_array_equal(store.read_tiles(store.index()[:1])[0], expected)


def test_nodata_reaches_the_warp_of_resampled_bands(tmp_path):
    """A 20 m band with a fill region (no declared nodata) beside a 10 m band."""
    b02 = _write(tmp_path / "x_B02.tif", *_crop("B02"))
    b05, profile = _crop("B05")
    b05[:, :, :30] = 0  # fill: left half of the swath
    path = _write(tmp_path / "x_B05.tif", b05, profile)
    scene = Scene("t/x", (BandSource("B02", str(b02), 1), BandSource("B05", str(path), 1)))
    grid, dtype, declared = scene_grid(scene, get_sensor("s2-l1c"), None)
    assert declared is None and grid.width == SIDE_10M
    low = b05[0, :, 30:].min()  # darkest valid 20 m pixel
    with SceneReader(scene, grid, dtype) as reader:  # the warp knows no nodata: fill blends in
        blended = reader.read(0, 0, SIDE_10M, SIDE_10M)[1]
    assert ((blended > 0) & (blended < 0.9 * low)).any()
    with SceneReader(scene, grid, dtype, nodata=float("nan")) as reader:  # NaN = none for uint16
        np.testing.assert_array_equal(reader.read(0, 0, SIDE_10M, SIDE_10M)[1], blended)
    with SceneReader(scene, grid, dtype, nodata=0) as reader:
        clean = reader.read(0, 0, SIDE_10M, SIDE_10M)[1]
    assert not ((clean > 0) & (clean < low)).any()  # each pixel is fill or a valid blend
    assert (clean[:, 62:] >= low).all() and (clean[:, :58] == 0).all()


def test_symlink_farm_ids_are_link_names(tmp_path):
    eurosat = sorted(EUROSAT.rglob("*.tif"))[0]
    objects = tmp_path / ".git" / "annex" / "objects" / "Xy" / "Zw"
    objects.mkdir(parents=True)
    content = objects / "SHA256E-s1234--0f3a.tif"
    shutil.copy(eurosat, content)
    farm = tmp_path / "farm"
    farm.mkdir()
    (farm / "forest_1.tif").symlink_to(content)
    (farm / "forest_2.tif").symlink_to(content)  # two links, one file: two scenes
    (farm / "loop").symlink_to(farm)  # a folder loop must not hang the walk
    rgb = get_sensor("rgb")
    scenes = discover_scenes([str(farm)], rgb, rgb.names, band_order="R,G,B")
    assert [s.scene_id for s in scenes] == ["farm/forest_1", "farm/forest_2"]
    assert scenes[0].files == [str(farm / "forest_1.tif")]
    (single,) = discover_scenes([str(farm / "forest_2.tif")], rgb, rgb.names, band_order="R,G,B")
    assert single.scene_id == "farm/forest_2"  # not the annex hash name
    # a band folder of links to hash-named files: bands come from the link names
    patch = BIGEARTHNET / "S2A_MSIL2A_20170613T101031_87_48"
    linked = tmp_path / "dvc" / patch.name
    linked.mkdir(parents=True)
    for i, f in enumerate(sorted(patch.glob("*.tif"))):
        target = objects / f"md5-{i:02d}"
        shutil.copy(f, target)
        (linked / f.name).symlink_to(target)
    s2 = get_sensor("s2-l2a")
    (scene,) = discover_scenes([str(linked)], s2, s2.names)
    assert scene.scene_id == f"dvc/{patch.name}" and scene.sources[0].path.endswith("_B01.tif")
    grid, _, _ = scene_grid(scene, s2, None)
    assert grid.width == 120
    os.remove(linked / next(f.name for f in patch.glob("*_B11.tif")))
    (linked / f"{patch.name}_B11.tif").symlink_to(objects / "not-fetched")
    with pytest.raises(InputNotFoundError, match="_B11.tif: symlink to a missing file.*git annex get"):
        discover_scenes([str(linked)], s2, s2.names)


def test_two_native_files_for_one_band(tmp_path):
    folder = tmp_path / "two"
    shutil.copytree(BIGEARTHNET / "S2A_MSIL2A_20170613T101031_87_48", folder)
    shutil.copy(next(folder.glob("*_B02.tif")), folder / "other_scene_B02.tif")
    s2 = get_sensor("s2-l2a")
    with pytest.raises(BandError, match="two files hold band B02 at its native resolution"):
        discover_scenes([str(folder)], s2, s2.names)
