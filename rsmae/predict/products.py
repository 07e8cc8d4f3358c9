"""Derived outputs: the PCA preview of an embedding raster, the change preview and change polygons.

All read the finished rasters (and date 1) block by block: the previews keep 3 values per cell of an
image of at most ``max_side`` px, polygons come from GDAL's polygonize over the raster band, so none
holds a whole-scene array at full resolution.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import rasterio
from rasterio.features import shapes
from rasterio.windows import Window

if TYPE_CHECKING:
    from PIL.Image import Image

__all__ = ["CHANGE_RGB", "NODATA_RGB", "CovarianceSum", "change_polygons", "change_preview", "pca_preview",
           "true_colour"]

CHANGE_RGB = (255, 0, 200)  # predicted change: a magenta fill and outline (rare in true colour)
NODATA_RGB = (96, 96, 96)  # nodata cells in the change preview
_FILL_ALPHA = 0.45
Read = Callable[[int, int, int, int], np.ndarray]


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
                block_bytes: int = 32 << 20) -> None:
    """Write the first three principal components of ``raster`` as an RGB PNG (nodata black).

    Args:
        raster: The embedding GeoTIFF.
        png: Output PNG.
        pca: Sums accumulated over the raster's cells.
        max_side: Longest side of the PNG (cells are subsampled beyond it).
        block_bytes: Bytes of features read at once (whole rows, at least ``step`` of them): a raster
            of many channels and a wide scene stays within it rather than a fixed number of rows.
    """
    from PIL import Image

    mean, axes = pca.components(3)
    with rasterio.open(raster) as ds:
        step = _step(ds.height, ds.width, max_side)
        rows = max(1, block_bytes // max(1, ds.width * ds.count * 4))
        parts = []
        for r, n in _blocks(ds.height, step, rows):
            block = ds.read(window=Window(0, r, ds.width, n), out_dtype="float32")[:, ::step, ::step]
            parts.append(np.einsum("kc,chw->khw", axes, block - mean[:, None, None]))
    rgb = np.concatenate(parts, axis=1) if parts else np.zeros((3, 1, 1))
    Image.fromarray(_stretch(rgb)[0]).save(png)


def _stretch(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(3, h, w)`` float (NaN = nodata) stretched per band from its 2nd to 98th percentile.

    Returns:
        ``(h, w, 3)`` uint8 (nodata black) and the ``(h, w)`` nodata mask.
    """
    ok = ~np.isnan(rgb).any(axis=0)
    out = np.zeros(rgb.shape[1:] + (3,), np.uint8)
    if ok.any():
        lo, hi = np.percentile(rgb[:, ok], [2, 98], axis=1)
        scaled = (rgb - lo[:, None, None]) / np.maximum(hi - lo, 1e-12)[:, None, None]
        out[ok] = (np.clip(scaled, 0, 1)[:, ok].T * 255).astype(np.uint8)
    return out, ~ok


