"""Products as delivered: Sentinel-2 ``.SAFE`` folders, Landsat Collection folders, their metadata.

Layouts understood (band files are named by the rules of :mod:`rsmae.bands`)::

    S2A_MSIL1C_<date>_N0400_....SAFE/         one scene per granule: <product>/<granule>
        MTD_MSIL1C.xml                        PROCESSING_BASELINE, RADIO_ADD_OFFSET per band
        GRANULE/L1C_T32TPP_.../IMG_DATA/      T32TPP_<date>_B01.jp2 ... _B12.jp2, _TCI.jp2
        GRANULE/L1C_T32TPP_.../QI_DATA/       masks (MSK_DETFOO_B01.jp2 ...): not read
        DATASTRIP/ HTML/ rep_info/ AUX_DATA/  not read (HTML holds PNG banners)
    S2A_MSIL2A_....SAFE/                      MTD_MSIL2A.xml: BOA_ADD_OFFSET per band
        GRANULE/L2A_.../IMG_DATA/R10m|R20m|R60m/  each band at several resolutions, plus
                                              AOT, WVP, TCI, SCL: the folders form one scene,
                                              each band taken at its native resolution
    LC08_L2SP_..._02_T1/                      one scene: ..._SR_B1.TIF ..., QA_PIXEL, QA_RADSAT,
                                              SAA/SZA/VAA/VZA, ST_*, MTL files skipped

Radiometric offset. From processing baseline 04.00 (25 January 2022) Sentinel-2 L1C and L2A
digital numbers carry an additive offset (``DN = 10000 * reflectance + 1000``; the metadata
declares ``RADIO_ADD_OFFSET``/``BOA_ADD_OFFSET = -1000``). rsmae **applies** it when reading
(:func:`apply_offset`), so pixels and statistics of old and new baselines are on one scale, that of
baselines before 04.00: ``max(DN + offset, 1)`` for valid pixels (DN ≠ nodata), nodata (0)
unchanged. Valid pixels darker than the offset become 1, not 0, so they never turn into nodata.
The offset applied is kept on the scene (:attr:`~rsmae.tiling.scenes.Scene.offset`) for its
record. L1C (top of atmosphere) and L2A (surface) reflectances differ in kind: scenes of both
levels are refused in one store unless asked for (:func:`check_product_levels`).
"""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rsmae.bands import Sensor
from rsmae.errors import BandError, TilingError

__all__ = [
    "ProductInfo",
    "apply_offset",
    "check_product_levels",
    "is_resolution_folder",
    "product_info",
    "product_scene_name",
    "prune_product_folders",
]

_S2_BAND_IDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11",
                "B12")  # band_id 0..12 of the Sentinel-2 metadata
_MTD_NAMES = ("MTD_MSIL1C.xml", "MTD_MSIL2A.xml")
_NOT_SCENE_FOLDERS = frozenset({"QI_DATA", "AUX_DATA", "DATASTRIP", "HTML", "rep_info"})
_LEVEL_IN_NAME = re.compile(r"MSI_?(L1C|L2A)|(?:^|_)(L1C|L2A)_T\d{2}[A-Z]{3}", re.IGNORECASE)
_RES_FOLDER = re.compile(r"R\d+(?:\.\d+)?m", re.IGNORECASE)


@dataclass(frozen=True)
class ProductInfo:
    """What a product's metadata says about its scenes.

    Attributes:
        level: ``"L1C"``/``"L2A"`` (Sentinel-2) or ``None`` when unknown.
        baseline: Processing baseline (``"04.00"``) when the metadata gives one.
        offsets: Additive offset per canonical band name (``{"B01": -1000.0, ...}``); empty when
            the product declares none.
        metadata: The metadata file read, if any.
    """

    level: str | None = None
    baseline: str | None = None
    offsets: dict[str, float] = field(default_factory=dict)
    metadata: str | None = None


def _in_product(path: Path) -> bool:
    return any(p.endswith(".SAFE") or p == "GRANULE" for p in path.parts)


