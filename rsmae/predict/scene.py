"""Scenes for prediction, read through the tiler's discovery and grid code.

A scene is found by :func:`rsmae.tiling.scenes.discover_scenes` (multi-band files, band folders,
``.SAFE``, Landsat folders) with the model's bands picked by name, put on its finest band's grid by
:func:`rsmae.tiling.grid.scene_grid`, and read window by window by a
:class:`~rsmae.tiling.grid.SceneReader`. A second date is read onto the first date's grid
(:class:`OnGridReader`: warped, reprojected when the CRS differs); its pixels outside its own
footprint are nodata.

Reads return float32 with NaN for nodata: a pixel is nodata when any band is NaN or equals the
nodata value (the file's, else ``--nodata``, 0 by default: the Sentinel-2 fill value).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.errors import RasterioIOError
from rasterio.vrt import WarpedVRT
from rasterio.warp import transform_bounds

from rsmae.bands import Sensor
from rsmae.errors import RasterReadError
from rsmae.predict.errors import PredictError
from rsmae.tiling.grid import Grid, SceneReader, gdal_env, scene_grid
from rsmae.tiling.scenes import Scene, discover_scenes

__all__ = ["OnGridReader", "PredictScene", "check_overlap", "find_scenes", "open_scene", "read_float"]


@dataclass(frozen=True)
class PredictScene:
    """A scene ready to read: its sources, target grid, pixel dtype and nodata value.

    Attributes:
        scene: The discovered scene (band sources in the model's band order).
        grid: Target grid (the finest band's, or date 1's for a second date).
        dtype: Pixel dtype of the files.
        nodata: Value marking nodata (the files', else the caller's); ``None``: only NaN.
    """

    scene: Scene
    grid: Grid
    dtype: str
    nodata: float | None

    @property
    def name(self) -> str:
        """A file-system-safe name: the scene id with ``/`` as ``__``."""
        return self.scene.scene_id.replace("/", "__").replace(" ", "_")


def find_scenes(inputs: Sequence[str], sensor: Sensor, bands: Sequence[str], *,
                band_order: str | None = None) -> list[Scene]:
    """Scenes of files, folders or globs holding ``bands`` (the tiler's discovery).

    Raises:
        InputNotFoundError: a path is missing or holds no raster.
        BandError: naming the scene, when it lacks one of ``bands``.
    """
    with gdal_env():
        return discover_scenes(inputs, sensor, bands, band_order=band_order)


def open_scene(scene: Scene, sensor: Sensor, nodata: float | None = 0.0) -> PredictScene:
    """Check a scene's files and put it on its finest band's grid.

    Raises:
        RasterReadError: naming the file, when it is not a readable raster.
        GridError: when its band files disagree on CRS or extent.
    """
    with gdal_env():
        grid, dtype, declared = scene_grid(scene, sensor, None)
    value = declared if declared is not None else nodata
    if value is not None and math.isnan(value):
        value = None
    return PredictScene(scene, grid, dtype, value)


def check_overlap(first: PredictScene, second: PredictScene) -> None:
    """Raise unless ``second`` (its own grid) overlaps ``first``'s grid.

    Raises:
        PredictError: naming ``second``'s first file and both extents.
    """
    a, b = first.grid, second.grid
    west, north = b.affine * (0, 0)
    east, south = b.affine * (b.width, b.height)
    bounds = (min(west, east), min(south, north), max(west, east), max(south, north))
    if a.crs and b.crs and CRS.from_wkt(a.crs) != CRS.from_wkt(b.crs):
        bounds = transform_bounds(CRS.from_wkt(b.crs), CRS.from_wkt(a.crs), *bounds)
    w2, n2 = a.affine * (0, 0)
    e2, s2 = a.affine * (a.width, a.height)
    ref = (min(w2, e2), min(s2, n2), max(w2, e2), max(s2, n2))
    if bounds[0] >= ref[2] or bounds[2] <= ref[0] or bounds[1] >= ref[3] or bounds[3] <= ref[1]:
        raise PredictError(
            f"{second.scene.files[0]}: extent {tuple(round(v, 6) for v in bounds)} does not overlap date 1 "
            f"({first.scene.files[0]}, {tuple(round(v, 6) for v in ref)}); pass two dates of one place")


class OnGridReader(SceneReader):
    """A :class:`SceneReader` onto another scene's grid, reprojecting when the CRS differs.

    Files in the grid's CRS are read as the tiler reads them (directly when already on the grid);
    others are warped. Pixels outside the scene's footprint read as the nodata value (0 when none is
    set), so they become nodata.
    """

    def _open(self, path: str) -> tuple[object, float | None]:
        g = self.grid
        try:
            with rasterio.open(path) as ds:
                crs = ds.crs
        except RasterioIOError as err:
            raise RasterReadError(f"{path}: not a readable raster ({err})") from err
        target = CRS.from_wkt(g.crs) if g.crs else crs
        if crs == target:  # the tiler's reader: direct reads on the grid, else a warp in the same CRS
            return super()._open(path)
        ds = self._stack.enter_context(rasterio.open(path))
        fill = ds.nodata if ds.nodata is not None else self.nodata
        vrt = WarpedVRT(ds, crs=target, transform=g.affine, width=g.width, height=g.height,
                        resampling=Resampling.bilinear, src_nodata=fill,
                        nodata=0 if fill is None else fill)
        return self._stack.enter_context(vrt), fill


def read_float(reader: SceneReader, nodata: float | None, row: int, col: int, height: int,
               width: int) -> np.ndarray:
    """``(C, height, width)`` float32 at (row, col) of the reader's grid, NaN where nodata.

    The part of the window outside the grid is NaN too (a scene smaller than a window).
    """
    g = reader.grid
    out = np.full((len(reader.scene.sources), height, width), np.nan, dtype=np.float32)
    r1, c1 = min(row + height, g.height), min(col + width, g.width)
    if r1 <= row or c1 <= col:
        return out
    with gdal_env():
        block = reader.read(row, col, r1 - row, c1 - col)
    values = block.astype(np.float32)
    if nodata is not None:
        bad = (block == np.asarray(nodata).astype(block.dtype)).any(axis=0)
        values[:, bad] = np.nan
    values[:, np.isnan(values).any(axis=0)] = np.nan
    out[:, :r1 - row, :c1 - col] = values
    return out
