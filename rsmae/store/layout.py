"""The Zarr v3 layout of a tile store (format version 2): its arrays, codecs and creation.

Layout::

    STORE.zarr/                      group; attributes hold config, bands, stats, state: a
                                     constant size, nothing per scene
      images   (slots, C, T, T)      native dtype; one chunk = one tile; one shard = ``shard_tiles``
                                     tiles; Blosc (lz4 or zstd) with bit-shuffle in shards
      scene    (slots,) int32        scene index of each slot, -1 where no tile was kept
      row, col (slots,) int32        window offset of the tile in its scene's grid (pixels)
      valid    (slots,) float32      fraction of valid (not nodata / NaN) pixels
      transform (slots, 6) float64   affine transform of each tile (GDAL order a, b, c, d, e, f
                                     as in ``affine.Affine``); the CRS is the scene's
      index    (tiles,) int64        slots holding a tile, in order (appended when finalising)
      index_scene, index_row, index_col (tiles,) int32
                                     ``scene``, ``row``, ``col`` of those slots: a dataset reads
                                     its tile table from a few large chunks, not one per unit
      unit_done (units,) uint8       1 when a unit of work (one shard) has been fully written
      unit_count (units, 2) int64    tiles kept and dropped by each unit
      unit_hist (units, C, bins)     per-band value histograms of valid pixels (exact statistics)
      unit_moments (units, C, 3)     per-band count, sum, sum of squares (float64)
      unit_skip (units,) string      JSON ``{scene index: reason}`` of the scenes a unit left out
                                     (their files failed to read), "" when none
      batches  (runs, 4) int64       scenes ``first:last`` and units ``start:stop`` each run added
      stats_hist (2, C, bins) int64  running totals of ``unit_hist`` over the finished units, in
      stats_moments (2, C, 3)        two buffers: the committed one and the one a run writes
      scenes/                        the scene table, one row per scene (``scene_table.py``)
      skipped_<g>/                   scenes the store does not hold because they failed; the
                                     generation named by the attribute ``skipped_table``
                                     (``skipped.py``)

Work is cut into *units* of ``shard_tiles`` consecutive windows; unit ``u`` owns shard ``u`` and
chunk ``u`` of every per-slot array, so parallel writers never touch the same file and the output
does not depend on how many workers ran. A store is usable only once ``complete`` is true; that
attribute is written last. The root attribute ``committed`` holds the counts of the last finished
state (scenes, batches, units, tiles, statistics buffer), so an append never rewrites what is
per scene and a failed append can be undone.

The first format-2 stores lack ``unit_skip`` and ``skipped``: they read as empty and are
created on the next append. Stores of format 1 (scene records as JSON in the root attributes)
still open for reading; tiling more scenes into one needs a new store (``--overwrite``).
"""


from __future__ import annotations

import os
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.codecs import BloscCodec

from rsmae.files import remove_tree
from rsmae.store.scene_table import SceneTable
from rsmae.store.skipped import create_unit_skip

__all__ = ["CODECS", "FORMAT_VERSION", "INDEX_ARRAYS", "READABLE", "SLOT_ARRAYS", "create_aside",
           "create_layout", "hist_bins"]

FORMAT_VERSION = 2
READABLE = (1, 2)  # format 1: scene records in the root attributes (read-only here)
INDEX_ARRAYS = {"index": "int64", "index_scene": "int32", "index_row": "int32", "index_col": "int32"}
SLOT_ARRAYS = {"scene": ("int32", -1), "row": ("int32", 0), "col": ("int32", 0), "valid": ("float32", 0.0)}
# Tile codecs. lz4 decodes about 2x faster than zstd (data loading) and encodes about 4x faster
# (tiling) for 10 % larger files; zstd for archives.
CODECS = {
    "lz4": {"cname": "lz4", "clevel": 5, "shuffle": "bitshuffle"},
    "zstd": {"cname": "zstd", "clevel": 3, "shuffle": "bitshuffle"},
}


def hist_bins(dtype: str) -> int:
    """Number of histogram bins used for the statistics of ``dtype`` data."""
    return 256 if np.dtype(dtype).itemsize == 1 else 65536


def create_layout(group: zarr.Group, *, bands: Sequence[dict[str, Any]], dtype: str, tile: int,
                  shard_tiles: int, codec: str) -> None:
    """Create every array of the layout, empty (no slots, units, runs or scenes), in ``group``.

    Args:
        group: A new, empty Zarr v3 group.
        bands: Band metadata dicts in store order (their number is ``C``).
        dtype: Pixel dtype (kept from the source).
        tile: Tile size ``T`` in pixels.
        shard_tiles: Tiles per shard (and per unit of work).
        codec: Tile compression, a key of :data:`CODECS`.
    """
    n_bands = len(bands)
    tile_codec = BloscCodec(**CODECS[codec])
    stats_codec = BloscCodec(**CODECS["lz4"])
    group.create_array("images", shape=(0, n_bands, tile, tile), dtype=dtype, chunks=(1, n_bands, tile, tile),
                       shards=(shard_tiles, n_bands, tile, tile), compressors=tile_codec, fill_value=0,
                       dimension_names=("tile", "band", "y", "x"))
    for name, (dt, fill) in SLOT_ARRAYS.items():
        group.create_array(name, shape=(0,), chunks=(shard_tiles,), dtype=dt, fill_value=fill)
    group.create_array("transform", shape=(0, 6), chunks=(shard_tiles, 6), dtype="float64", fill_value=0.0)
    for name, dt in INDEX_ARRAYS.items():
        group.create_array(name, shape=(0,), chunks=(65536,), dtype=dt, fill_value=0)
    group.create_array("unit_done", shape=(0,), chunks=(1,), dtype="uint8", fill_value=0)
    create_unit_skip(group)
    group.create_array("unit_count", shape=(0, 2), chunks=(1, 2), dtype="int64", fill_value=0)
    bins = hist_bins(dtype)
    group.create_array("unit_hist", shape=(0, n_bands, bins), chunks=(1, n_bands, bins), dtype="int64",
                       fill_value=0, compressors=stats_codec)
    group.create_array("unit_moments", shape=(0, n_bands, 3), chunks=(1, n_bands, 3), dtype="float64",
                       fill_value=0.0)
    group.create_array("batches", shape=(0, 4), chunks=(4096, 4), dtype="int64", fill_value=0)
    group.create_array("stats_hist", shape=(2, n_bands, bins), chunks=(1, n_bands, bins), dtype="int64",
                       fill_value=0, compressors=stats_codec)
    group.create_array("stats_moments", shape=(2, n_bands, 3), chunks=(1, n_bands, 3), dtype="float64",
                       fill_value=0.0)
    SceneTable.create(group)


def create_aside(path: Path, *, bands: Sequence[dict[str, Any]], dtype: str, tile: int, shard_tiles: int,
                 codec: str, attrs: dict[str, Any]) -> None:
    """Create the layout and its root attributes beside ``path``, then rename it into place.

    A kill never leaves a store without its attributes under the real name; the rename goes onto
    nothing or an empty folder only.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.creating")
    try:
        group = zarr.open_group(tmp, mode="w-", zarr_format=3)
        create_layout(group, bands=bands, dtype=dtype, tile=tile, shard_tiles=shard_tiles, codec=codec)
        group.update_attributes(attrs)  # one write (attrs.update writes once per key)
        os.rename(tmp, path)
    finally:
        remove_tree(tmp)
