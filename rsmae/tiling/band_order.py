"""Which band is which in a multi-band file: its own band descriptions, or the user's --band-order.

A file that names its bands (GDAL band descriptions such as ``B02`` or ``B8A``) is read by those
names. A file of more bands than RGB that does not name them is refused unless the user gives
``--band-order``: guessing the sensor's canonical order would silently mislabel bands (a 13-band
EuroSAT file stores B8A last, not after B08). Where the user's order and the file's descriptions
disagree, the file is refused naming both.
"""

from __future__ import annotations

from collections.abc import Sequence

import rasterio
from rasterio.errors import RasterioError

from rsmae.bands import LAYOUTS, Sensor
from rsmae.errors import BandError

__all__ = ["check_described_order", "described_order", "file_band_order"]

_UNNAMED_OK = 3  # one to three unnamed bands: grey or RGB in the sensor's order


def described_order(descriptions: Sequence[str | None], sensor: Sensor) -> tuple[str, ...] | None:
    """The canonical band names a file's descriptions give, or ``None`` when they name no band set.

    Every band must be described by a name or alias of ``sensor``, each once.
    """
    if not descriptions or not all(d and d.strip() for d in descriptions):
        return None
    try:
        return sensor.resolve([str(d).strip() for d in descriptions])
    except BandError:
        return None


def file_band_order(path: str, sensor: Sensor) -> tuple[str, ...]:
    """The band order of a multi-band file given no ``--band-order``: its descriptions, or RGB.

    Raises:
        BandError: the file has more than three bands and does not name them.
    """
    try:
        with rasterio.open(path) as src:
            count, descriptions = src.count, src.descriptions
    except RasterioError:  # unreadable: the grid check names the file and skips the scene
        return sensor.names
    named = described_order(descriptions, sensor)
    if named is not None:
        return named
    if count <= _UNNAMED_OK:
        return sensor.names
    layouts = ", ".join(k for k, (s, _) in LAYOUTS.items() if s == sensor.name) or "none"
    raise BandError(
        f"{path}: {count} bands and no band descriptions, so which band is which is unknown; pass "
        f"--band-order with the file's bands in order (a layout for {sensor.name}: {layouts}; or "
        f"names, e.g. {','.join(sensor.names[:3])},...)")


def check_described_order(path: str, descriptions: Sequence[str | None], sensor: Sensor,
                          wanted: dict[int, str]) -> None:
    """Refuse a file whose band descriptions contradict the order the user gave.

    Args:
        path: The file.
        descriptions: Its GDAL band descriptions.
        sensor: The sensor the names belong to.
        wanted: 1-based band index -> the band the user's order puts there.

    Raises:
        BandError: naming the file, the position and both names.
    """
    named = described_order(descriptions, sensor)
    if named is None:
        return
    wrong = [(i, band, named[i - 1]) for i, band in sorted(wanted.items())
             if i <= len(named) and named[i - 1] != band]
    if wrong:
        i, band, found = wrong[0]
        raise BandError(
            f"{path}: --band-order puts {band} at position {i}, but the file describes that band as "
            f"{found} (its bands: {','.join(named)}); fix --band-order or leave it out to use the "
            "file's own names")