def prune_product_folders(dirpath: Path, dirnames: list[str]) -> None:
    """Drop, in place, sub-folders of a ``.SAFE`` product that hold no scene (masks, banners)."""
    if _in_product(dirpath) or any((dirpath / m).is_file() for m in _MTD_NAMES):
        dirnames[:] = [d for d in dirnames if d not in _NOT_SCENE_FOLDERS]


def is_resolution_folder(folder: Path) -> bool:
    """``R10m``/``R20m``/``R60m``: band folders of one Sentinel-2 L2A scene, merged into it."""
    return _RES_FOLDER.fullmatch(folder.name) is not None


def _safe_root(folder: Path) -> Path | None:
    """The product folder above a scene folder: the nearest ancestor with an ``MTD_MSIL*.xml``."""
    for candidate in [folder, *list(folder.parents)[:4]]:
        if any((candidate / m).is_file() for m in _MTD_NAMES):
            return candidate
    return None


def product_scene_name(folder: Path) -> tuple[str, str] | None:
    """``(product, granule)`` naming a ``.SAFE`` granule's ``IMG_DATA`` scene, else ``None``."""
    if folder.name != "IMG_DATA" or folder.parent.parent.name != "GRANULE":
        return None
    product = folder.parent.parent.parent.name
    return product.removesuffix(".SAFE"), folder.parent.name


def product_info(folder: Path, sensor: Sensor, sample: Path | None = None) -> ProductInfo:
    """Product level, processing baseline and offsets of the scene in ``folder``.

    Read from the product's ``MTD_MSIL1C.xml``/``MTD_MSIL2A.xml`` when the folder sits in a
    ``.SAFE`` product (a ``*.SAFE`` or ``GRANULE`` folder in its path); otherwise the level comes
    from the names (``MSIL2A``, ``MSI_L1C``) and no offset is declared. A baseline of 04.00 or
    later without explicit offsets means -1000 on every band (the format's definition).

    Args:
        folder: The scene folder.
        sensor: The sensor (canonical band names of the offsets).
        sample: A band file of the scene, whose name may give the level.

    Raises:
        TilingError: naming the metadata file and what is wrong when it is not readable XML
            (truncated, garbage, unknown encoding) or declares an offset that is not a number.
    """
    root = _safe_root(folder) if _in_product(folder) else None  # no file look-ups elsewhere
    if root is None:
        return ProductInfo(level=_level_from_name(sample or folder))
    mtd = next(root / m for m in _MTD_NAMES if (root / m).is_file())
    try:
        tree = ET.parse(mtd)
    except (ET.ParseError, LookupError, ValueError, OSError) as err:  # LookupError: unknown encoding
        raise _metadata_error(mtd, f"not readable XML ({err})") from err
    texts = {_local(e.tag): (e.text or "").strip() for e in tree.iter()}
    level = _level_from_text(texts.get("PROCESSING_LEVEL", "") or texts.get("PRODUCT_TYPE", ""))
    baseline = texts.get("PROCESSING_BASELINE") or None
    names = _band_id_names(tree)
    offsets: dict[str, float] = {}
    for e in tree.iter():
        if _local(e.tag) in ("RADIO_ADD_OFFSET", "BOA_ADD_OFFSET") and e.get("band_id") is not None:
            name = names.get(e.get("band_id", ""))
            if name is not None:
                offsets[_canonical(name, sensor)] = _offset(mtd, e)
    if not offsets and baseline is not None and _baseline_at_least(baseline, 4.0):
        offsets = {b: -1000.0 for b in _S2_BAND_IDS}
    offsets = {b: v for b, v in offsets.items() if v != 0.0}
    return ProductInfo(level or _level_from_name(mtd.parent), baseline, offsets, str(mtd))


def _metadata_error(mtd: Path, what: str) -> TilingError:
    return TilingError(f"{mtd}: {what}; restore the product's metadata file (fetch the product again) "
                       "or remove it to tile the band files without offsets")


