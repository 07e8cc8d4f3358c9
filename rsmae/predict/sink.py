"""Raster outputs written as the scan goes, closed into Cloud-Optimized GeoTIFFs; the output folder.

Layout of one scene's outputs (``OUT/<scene>/``, made under a temporary name beside it and renamed
when every file is complete, so a folder under its real name is always finished)::

    OUT/<scene>/
        embedding.tif     embed: float32, one band per feature, cell = patch (or window with --pool)
        preview.png       embed: the first 3 principal components of the features, stretched
        change_prob.tif   change: float32 change probability, NaN = nodata
        change_mask.tif   change: uint8, 1 = change at the model's threshold, 0 = none, 255 = nodata
        changes.gpkg      change: polygons of changed areas (layer "changes", area_m2)
        preview.png       change: date 1 in true colour (red/green/blue bands by name, stretched) with the
                          mask's change filled and outlined, nodata grey, a caption with the pair,
                          threshold and key; at most 1024 px a side (a cell is change if any pixel is)
        class_index.tif   classify: uint8 class index (uint16 beyond 255 classes), 255 (65535) = nodata;
                          the class names in its tag CLASSES (JSON) and in info.json
        class_prob.tif    classify: float32, one band per class (description = class name), NaN = nodata
        info.json         inputs, model, window, engine, seconds

Each raster is first written block by block to a tiled GeoTIFF (``<name>.part.tif``), then copied
by GDAL's COG driver (overviews built, deflate) and the part file removed.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import rasterio
import rasterio.shutil
from rasterio.transform import Affine

from rsmae.files import atomic_path
from rsmae.tiling.grid import Grid

__all__ = ["RasterSink", "clean_stale", "gdal_cache", "scene_output"]

_STALE = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)-[0-9a-f]{8}\.tmp$")

# GDAL's block cache defaults to 5 % of RAM (1.2 GB on 24 GB) and keeps blocks read and written until it
# is full: bounded during a run so its memory does not grow with the scene or depend on the machine
RUN_CACHE_MB = 64
# The part file is striped, PART_ROWS rows per strip and band: a write of a few rows touches a few strips
# of each band, where 256-px tiles made it touch a whole row of tiles (192 bands x 5 tiles x 256 KB =
# 250 MB for a 20k px embedding), more than the cache, so blocks were evicted and read back per write
PART_ROWS = 16
COPY_CACHE_MB = 32  # the COG copy: its overview chunks grow with the cache (+80 MB at 8192² px with 128)


@contextmanager
def gdal_cache(megabytes: int) -> Iterator[None]:
    """GDAL's block cache bounded to ``megabytes`` MB inside the block.

    rasterio passes an integer ``GDAL_CACHEMAX`` to ``GDALSetCacheMax64`` as bytes (GDAL's own
    environment variable reads small numbers as MB): ``GDAL_CACHEMAX=64`` is a 64-byte cache, which
    turns every block read into a decompression (polygonizing a 2048² mask took 8.5 s instead of 0.1 s).
    """
    with rasterio.Env(GDAL_CACHEMAX=megabytes << 20):
        yield


class RasterSink:
    """A raster written row block by row block, finished as a COG.

    Args:
        path: Final ``.tif`` path.
        grid: The output grid (CRS, transform, size).
        count: Bands.
        dtype: Pixel dtype.
        nodata: Nodata value (NaN for float outputs).
        descriptions: Band names.
        resampling: Overview resampling (``"average"`` for continuous values, ``"nearest"`` for classes).
        tags: Dataset metadata items (GDAL tags).
    """

    def __init__(self, path: Path, grid: Grid, *, count: int, dtype: str, nodata: float,
                 descriptions: Sequence[str] = (), resampling: str = "average",
                 tags: Mapping[str, str] | None = None) -> None:
        self.path, self.grid, self.count, self.dtype = Path(path), grid, count, dtype
        self.nodata, self.descriptions, self.resampling = nodata, list(descriptions), resampling
        self.tags = dict(tags or {})
        self.part = self.path.with_name(self.path.name + ".part.tif")
        self._ds: rasterio.io.DatasetWriter | None = None

    def __enter__(self) -> RasterSink:
        g = self.grid
        profile = {"driver": "GTiff", "width": g.width, "height": g.height, "count": self.count,
                   "dtype": self.dtype, "nodata": self.nodata, "transform": g.affine,
                   "crs": g.crs or None, "tiled": False, "blockysize": PART_ROWS, "BIGTIFF": "IF_SAFER",
                   "INTERLEAVE": "BAND"}
        self._ds = rasterio.open(self.part, "w", **profile)
        for i, text in enumerate(self.descriptions[:self.count], start=1):
            self._ds.set_band_description(i, text)
        if self.tags:
            self._ds.update_tags(**self.tags)
        return self

    def write(self, row: int, data: np.ndarray) -> None:
        """Write ``(count, n, width)`` at row ``row``."""
        n = data.shape[1]
        self._ds.write(data.astype(self.dtype, copy=False),
                       window=rasterio.windows.Window(0, row, data.shape[2], n))

    def __exit__(self, exc_type: object, *exc: object) -> None:
        self._ds.close()
        if exc_type is None:
            with gdal_cache(COPY_CACHE_MB):
                rasterio.shutil.copy(self.part, self.path, driver="COG", COMPRESS="DEFLATE", BLOCKSIZE=256,
                                     PREDICTOR="YES", OVERVIEW_RESAMPLING=self.resampling.upper(),
                                     RESAMPLING=self.resampling.upper(), BIGTIFF="IF_SAFER")
        self.part.unlink(missing_ok=True)


def cell_grid(grid: Grid, scale: int, rows: int, cols: int) -> Grid:
    """The grid of ``scale`` x ``scale`` px cells with ``grid``'s origin and CRS."""
    a = grid.affine * Affine.scale(scale)
    return Grid(grid.crs, tuple(a)[:6], cols, rows)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale(out: Path, name: str) -> None:
    """Remove temporary folders of ``name`` left by killed runs (their process is gone)."""
    if not out.is_dir():
        return
    for entry in out.iterdir():
        m = _STALE.match(entry.name)
        if m and m["name"] == name and not _alive(int(m["pid"])):
            shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)


@contextmanager
def scene_output(out: Path, name: str) -> Iterator[Path]:
    """A temporary folder for one scene's outputs, renamed to ``out/name`` when the block succeeds."""
    clean_stale(out, name)
    with atomic_path(out / name) as tmp:
        tmp.mkdir()
        yield tmp
