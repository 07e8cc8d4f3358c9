"""The band registry: the one place that knows sensors, band names, wavelengths and GSD.

Bands are looked up by name (aliases such as ``B8A``/``B08A`` or ``B2``/``B02`` resolve to one
canonical name), never by position. Dataset conventions that store bands in another order
(EuroSAT puts B8A last) are declared as named *layouts*.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rsmae.errors import BandError

__all__ = [
    "LAYOUTS",
    "SENSORS",
    "Band",
    "Sensor",
    "band_from_filename",
    "band_resolution_from_path",
    "check_bands",
    "get_layout",
    "get_sensor",
    "pick_band_files",
    "raster_kind",
    "rgb_indices",
]


@dataclass(frozen=True)
class Band:
    """One spectral band.

    Attributes:
        name: Canonical name (``"B8A"``).
        wavelength_nm: Central wavelength in nanometres.
        gsd_m: Native ground sample distance in metres (``None`` when not defined).
        aliases: Other spellings that resolve to this band (``"B08A"``, ``"nir08"``).
        bandwidth_nm: Full width at half maximum of the spectral response in nanometres (``None``
            when not defined, e.g. plain RGB cameras).
    """

    name: str
    wavelength_nm: float
    gsd_m: float | None
    aliases: tuple[str, ...] = ()
    bandwidth_nm: float | None = None


@dataclass(frozen=True)
class Sensor:
    """A sensor (or product level) and its bands in canonical order.

    Attributes:
        name: Registry key (``"s2-l1c"``).
        description: Human-readable name.
        bands: Bands in canonical order.
        rgb: Names of the red, green and blue bands for true-colour composites.
    """

    name: str
    description: str
    bands: tuple[Band, ...]
    rgb: tuple[str, str, str]

    @property
    def names(self) -> tuple[str, ...]:
        """Canonical band names in canonical order."""
        return tuple(b.name for b in self.bands)

    def band(self, name: str) -> Band:
        """Return the band called ``name`` (any alias, any case).

        Raises:
            BandError: if the sensor has no such band.
        """
        key = _norm(name)
        for band in self.bands:
            if key == _norm(band.name) or key in (_norm(a) for a in band.aliases):
                return band
        raise BandError(
            f"sensor {self.name!r} has no band {name!r}; its bands are {', '.join(self.names)}"
        )

    def resolve(self, names: Sequence[str]) -> tuple[str, ...]:
        """Map band names or aliases to canonical names, refusing duplicates.

        Raises:
            BandError: on an unknown or repeated band.
        """
        out = tuple(self.band(n).name for n in names)
        dup = sorted({n for n in out if out.count(n) > 1})
        if dup:
            raise BandError(f"bands repeated in {list(names)}: {', '.join(dup)}")
        return out


def _norm(name: str) -> str:
    return name.strip().upper().replace("_", "").replace("-", "")


def _s2(l2a: bool) -> tuple[Band, ...]:
    table = [  # name, central wavelength and bandwidth (nm) of Sentinel-2A, GSD (m), aliases
        ("B01", 442.7, 21, 60, ("B1", "coastal")),
        ("B02", 492.4, 66, 10, ("B2", "blue")),
        ("B03", 559.8, 36, 10, ("B3", "green")),
        ("B04", 664.6, 31, 10, ("B4", "red")),
        ("B05", 704.1, 15, 20, ("B5", "rededge1")),
        ("B06", 740.5, 15, 20, ("B6", "rededge2")),
        ("B07", 782.8, 20, 20, ("B7", "rededge3")),
        ("B08", 832.8, 106, 10, ("B8", "nir")),
        ("B8A", 864.7, 21, 20, ("B08A", "nir08")),
        ("B09", 945.1, 20, 60, ("B9", "watervapour")),
        ("B10", 1373.5, 31, 60, ("cirrus",)),
        ("B11", 1613.7, 91, 20, ("swir16",)),
        ("B12", 2202.4, 175, 20, ("swir22",)),
    ]
    return tuple(Band(n, w, g, a, float(bw)) for n, w, bw, g, a in table if not (l2a and n == "B10"))


_OLI = (  # bandwidths: USGS Landsat 8 OLI band edges
    Band("B1", 443.0, 30, ("B01", "coastal", "SR_B1"), 16.0),
    Band("B2", 482.0, 30, ("B02", "blue", "SR_B2"), 60.0),
    Band("B3", 561.4, 30, ("B03", "green", "SR_B3"), 57.0),
    Band("B4", 654.6, 30, ("B04", "red", "SR_B4"), 37.0),
    Band("B5", 864.7, 30, ("B05", "nir08", "SR_B5"), 28.0),
    Band("B6", 1608.9, 30, ("B06", "swir16", "SR_B6"), 85.0),
    Band("B7", 2200.7, 30, ("B07", "swir22", "SR_B7"), 187.0),
    Band("B8", 589.5, 15, ("B08", "pan"), 173.0),
    Band("B9", 1373.4, 30, ("B09", "cirrus"), 21.0),
)

_TM = (  # bandwidths: USGS Landsat 4-5 TM band edges
    Band("B1", 485.0, 30, ("B01", "blue"), 70.0),
    Band("B2", 560.0, 30, ("B02", "green"), 80.0),
    Band("B3", 660.0, 30, ("B03", "red"), 60.0),
    Band("B4", 830.0, 30, ("B04", "nir"), 140.0),
    Band("B5", 1650.0, 30, ("B05", "swir16"), 200.0),
    Band("B7", 2215.0, 30, ("B07", "swir22"), 270.0),
)

_RGB = (
    Band("R", 640.0, None, ("red",)),
    Band("G", 550.0, None, ("green",)),
    Band("B", 460.0, None, ("blue",)),
)

SENSORS: dict[str, Sensor] = {
    "s2-l1c": Sensor("s2-l1c", "Sentinel-2 MSI Level-1C (13 bands)", _s2(False), ("B04", "B03", "B02")),
    "s2-l2a": Sensor("s2-l2a", "Sentinel-2 MSI Level-2A (12 bands)", _s2(True), ("B04", "B03", "B02")),
    "landsat-oli": Sensor("landsat-oli", "Landsat 8/9 OLI", _OLI, ("B4", "B3", "B2")),
    "landsat-tm": Sensor("landsat-tm", "Landsat 4-7 TM/ETM+ reflective", _TM, ("B3", "B2", "B1")),
    "rgb": Sensor("rgb", "Plain RGB", _RGB, ("R", "G", "B")),
}

# Dataset conventions: the order in which a source stores its bands. name -> (sensor, order).
LAYOUTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "eurosat": (
        "s2-l1c",
        ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B09", "B10", "B11", "B12", "B8A"),
    ),
    "eolearn-l1c": ("s2-l1c", SENSORS["s2-l1c"].names),
    "bigearthnet": ("s2-l2a", SENSORS["s2-l2a"].names),
    "landsat-tm-6": ("landsat-tm", SENSORS["landsat-tm"].names),
}


def get_sensor(name: str) -> Sensor:
    """Return the registered sensor ``name``.

    Raises:
        BandError: naming the known sensors when ``name`` is not one of them.
    """
    try:
        return SENSORS[name.lower()]
    except KeyError:
        raise BandError(f"unknown sensor {name!r}; known sensors: {', '.join(SENSORS)}") from None


def get_layout(spec: str, sensor: Sensor) -> tuple[str, ...]:
    """Resolve a band layout: a registered layout name or comma-separated band names.

    Args:
        spec: ``"eurosat"`` or ``"B01,B02,...,B8A"``.
        sensor: The sensor whose names the layout uses.

    Returns:
        Canonical band names in file order.

    Raises:
        BandError: when the layout is unknown or belongs to another sensor.
    """
    if spec in LAYOUTS:
        layout_sensor, names = LAYOUTS[spec]
        if layout_sensor != sensor.name:
            raise BandError(
                f"band layout {spec!r} is for sensor {layout_sensor!r}, not {sensor.name!r}; "
                f"pass --sensor {layout_sensor}"
            )
        return names
    if "," not in spec and spec.strip() and not _looks_like_band(spec):
        raise BandError(f"unknown band layout {spec!r}; known layouts: {', '.join(LAYOUTS)}")
    return sensor.resolve([s for s in spec.split(",") if s.strip()])


def _looks_like_band(text: str) -> bool:
    return re.fullmatch(r"(SR_)?B\d{1,2}A?|[RGB]", text.strip(), re.IGNORECASE) is not None


_BAND_IN_NAME = re.compile(r"(?:^|[_\-.])((?:SR_)?B\d{1,2}A?)(?=[_\-.]|$)", re.IGNORECASE)


# Product rasters that are not spectral bands although they sit beside the band files: Sentinel-2
# true-colour image, scene classification, aerosol, water vapour, preview and masks; Landsat
# Collection quality, saturation, angle and surface-temperature auxiliaries.
_NOT_BANDS = re.compile(
    r"(?:^|[_\-.])(TCI|SCL|AOT|WVP|PVI|CLD|SNW|MSK_[A-Z]+|QA_[A-Z]+|BQA|SR_QA_[A-Z]+|ST_QA|ST_TRAD|"
    r"ST_URAD|ST_DRAD|ST_ATRAN|ST_EMIS|ST_EMSD|ST_CDIST|SAA|SZA|VAA|VZA|ANG)(?=[_\-.]|$)",
    re.IGNORECASE,
)
_RESOLUTION_IN_NAME = re.compile(r"(?:^|[_\-.])(\d+(?:\.\d+)?)m$", re.IGNORECASE)
_RESOLUTION_FOLDER = re.compile(r"R(\d+(?:\.\d+)?)m", re.IGNORECASE)


def band_from_filename(path: str | Path, sensor: Sensor) -> str | None:
    """Find the band a single-band file holds from its name (``..._B8A.tif`` -> ``"B8A"``).

    Product rasters that only mention a band (Sentinel-2 masks ``MSK_DETFOO_B01.jp2``) and
    non-band rasters (``TCI``, ``SCL``, ``QA_PIXEL``, see :func:`raster_kind`) hold no band.

    Returns:
        The canonical band name, or ``None`` when the name carries no band of ``sensor``.
    """
    stem = Path(path).name.rsplit(".", 1)[0]
    if _NOT_BANDS.search(stem):
        return None
    for match in reversed(_BAND_IN_NAME.findall(stem)):
        try:
            return sensor.band(match).name
        except BandError:
            continue
    return None


def raster_kind(path: str | Path) -> str:
    """A short name for what a non-band raster is, for log lines (``"TCI"``, ``"QA_PIXEL"``).

    Returns:
        The product token found in the name (upper case), or the file suffix-less name's last
        ``_`` part when the name carries no known token.
    """
    stem = Path(path).name.rsplit(".", 1)[0]
    found = _NOT_BANDS.search(stem)
    return found.group(1).upper() if found else stem.rsplit("_", 1)[-1]


def band_resolution_from_path(path: str | Path) -> float | None:
    """Pixel size in metres a band file's name or folder declares, if any.

    Sentinel-2 L2A names it twice (``R20m/T32TPP_..._B05_20m.jp2``); resampled copies beside a
    Landsat band are often named ``..._B2_60m.TIF``.

    Returns:
        The resolution in metres, or ``None`` when neither the name nor the folder says.
    """
    path = Path(path)
    found = _RESOLUTION_IN_NAME.search(path.name.rsplit(".", 1)[0])
    if found:
        return float(found.group(1))
    folder = _RESOLUTION_FOLDER.fullmatch(path.parent.name)
    return float(folder.group(1)) if folder else None


def pick_band_files(
    files: Sequence[Path], sensor: Sensor
) -> tuple[dict[str, Path], list[Path], list[tuple[str, Path, Path]]]:
    """Choose one file per band of ``sensor`` among a product folder's rasters.

    A band present at several resolutions is taken at its native one (the registry's GSD; a
    file whose name and folder declare no resolution counts as native); failing that, the finest
    copy. Files naming no band of the sensor (``TCI``, ``SCL``, ``QA_PIXEL``, ``B10`` for
    Sentinel-2 L2A, ...) and the other-resolution copies are returned as skipped.

    Args:
        files: Raster files of one folder (or one product's band folders).
        sensor: The sensor whose bands are looked for.

    Returns:
        ``(chosen, skipped, clashes)``: band name -> file; files not used; and
        ``(band, file, other)`` for bands with two native files (two scenes in one folder).
    """
    candidates: dict[str, list[tuple[float | None, Path]]] = {}
    skipped: list[Path] = []
    for f in files:
        band = band_from_filename(f, sensor)
        if band is None:
            skipped.append(f)
        else:
            candidates.setdefault(band, []).append((band_resolution_from_path(f), f))
    chosen: dict[str, Path] = {}
    clashes: list[tuple[str, Path, Path]] = []
    for band, found in candidates.items():
        native_gsd = sensor.band(band).gsd_m
        native = [f for res, f in found if res is None or res == native_gsd]
        if len(native) > 1:
            clashes.append((band, native[0], native[1]))
        pick = native[0] if native else min(found, key=lambda rf: rf[0] or 0.0)[1]
        chosen[band] = pick
        skipped.extend(f for _, f in found if f != pick)
    return chosen, skipped, clashes


def check_bands(expected: Sequence[str], actual: Sequence[str], where: str) -> None:
    """Raise unless ``actual`` holds exactly the ``expected`` bands in the same order.

    A band mismatch is always an error, never a silent reorder.

    Raises:
        BandError: naming ``where`` and both band lists.
    """
    if tuple(expected) != tuple(actual):
        raise BandError(
            f"{where}: bands {list(actual)} do not match the expected {list(expected)}; "
            "select the same bands (by name) on both sides"
        )


def rgb_indices(bands: Sequence[str], sensor: str | Sensor) -> tuple[int, int, int] | None:
    """Positions of the sensor's red, green and blue bands in ``bands``, or ``None`` if absent."""
    sensor = get_sensor(sensor) if isinstance(sensor, str) else sensor
    if not all(b in bands for b in sensor.rgb):
        return None
    r, g, b = (list(bands).index(n) for n in sensor.rgb)
    return r, g, b