def _offset(mtd: Path, element: ET.Element) -> float:
    """The number an ``*_ADD_OFFSET`` element holds (a finite float), else a :class:`TilingError`."""
    try:
        value = float(element.text or 0)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise _metadata_error(mtd, f"{_local(element.tag)} of band_id {element.get('band_id')} is "
                                   f"{element.text!r}, not a number")
    return value


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _canonical(name: str, sensor: Sensor) -> str:
    try:
        return sensor.band(name).name
    except BandError:  # B10 for an L2A sensor, ...: kept under its own name, never read
        return name


def _band_id_names(tree: ET.ElementTree) -> dict[str, str]:
    """``band_id`` -> physical band name, from ``Spectral_Information`` (else the standard order)."""
    names = {str(i): b for i, b in enumerate(_S2_BAND_IDS)}
    for e in tree.iter():
        if _local(e.tag) == "Spectral_Information" and e.get("bandId") and e.get("physicalBand"):
            names[e.get("bandId", "")] = e.get("physicalBand", "")
    return names


def _baseline_at_least(baseline: str, version: float) -> bool:
    try:
        return float(baseline) >= version
    except ValueError:
        return False


def _level_from_text(text: str) -> str | None:
    found = re.search(r"(?:Level-|MSI)(1C|2A)", text)
    return f"L{found.group(1)}" if found else None


def _level_from_name(path: Path) -> str | None:
    for part in reversed(path.parts[-3:]):
        found = _LEVEL_IN_NAME.search(part)
        if found:
            return (found.group(1) or found.group(2)).upper()
    return None


def apply_offset(data: np.ndarray, offsets: Iterable[float], nodata: float | None) -> np.ndarray:
    """Apply per-band additive offsets to ``(C, H, W)`` pixels, in place where possible.

    Valid pixels become ``max(DN + offset, 1)`` (integers) or ``DN + offset`` (floats); pixels
    equal to ``nodata`` (and NaN) are left as they are. Bands with offset 0 are untouched.

    Args:
        data: Pixels, one band per offset.
        offsets: Additive offset per band (``-1000`` for Sentinel-2 baseline ≥ 04.00).
        nodata: Nodata value of the pixels, or ``None``.

    Returns:
        ``data`` with the offsets applied.
    """
    for c, offset in enumerate(offsets):
        if not offset:
            continue
        band = data[c]
        valid = np.ones(band.shape, dtype=bool) if nodata is None else band != nodata
        if band.dtype.kind in "ui":
            shifted = band.astype(np.int64) + int(round(offset))
            np.maximum(shifted, 1, out=shifted)
            info = np.iinfo(band.dtype)
            np.minimum(shifted, info.max, out=shifted)
            band[valid] = shifted[valid].astype(band.dtype)
        else:
            band[valid] = band[valid] + offset
    return data


def check_product_levels(levels: dict[str, str | None], *, allow_mixed: bool = False,
                         where: str = "the inputs") -> None:
    """Refuse Sentinel-2 L1C and L2A scenes in one store unless ``allow_mixed``.

    Args:
        levels: Scene id (or file) -> product level (``None`` when unknown: never a conflict).
        allow_mixed: The user asked for both levels in one store.
        where: What the scenes are, for the message (``"the inputs"``, a store path).

    Raises:
        TilingError: naming both levels, one scene of each and the option.
    """
    by_level: dict[str, str] = {}
    for scene, level in levels.items():
        if level is not None:
            by_level.setdefault(level, scene)
    if len(by_level) > 1 and not allow_mixed:
        shown = ", ".join(f"{lvl} (e.g. {scene})" for lvl, scene in sorted(by_level.items()))
        raise TilingError(
            f"{where} mix Sentinel-2 product levels {shown}: top-of-atmosphere and surface "
            "reflectances would share one store's statistics; tile each level into its own "
            "--out, or pass --mix-product-levels (mix_product_levels=True) to mix them on purpose"
        )