def _blocks(height: int, step: int, rows: int) -> Iterator[tuple[int, int]]:
    """(first row, rows) of blocks starting at multiples of ``step`` (``[::step]`` samples one grid)."""
    rows = max(step, rows // step * step)
    for r in range(0, height, rows):
        yield r, min(rows, height - r)


def _step(height: int, width: int, max_side: int) -> int:
    return max(1, -(-max(height, width) // max_side))


def true_colour(read: Read, height: int, width: int, *, max_side: int = 1024,
                rows: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """A percentile-stretched true-colour image of a scene, every ``step``-th pixel.

    Args:
        read: ``(row, col, h, w) -> (3, h, w)`` float32 red, green, blue (NaN = nodata).
        height: Scene height in pixels.
        width: Scene width in pixels.
        max_side: Longest side of the image (``step`` = the smallest integer that fits it).
        rows: Rows read per block.

    Returns:
        ``(h, w, 3)`` uint8 (nodata black) and the ``(h, w)`` nodata mask.
    """
    step = _step(height, width, max_side)
    # copies: a strided view would keep each full-resolution block alive until the concatenation
    parts = [read(r, 0, n, width)[:, ::step, ::step].copy() for r, n in _blocks(height, step, rows)]
    return _stretch(np.concatenate(parts, axis=1) if parts else np.full((3, 1, 1), np.nan))


def _change_cells(mask: Path, step: int, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Cells of ``step`` x ``step`` px of a change mask: any pixel changed; the sampled pixel nodata."""
    changed, nodata = [], []
    with rasterio.open(mask) as ds:
        for r, n in _blocks(ds.height, step, rows):
            block = ds.read(1, window=Window(0, r, ds.width, n))
            nodata.append(block[::step, ::step] == 255)
            h, w = -(-n // step), -(-ds.width // step)
            padded = np.zeros((h * step, w * step), bool)
            padded[:n, :ds.width] = block == 1
            changed.append(padded.reshape(h, step, w, step).any(axis=(1, 3)))
    return np.concatenate(changed), np.concatenate(nodata)


def _overlay(rgb: np.ndarray, changed: np.ndarray, nodata: np.ndarray) -> np.ndarray:
    """``rgb`` with nodata in grey and change filled semi-transparent, outlined in full colour."""
    out = rgb.astype(np.float32)
    out[nodata] = NODATA_RGB
    colour = np.asarray(CHANGE_RGB, np.float32)
    out[changed] = (1 - _FILL_ALPHA) * out[changed] + _FILL_ALPHA * colour
    inner = np.pad(changed, 1, constant_values=False)
    inner = inner[:-2, 1:-1] & inner[2:, 1:-1] & inner[1:-1, :-2] & inner[1:-1, 2:]
    out[changed & ~inner] = colour
    return out.round().astype(np.uint8)


def change_preview(read: Read, mask: Path, png: Path, *, title: str, threshold: float,
                   max_side: int = 1024, rows: int = 256) -> tuple[int, int]:
    """Write date 1 in true colour with the predicted change drawn over it, a title and a key.

    The map (every ``step``-th pixel of date 1, a cell drawn as change when any of its pixels is) sits at
    the PNG's top left, at most ``max_side`` px on its longest side; the caption is a strip below it.

    Args:
        read: Date 1's ``(row, col, h, w) -> (3, h, w)`` float32 red, green, blue on the mask's grid.
        mask: The finished ``change_mask.tif`` (1 = change, 0 = none, 255 = nodata).
        png: Output PNG.
        title: The scene pair (the threshold is appended).
        threshold: The mask's probability threshold.
        max_side: Longest side of the map.
        rows: Rows read per block.

    Returns:
        The map's ``(rows, columns)`` in the PNG.
    """
    with rasterio.open(mask) as ds:
        height, width = ds.height, ds.width
    step = _step(height, width, max_side)
    rgb, blank = true_colour(read, height, width, max_side=max_side, rows=rows)
    changed, nodata = _change_cells(mask, step, rows)
    image = _overlay(rgb, changed, nodata | blank)
    legend = [(CHANGE_RGB, f"predicted change (p >= {threshold:.2f})"), (NODATA_RGB, "nodata")]
    _captioned(image, f"{title}, threshold {threshold:.2f}", legend).save(png, optimize=True)
    return image.shape[0], image.shape[1]


def _captioned(image: np.ndarray, title: str, legend: list[tuple[tuple[int, int, int], str]]) -> Image:
    """``image`` above a white strip holding ``title`` and the ``legend`` swatches, wrapped to its width."""
    from PIL import Image, ImageDraw, ImageFont  # noqa: F811 (the module here, the class above)

    try:
        font = ImageFont.load_default(size=13)
    except TypeError:  # Pillow < 10.1: the bitmap font
        font = ImageFont.load_default()
    width, line, pad = max(image.shape[1], 1), 18, 4
    items = [(None, word) for word in title.split()] + [(None, "\n")] + legend
    placed, x, y = [], pad, pad
    for colour, text in items:
        size = font.getlength(text) + (line if colour else 0)
        if text == "\n" or (x > pad and x + size > width - pad):
            x, y = pad, y + line
        if text != "\n":
            placed.append((x, y, colour, text))
            x += size + (2 * line // 3 if colour else font.getlength(" "))
    canvas = Image.new("RGB", (width, image.shape[0] + y + line + pad), "white")
    canvas.paste(Image.fromarray(image), (0, 0))
    draw = ImageDraw.Draw(canvas)
    top = image.shape[0]
    for x, y, colour, text in placed:
        if colour:
            draw.rectangle((x, top + y + 3, x + line - 6, top + y + line - 3), fill=colour, outline="black")
            x += line
        draw.text((x, top + y + 1), text, fill="black", font=font)
    return canvas


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
