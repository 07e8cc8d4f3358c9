"""Derived outputs: the PCA preview of an embedding raster and the polygons of a change mask.

Both read the finished rasters block by block (the preview keeps 3 values per cell; polygons come
from GDAL's polygonize over the raster band), so neither holds a whole feature raster in memory.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
from rasterio.features import shapes
from rasterio.windows import Window

__all__ = ["CovarianceSum", "change_polygons", "pca_preview"]


class CovarianceSum:
    """Streaming sums for a PCA of ``K``-dimensional features (valid cells only)."""

    def __init__(self, channels: int) -> None:
        self.n = 0
        self.sum = np.zeros(channels, np.float64)
        self.outer = np.zeros((channels, channels), np.float64)

    def add(self, block: np.ndarray) -> None:
        """Add ``(K, h, w)`` features; cells with NaN are left out."""
        x = block.reshape(block.shape[0], -1)
        x = x[:, ~np.isnan(x).any(axis=0)].astype(np.float64)
        self.n += x.shape[1]
        self.sum += x.sum(axis=1)
        self.outer += x @ x.T

    def components(self, k: int = 3) -> tuple[np.ndarray, np.ndarray]:
        """Mean ``(K,)`` and the first ``k`` principal axes ``(k, K)`` (zeros when nothing was added)."""
        channels = self.sum.shape[0]
        if self.n < 2:
            return np.zeros(channels), np.eye(k, channels)
        mean = self.sum / self.n
        cov = self.outer / self.n - np.outer(mean, mean)
        _, vectors = np.linalg.eigh(cov)
        axes = vectors[:, ::-1][:, :k].T
        # a deterministic sign: the largest loading of each axis is positive
        signs = np.sign(axes[np.arange(k), np.abs(axes).argmax(axis=1)])
        return mean, axes * signs[:, None]


def pca_preview(raster: Path, png: Path, pca: CovarianceSum, *, max_side: int = 1024,
                rows: int = 256) -> None:
    """Write the first three principal components of ``raster`` as an RGB PNG (nodata black).

    Args:
        raster: The embedding GeoTIFF.
        png: Output PNG.
        pca: Sums accumulated over the raster's cells.
        max_side: Longest side of the PNG (cells are subsampled beyond it).
        rows: Rows read per block.
    """
    from PIL import Image

    mean, axes = pca.components(3)
    with rasterio.open(raster) as ds:
        step = max(1, -(-max(ds.width, ds.height) // max_side))
        parts = []
        for r in range(0, ds.height, rows):
            block = ds.read(window=Window(0, r, ds.width, min(rows, ds.height - r)))[:, ::step, ::step]
            parts.append(np.einsum("kc,chw->khw", axes, block - mean[:, None, None]))
    rgb = np.concatenate(parts, axis=1) if parts else np.zeros((3, 1, 1))
    ok = ~np.isnan(rgb).any(axis=0)
    out = np.zeros(rgb.shape[1:] + (3,), np.uint8)
    if ok.any():
        lo, hi = np.percentile(rgb[:, ok], [2, 98], axis=1)
        scaled = (rgb - lo[:, None, None]) / np.maximum(hi - lo, 1e-12)[:, None, None]
        out[ok] = (np.clip(scaled, 0, 1)[:, ok].T * 255).astype(np.uint8)
    Image.fromarray(out).save(png)


def change_polygons(changed: Path, gpkg: Path, *, min_area: float = 0.0) -> int:
    """Polygons of the cells equal to 1 in ``changed`` written to ``gpkg`` (layer ``changes``).

    Args:
        changed: A uint8 GeoTIFF, 1 = change, 0 = anything else.
        gpkg: Output GeoPackage.
        min_area: Smallest polygon kept, in square metres (areas of a geographic CRS are computed in
            the scene's UTM zone).

    Returns:
        The number of polygons written.
    """
    import geopandas as gpd
    from shapely.geometry import shape

    with rasterio.open(changed) as ds:
        band = rasterio.band(ds, 1)
        found = shapes(band, mask=band, connectivity=8, transform=ds.transform)
        geoms = [shape(g) for g, v in found if v == 1]
        crs = ds.crs
    frame = gpd.GeoDataFrame({"geometry": geoms}, geometry="geometry", crs=crs)
    if not len(frame):
        area = []
    elif crs is not None and crs.is_geographic:
        area = frame.to_crs(frame.estimate_utm_crs()).area
    else:
        area = frame.area
    frame["area_m2"] = np.asarray(area, dtype=np.float64)
    frame = frame[frame["area_m2"] >= min_area].reset_index(drop=True)
    frame.insert(0, "id", np.arange(1, len(frame) + 1))
    frame.to_file(gpkg, layer="changes", driver="GPKG")
    return len(frame)
