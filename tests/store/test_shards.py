"""``TileReader``: batched shard reads equal zarr's, the layout check, missing chunks."""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr

import rsmae.store.shards
from rsmae.errors import StoreError
from rsmae.store import TileStore
from rsmae.store.shards import TileReader, layout_mismatch
from rsmae.tiling import TileConfig, tile_scenes
from tests.conftest import LANDSAT


@pytest.fixture(scope="module")
def landsat_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real Landsat 8 crop, 64 px tiles, 16 per shard (its zero collar leaves empty slots)."""
    out = tmp_path_factory.mktemp("shards") / "landsat.zarr"
    tile_scenes([str(LANDSAT)], out, TileConfig(tile_size=64, sensor="landsat-oli",
                                                bands=("B2", "B3", "B4"), band_order="B2,B3,B4",
                                                shard_tiles=16))
    return out


def _count_preads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    sizes: list[int] = []
    original = os.pread

    def pread(fd: int, n: int, offset: int) -> bytes:
        sizes.append(n)
        return original(fd, n, offset)

    monkeypatch.setattr(rsmae.store.shards.os, "pread", pread)
    return sizes


def test_fast_path_equals_zarr(landsat_store: Path) -> None:
    store = TileStore.open(landsat_store)
    reader = TileReader(landsat_store / "images")
    assert reader.fast and reader.shard_tiles == 16 and reader.dtype == np.uint16
    slots = np.random.default_rng(0).permutation(store.index())[:200]
    slots = np.concatenate([slots, slots[:5]])  # repeats too
    np.testing.assert_array_equal(reader.read(slots), store.read_tiles(slots))
    every = np.arange(store.array("images").shape[0])
    out = reader.empty(len(every))
    assert reader.read(every, out=out) is out
    np.testing.assert_array_equal(out, store.read_tiles(every))
    assert reader.read([]).shape == (0, 3, 64, 64)
    with pytest.raises(IndexError):
        reader.read([len(every)])


def test_a_shard_run_is_one_pread(landsat_store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = TileStore.open(landsat_store)
    slots = store.index()
    shards, counts = np.unique(slots // 16, return_counts=True)
    full = slots[slots // 16 == shards[counts == 16][0]]  # a shard away from the zero collar
    assert len(full) == 16
    reader = TileReader(landsat_store / "images")
    sizes = _count_preads(monkeypatch)
    reader.read(full[::-1])
    assert len(sizes) == 2  # the shard index, then every chunk in one read
    sizes.clear()
    apart = TileReader(landsat_store / "images", max_gap=0)
    apart._index = reader._index  # index cached: only chunk reads are counted
    np.testing.assert_array_equal(apart.read(full[::2]), store.read_tiles(full[::2]))
    assert len(sizes) == 8  # chunks 0, 2, 4, ... are not contiguous: one read each


def test_missing_chunks_and_shards_read_as_zeros(landsat_store: Path, tmp_path: Path) -> None:
    store = TileStore.open(landsat_store)
    empty = np.setdiff1d(np.arange(store.array("images").shape[0]), store.index())
    assert len(empty) > 0  # the collar's dropped windows: never written
    reader = TileReader(landsat_store / "images")
    assert not reader.read(empty).any()
    copied = tmp_path / "copy.zarr"
    shutil.copytree(landsat_store, copied)
    gone, kept = np.unique(store.index() // 16)[[-1, -2]]  # two shards that hold tiles
    (copied / "images" / "c" / str(gone) / "0" / "0" / "0").unlink()
    slots = np.concatenate([np.arange(gone * 16, gone * 16 + 16), store.index()[store.index() // 16 == kept]])
    got = TileReader(copied / "images").read(slots)
    np.testing.assert_array_equal(got, TileStore.open(copied).read_tiles(slots))
    assert not got[:16].any() and got[16:].any()


def test_damaged_shard_index_is_an_error(landsat_store: Path, tmp_path: Path) -> None:
    copied = tmp_path / "copy.zarr"
    shutil.copytree(landsat_store, copied)
    first = int(TileStore.open(copied).index()[0])
    shard = copied / "images" / "c" / str(first // 16) / "0" / "0" / "0"
    raw = bytearray(shard.read_bytes())
    raw[-10] ^= 0xFF
    shard.write_bytes(bytes(raw))
    with pytest.raises(StoreError, match="shard index is damaged"):
        TileReader(copied / "images").read([first])


def test_other_layout_falls_back_to_zarr(landsat_store: Path, tmp_path: Path,
                                         caplog: pytest.LogCaptureFixture) -> None:
    store = TileStore.open(landsat_store)
    tiles = store.array("images")[:]
    copied = tmp_path / "other.zarr"
    zarr.create_array(copied, data=tiles, chunks=(1, 3, 64, 64), shards=(16, 3, 64, 64),
                      compressors=zarr.codecs.ZstdCodec(level=1), zarr_format=3)
    with caplog.at_level(logging.INFO, logger="rsmae.store.shards"):
        reader = TileReader(copied)
    assert not reader.fast and "inner codecs" in reader.reason
    assert sum("reading tiles through zarr" in r.message for r in caplog.records) == 1
    slots = np.random.default_rng(1).permutation(len(tiles))[:50]
    np.testing.assert_array_equal(reader.read(slots), tiles[slots])


def _mutate(meta: dict, path: tuple, value: object) -> dict:
    meta = copy.deepcopy(meta)
    node = meta
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return meta


@pytest.mark.parametrize(("path", "value", "reason"), [
    (("codecs", 0, "configuration", "index_location"), "start", "index is not at the end"),
    (("codecs", 0, "configuration", "index_codecs", 1), {"name": "crc32"}, "index codecs"),
    (("codecs", 0, "configuration", "index_codecs", 0, "configuration", "endian"), "big",
     "index codecs"),
    (("codecs", 0, "configuration", "codecs", 0, "configuration", "endian"), "big", "inner codecs"),
    (("codecs", 0, "configuration", "codecs", 1, "name"), "zstd", "inner codecs"),
    (("codecs", 0, "configuration", "chunk_shape", 0), 2, "inner chunk shape"),
    (("chunk_key_encoding", "configuration", "separator"), ".", "chunk key encoding"),
    (("chunk_key_encoding", "name"), "v2", "chunk key encoding"),
    (("chunk_grid", "configuration", "chunk_shape", 2), 32, "shard shape"),
    (("storage_transformers",), [{"name": "x"}], "storage transformers"),
])
def test_layout_check_names_the_difference(landsat_store: Path, path: tuple, value: object,
                                           reason: str, tmp_path: Path) -> None:
    meta = json.loads((landsat_store / "images" / "zarr.json").read_text())
    assert layout_mismatch(meta) is None
    changed = _mutate(meta, path, value)
    assert reason in layout_mismatch(changed)
    if path[-1] == "index_location":  # a copy whose zarr.json says so is read through zarr
        copied = tmp_path / "images"
        shutil.copytree(landsat_store / "images", copied)
        (copied / "zarr.json").write_text(json.dumps(changed))
        assert not TileReader(copied).fast


def test_missing_chunks_take_a_nan_fill_value(tmp_path: Path) -> None:
    """Edge case (synthetic): a float array whose fill value Zarr writes as the string "NaN"."""
    images = zarr.create_array(tmp_path / "images", shape=(8, 2, 4, 4), chunks=(1, 2, 4, 4),
                               shards=(4, 2, 4, 4), dtype="float32", fill_value=float("nan"),
                               compressors=zarr.codecs.BloscCodec(cname="lz4", shuffle="bitshuffle"),
                               zarr_format=3)
    images[0] = 1.5
    reader = TileReader(tmp_path / "images")
    assert reader.fast
    got = reader.read([0, 1, 6])  # written, missing chunk, missing shard
    assert (got[0] == 1.5).all() and np.isnan(got[1:]).all()
