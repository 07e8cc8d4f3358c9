"""No evaluation place in a pretraining corpus: footprints overlapped on the ground, not only paths.

:mod:`rsmae.datasets.leakage` finds an evaluation *file* in a corpus (same path or same bytes). A
pretraining scene can hold an evaluation image without sharing a byte with it: a EuroSAT patch cut
from the same Sentinel-2 granule, a neighbouring city of the same tile and date. Here every raster's
footprint is put into one CRS (WGS 84 longitude/latitude), grown by a margin in metres, and each
pretraining footprint is checked against each evaluation footprint. Stores are read from their scene
table (CRS, transform, size): no image is opened.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import rasterio
from rasterio.transform import Affine, array_bounds
from rasterio.warp import transform_bounds

from rsmae.store import TileStore

__all__ = ["Footprint", "FootprintOverlap", "file_footprints", "footprint_overlaps", "store_footprints"]

_METRES_PER_DEGREE = 111_320.0
Bounds = tuple[float, float, float, float]


@dataclass(frozen=True)
class Footprint:
    """Where a raster lies: ``bounds`` (west, south, east, north) in degrees of WGS 84."""

    name: str
    bounds: Bounds


@dataclass(frozen=True)
class FootprintOverlap:
    """A pretraining footprint within ``margin_m`` of an evaluation footprint.

    Attributes:
        corpus: The pretraining scene or file.
        evaluation: The evaluation image or scene.
        overlap: Fraction of the evaluation footprint inside the pretraining one (0 when they only
            come within the margin of each other).
    """

    corpus: str
    evaluation: str
    overlap: float


def _wgs84(crs: object, bounds: Bounds) -> Bounds | None:
    if not crs:
        return None
    return tuple(transform_bounds(crs, "EPSG:4326", *bounds, densify_pts=21))  # type: ignore[return-value]


def file_footprints(paths: Iterable[str | Path]) -> list[Footprint]:
    """Footprints of raster files (files without a CRS are left out: they have no place)."""
    found = []
    for path in paths:
        with rasterio.open(path) as src:
            bounds = _wgs84(src.crs, tuple(src.bounds))
        if bounds is not None:
            found.append(Footprint(str(path), bounds))
    return found


def store_footprints(store: str | Path) -> list[Footprint]:
    """Footprints of the scenes a tile store holds, from its scene table (no file is read)."""
    table = TileStore.open(store).scenes(["id", "crs", "transform", "width", "height"])
    found = []
    for sid, crs, t, w, h in zip(table["id"].tolist(), table["crs"], table["transform"].tolist(),
                                 table["width"].tolist(), table["height"].tolist(), strict=True):
        if not sid:  # a skipped scene: not in the corpus
            continue
        west, south, east, north = array_bounds(int(h), int(w), Affine(*t))
        bounds = _wgs84(crs, (min(west, east), min(south, north), max(west, east), max(south, north)))
        if bounds is not None:
            found.append(Footprint(f"{store}:{sid}", bounds))
    return found


def _grown(bounds: Bounds, margin_m: float) -> Bounds:
    west, south, east, north = bounds
    dlat = margin_m / _METRES_PER_DEGREE
    dlon = margin_m / (_METRES_PER_DEGREE * max(math.cos(math.radians((south + north) / 2)), 1e-6))
    return west - dlon, south - dlat, east + dlon, north + dlat


def _overlap(a: Bounds, b: Bounds) -> float:
    """Fraction of ``b``'s area inside ``a`` (in degrees: the two are small and close)."""
    w, s = max(a[0], b[0]), max(a[1], b[1])
    e, n = min(a[2], b[2]), min(a[3], b[3])
    area = (b[2] - b[0]) * (b[3] - b[1])
    return max(e - w, 0.0) * max(n - s, 0.0) / area if area > 0 else 0.0


def footprint_overlaps(corpus: Sequence[Footprint], evaluation: Sequence[Footprint],
                       margin_m: float = 1000.0) -> list[FootprintOverlap]:
    """Every (corpus, evaluation) pair whose footprints come within ``margin_m`` metres.

    Args:
        corpus: Footprints of the pretraining scenes.
        evaluation: Footprints of the evaluation images or scenes.
        margin_m: How near counts as the same place (adjoining scenes of one granule and date share
            their border).

    Returns:
        The pairs, corpus order then evaluation order.
    """
    pairs = []
    for c in corpus:
        near = _grown(c.bounds, margin_m)
        for e in evaluation:
            if _overlap(near, e.bounds) > 0:
                pairs.append(FootprintOverlap(c.name, e.name, round(_overlap(c.bounds, e.bounds), 4)))
    return pairs
