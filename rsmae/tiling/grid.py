"""Scene grids: check a scene's band files agree, choose one target grid, read aligned windows.

Every band is read onto the scene's target grid: bands already on it are read directly with a
window; the others (20 m / 60 m Sentinel-2 bands, other resolutions) through a ``WarpedVRT`` with
bilinear resampling, so reads stay windowed and never load a whole scene. The warp is told the
nodata value (the file's, else the run's ``--nodata``), so fill pixels at swath edges are left
out of the bilinear kernel instead of being blended into valid neighbours. Radiometric offsets
a product declares (Sentinel-2 baseline >= 04.00) are applied on read
(:func:`rsmae.tiling.products.apply_offset`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.errors import NotGeoreferencedWarning, RasterioIOError
from rasterio.transform import Affine, array_bounds
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window

from rsmae.bands import Sensor
from rsmae.errors import BandError, GridError, RasterReadError
from rsmae.tiling.band_order import check_described_order
from rsmae.tiling.products import apply_offset
from rsmae.tiling.scenes import Scene

__all__ = ["SUPPORTED_DTYPES", "Grid", "SceneReader", "check_footprints", "gdal_env", "scene_grid"]

SUPPORTED_DTYPES = ("uint8", "uint16", "int16", "float32")


@contextmanager
def gdal_env() -> Iterator[None]:
    """GDAL settings for tiling: open files without listing their folder, quietly.

    In folders of many scenes every open listed thousands of names; sidecar files (.hdr, .ovr)
    are still found. Rasterio's warning for files without georeferencing (plain PNGs, some
    dataset exports) is silenced: such scenes keep pixel coordinates, and the tiler says so once.
    """
    with warnings.catch_warnings(), rasterio.Env(GDAL_DISABLE_READDIR_ON_OPEN="TRUE"):
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        yield


@dataclass(frozen=True)
class Grid:
    """A pixel grid: CRS (WKT), affine transform (6 coefficients), size."""

    crs: str
    transform: tuple[float, float, float, float, float, float]
    width: int
    height: int

    @property
    def affine(self) -> Affine:
        """The transform as an ``Affine``."""
        return Affine(*self.transform)

    def to_dict(self) -> dict:
        """JSON-ready form."""
        return {"crs": self.crs, "transform": list(self.transform), "width": self.width,
                "height": self.height}


@dataclass(frozen=True)
class _Header:
    path: str
    crs: CRS | None
    transform: Affine
    width: int
    height: int
    count: int
    dtype: str
    nodata: float | None
    descriptions: tuple[str | None, ...] = ()


def _header(path: str) -> _Header:
    try:
        with rasterio.open(path) as src:
            return _Header(path, src.crs, src.transform, src.width, src.height, src.count,
                           src.dtypes[0], src.nodata, tuple(src.descriptions))
    except RasterioIOError as err:
        raise RasterReadError(f"{path}: not a readable raster ({err})") from err


def scene_grid(scene: Scene, sensor: Sensor, resolution: float | None) -> tuple[Grid, str, float | None]:
    """Check a scene's files and choose its target grid.

    Args:
        scene: The scene.
        sensor: Its sensor (native GSD of the bands, to translate metres in a geographic CRS).
        resolution: Target pixel size in metres; ``None`` uses the finest band's grid.

    Returns:
        The grid, the pixel dtype and the nodata value declared by the files (or ``None``).

    Raises:
        RasterReadError: unreadable file or unsupported dtype.
        BandError: a file has fewer bands than the layout needs.
        GridError: files disagree on CRS or extent.
    """
    headers = {path: _header(path) for path in scene.files}
    for src in scene.sources:
        h = headers[src.path]
        if src.index > h.count:
            raise BandError(
                f"{src.path}: has {h.count} band(s) but band {src.band} is expected at position "
                f"{src.index}; pass the file's real --band-order or select fewer --bands"
            )
    for path in {src.path for src in scene.sources if headers[src.path].count > 1}:
        check_described_order(path, headers[path].descriptions, sensor,
                              {s.index: s.band for s in scene.sources if s.path == path})
    dtypes = {h.dtype for h in headers.values()}
    if len(dtypes) > 1:
        raise RasterReadError(f"{scene.scene_id}: band files mix dtypes {sorted(dtypes)}")
    dtype = dtypes.pop()
    if dtype not in SUPPORTED_DTYPES:
        raise RasterReadError(
            f"{scene.files[0]}: unsupported dtype {dtype}; supported: {', '.join(SUPPORTED_DTYPES)}"
        )
    ref_src = min(scene.sources, key=lambda s: abs(headers[s.path].transform.a))
    ref = headers[ref_src.path]
    _check_alignment(ref, list(headers.values()))
    grid = _target_grid(ref, sensor, ref_src.band, resolution)
    return grid, dtype, ref.nodata


def check_footprints(reference: str, paths: list[str]) -> None:
    """Raise unless every raster in ``paths`` has the CRS and footprint of ``reference``.

    The check the tiler makes between the band files of one scene (extents equal to within one
    pixel of the coarser file), open to callers that put other files on ``reference``'s grid, e.g.
    the second date of a change-detection pair.

    Raises:
        RasterReadError: a file is not a readable raster.
        GridError: naming both files, when the CRS or the extent differs.
    """
    _check_alignment(_header(reference), [_header(p) for p in paths])


def _bounds(h: _Header) -> tuple[float, float, float, float]:
    west, south, east, north = array_bounds(h.height, h.width, h.transform)
    return min(west, east), min(south, north), max(west, east), max(south, north)


def _check_alignment(ref: _Header, headers: list[_Header]) -> None:
    for h in headers:
        if (h.crs is None) != (ref.crs is None) or (h.crs is not None and h.crs != ref.crs):
            raise GridError(
                f"{h.path}: CRS {h.crs} differs from {ref.path} ({ref.crs}); reproject the band "
                "files of one scene to one CRS"
            )
        tol = max(abs(h.transform.a), abs(ref.transform.a), abs(h.transform.e)) * 1.01
        if any(abs(a - b) > tol for a, b in zip(_bounds(h), _bounds(ref), strict=True)):
            raise GridError(
                f"{h.path}: extent {_bounds(h)} differs from {ref.path} {_bounds(ref)} by more "
                "than one pixel; the band files do not cover one footprint"
            )


def _target_grid(ref: _Header, sensor: Sensor, band: str, resolution: float | None) -> Grid:
    crs = ref.crs.to_wkt() if ref.crs is not None else ""
    if resolution is None:
        return Grid(crs, tuple(ref.transform)[:6], ref.width, ref.height)
    if resolution <= 0:
        raise GridError(f"--resolution must be positive, got {resolution}")
    if ref.crs is not None and ref.crs.is_projected:
        factor = resolution / abs(ref.transform.a) / (ref.crs.linear_units_factor[1] or 1.0)
    else:  # geographic or unknown CRS: relative to the reference band's native GSD
        gsd = sensor.band(band).gsd_m
        if gsd is None:
            raise GridError(f"{ref.path}: no CRS in metres and no native GSD for band {band}")
        factor = resolution / gsd
    t = ref.transform
    width = math.floor(ref.width / factor + 1e-9)
    height = math.floor(ref.height / factor + 1e-9)
    transform = Affine(t.a * factor, t.b, t.c, t.d, t.e * factor, t.f)
    return Grid(crs, tuple(transform)[:6], width, height)


class SceneReader:
    """Reads windows of a scene's bands on its target grid. Use as a context manager.

    Args:
        scene: The scene.
        grid: Its target grid (:func:`scene_grid`).
        dtype: Pixel dtype of the output.
        nodata: Nodata value for files that declare none (the run's ``--nodata``): passed to the
            warp of resampled bands so fill pixels never blend into valid ones, and kept out of
            the radiometric offset. ``None`` (or NaN for integer pixels): only declared nodata
            values are used (and 0, the Sentinel-2 fill value, for bands with an offset).
    """

    def __init__(self, scene: Scene, grid: Grid, dtype: str, *, nodata: float | None = None) -> None:
        self.scene = scene
        self.grid = grid
        self.dtype = dtype
        # NaN means "none" for integer pixels (the scene table stores a missing nodata as NaN)
        no_value = nodata is None or (math.isnan(nodata) and np.dtype(dtype).kind != "f")
        self.nodata = None if no_value else nodata
        self._stack = ExitStack()
        self._readers: list[tuple[str, tuple[object, list[int], list[int], float | None]]] = []

    def __enter__(self) -> SceneReader:
        groups: dict[str, tuple[object, list[int], list[int], float | None]] = {}
        for pos, src in enumerate(self.scene.sources):
            if src.path not in groups:
                ds, fill = self._open(src.path)
                groups[src.path] = (ds, [], [], fill)
            groups[src.path][1].append(src.index)
            groups[src.path][2].append(pos)
        self._readers = list(groups.items())
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def _open(self, path: str) -> tuple[object, float | None]:
        """The dataset (warped onto the grid when needed) and its nodata value."""
        try:
            ds = self._stack.enter_context(rasterio.open(path))
        except RasterioIOError as err:
            raise RasterReadError(f"{path}: not a readable raster ({err})") from err
        fill = ds.nodata if ds.nodata is not None else self.nodata
        g = self.grid
        same = (ds.width, ds.height) == (g.width, g.height) and np.allclose(
            tuple(ds.transform)[:6], g.transform, rtol=0, atol=abs(g.transform[0]) * 1e-3)
        if same:
            return ds, fill
        return self._stack.enter_context(WarpedVRT(
            ds, crs=ds.crs, transform=g.affine, width=g.width, height=g.height,
            resampling=Resampling.bilinear, src_nodata=fill, nodata=fill)), fill

    def read(self, row: int, col: int, height: int, width: int) -> np.ndarray:
        """Read ``(C, height, width)`` at pixel offset (row, col) of the target grid.

        Bands stored in one file are read in one call (one decode of pixel-interleaved blocks);
        the scene's radiometric offsets, if any, are applied.
        """
        out = np.empty((len(self.scene.sources), height, width), dtype=self.dtype)
        window = Window(col, row, width, height)
        offsets = self.scene.offset
        for path, (ds, indexes, positions, fill) in self._readers:
            try:
                block = ds.read(indexes, window=window)  # type: ignore[attr-defined]
            except RasterioIOError as err:
                raise RasterReadError(f"{path}: read failed, the file is damaged ({err})") from err
            if any(offsets[p] for p in positions):
                apply_offset(block, [offsets[p] for p in positions], 0 if fill is None else fill)
            out[positions] = block
        return out
