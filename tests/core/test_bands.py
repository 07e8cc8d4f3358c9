"""The band registry: names, aliases, layouts, file names."""

from __future__ import annotations

import pytest

from rsmae.bands import LAYOUTS, SENSORS, band_from_filename, check_bands, get_layout, get_sensor, rgb_indices
from rsmae.errors import BandError


def test_sensors_have_expected_bands() -> None:
    assert len(get_sensor("s2-l1c").bands) == 13 and len(get_sensor("S2-L2A").bands) == 12
    assert "B10" not in get_sensor("s2-l2a").names
    s2 = get_sensor("s2-l1c")
    assert s2.band("B8A").gsd_m == 20 and s2.band("B02").gsd_m == 10 and s2.band("B01").gsd_m == 60
    assert s2.band("B8A").wavelength_nm == pytest.approx(864.7)
    assert get_sensor("landsat-oli").band("B8").gsd_m == 15


@pytest.mark.parametrize(("sensor", "alias", "name"), [
    ("s2-l1c", "B08A", "B8A"), ("s2-l1c", "b8a", "B8A"), ("s2-l1c", "B2", "B02"),
    ("s2-l1c", "red", "B04"), ("landsat-oli", "B02", "B2"), ("landsat-oli", "SR_B5", "B5"),
    ("rgb", "red", "R"),
])
def test_aliases(sensor: str, alias: str, name: str) -> None:
    assert get_sensor(sensor).band(alias).name == name


def test_unknown_names_are_errors() -> None:
    with pytest.raises(BandError, match="unknown sensor 'modis'"):
        get_sensor("modis")
    with pytest.raises(BandError, match="has no band 'B10'"):
        get_sensor("s2-l2a").band("B10")
    with pytest.raises(BandError, match="repeated"):
        get_sensor("s2-l1c").resolve(["B02", "B2"])


def test_layouts() -> None:
    s2 = get_sensor("s2-l1c")
    eurosat = get_layout("eurosat", s2)
    assert eurosat[-1] == "B8A" and sorted(eurosat) == sorted(s2.names)
    assert get_layout("B04,B03,B02", s2) == ("B04", "B03", "B02")
    with pytest.raises(BandError, match="pass --sensor s2-l1c"):
        get_layout("eurosat", get_sensor("s2-l2a"))
    with pytest.raises(BandError, match="unknown band layout"):
        get_layout("sentinel", s2)
    assert all(name in LAYOUTS for name in ("eurosat", "eolearn-l1c"))


def test_band_from_filename() -> None:
    s2 = get_sensor("s2-l1c")
    assert band_from_filename("S2A_OPER_MSI_L1C_TL_EPA__20160809T015434_A000162_T32TPP_B8A.tif", s2) == "B8A"
    assert band_from_filename("x/S2A_MSIL2A_20170613T101031_87_48_B01.tif", s2) == "B01"
    assert band_from_filename("LC08_L1TP_224078_20200518_20200518_01_RT.TIF", s2) is None


def test_rgb_and_checks() -> None:
    assert rgb_indices(list(SENSORS["s2-l1c"].names), "s2-l1c") == (3, 2, 1)
    assert rgb_indices(["B1", "B2", "B3", "B4", "B5", "B7"], "landsat-tm") == (2, 1, 0)
    assert rgb_indices(["B02", "B03"], "s2-l1c") is None
    with pytest.raises(BandError, match="do not match"):
        check_bands(["B02", "B03"], ["B03", "B02"], "store.zarr")
