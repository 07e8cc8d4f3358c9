"""The tile store: the one place that knows the Zarr v3 layout a tiling run writes.

- :mod:`rsmae.store.layout`: the arrays, their codecs and chunking (the layout, documented there);
- :mod:`rsmae.store.tile_store`: :class:`TileStore`, through which every read and write goes;
- :mod:`rsmae.store.scene_table` / :mod:`rsmae.store.skipped`: the per-scene tables;
- :mod:`rsmae.store.shards`: :class:`~rsmae.store.shards.TileReader`, batched tile reads straight
  from the shard files for data loading (checked against the layout before use).
"""

from rsmae.store.layout import CODECS, FORMAT_VERSION, hist_bins
from rsmae.store.tile_store import TileStore, remove_store

__all__ = ["CODECS", "FORMAT_VERSION", "TileStore", "hist_bins", "remove_store"]
