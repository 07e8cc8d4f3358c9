"""``ShardDataset``: random access to the tiles of one or more finished tile stores."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from rsmae.bands import check_bands
from rsmae.data.batch import TileBatch, batch_tensors
from rsmae.errors import BandError
from rsmae.store import TileStore
from rsmae.store.shards import TileReader

__all__ = ["ShardDataset", "collate_tiles", "describe_data", "merge_stats", "normalize_images"]


def normalize_images(
    images: torch.Tensor, mean: torch.Tensor | Sequence[float], std: torch.Tensor | Sequence[float]
) -> torch.Tensor:
    """``(images - mean) / std`` per band, in float32: the one normalisation of rsmae.

    Every model input is normalised here, with per-band statistics in the units of the stored pixels
    (a store's ``stats``, which ``describe_data`` passes on as ``data_info`` and backbone files keep).

    Args:
        images: ``(..., C, H, W)`` of any dtype (a batch, a pair of dates, one image).
        mean: ``C`` means (tensor or sequence).
        std: ``C`` standard deviations.

    Returns:
        A new float32 tensor on ``images``' device.
    """
    mean = torch.as_tensor(mean, dtype=torch.float32, device=images.device)[:, None, None]
    std = torch.as_tensor(std, dtype=torch.float32, device=images.device)[:, None, None]
    if mean.shape[0] != images.shape[-3] or std.shape[0] != images.shape[-3]:
        raise ValueError(f"{mean.shape[0]} means / {std.shape[0]} stds for images of "
                         f"{images.shape[-3]} bands")
    out = images.to(torch.float32, copy=True)  # one new tensor, then in place
    return out.sub_(mean).div_(std)


def collate_tiles(samples: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Stack ShardDataset samples into a batch dict of tensors.

    A :class:`~rsmae.data.batch.TileBatch` (what ``ShardDataset.__getitems__`` returns) is already
    stacked: its tensors are returned as they are. Other samples go through ``default_collate``,
    which builds the batch in shared memory inside a DataLoader worker.
    """
    if isinstance(samples, TileBatch):
        return dict(samples.tensors)
    return {
        "image": default_collate([s["image"] for s in samples]),
        "gsd": torch.stack([s["gsd"] for s in samples]),
        "label": torch.tensor([s["label"] for s in samples], dtype=torch.int64),
        "index": torch.tensor([s["index"] for s in samples], dtype=torch.int64),
    }


def merge_stats(stats: Sequence[dict[str, dict[str, float]]], bands: Sequence[str]
                ) -> tuple[np.ndarray, np.ndarray]:
    """Pool per-band mean/std of several stores (weighted by pixel count)."""
    mean = np.zeros(len(bands))
    std = np.zeros(len(bands))
    for i, band in enumerate(bands):
        counts = np.array([s[band]["count"] for s in stats], dtype=np.float64)
        means = np.array([s[band]["mean"] for s in stats])
        var = np.array([s[band]["std"] ** 2 for s in stats])
        total = counts.sum()
        mean[i] = (counts * means).sum() / total
        std[i] = np.sqrt((counts * (var + (means - mean[i]) ** 2)).sum() / total)
    return mean, np.maximum(std, 1e-6)


class ShardDataset(Dataset):
    """Tiles of finished tile stores as a map-style dataset.

    ``ds[i]`` is a dict: ``image`` float32 ``(C, H, W)`` (normalised with the stores' statistics
    unless ``normalize=False``), ``gsd`` (metres per pixel), ``label`` (class index or -1),
    ``scene`` (scene id), ``store``, ``row``, ``col`` and ``index``. Stores are opened lazily in
    each process, so the dataset is safe with DataLoader workers. ``__getitems__`` reads a batch
    in one call per store (whole shards when the sampler groups indices by shard).

    Args:
        stores: One store path or several with the same bands (read as one dataset).
        normalize: Subtract the per-band mean and divide by the std of the stores.
        native: Return images in the stores' dtype, not normalised (cheaper to move between
            processes); normalise on the device with :func:`normalize_images`.
        bands: Expected band names; a mismatch raises (never a silent reorder).
        scenes: Keep only tiles of these scene ids (e.g. a split).
    """

    def __init__(
        self,
        stores: str | Path | Sequence[str | Path],
        *,
        normalize: bool = True,
        native: bool = False,
        bands: Sequence[str] | None = None,
        scenes: Sequence[str] | None = None,
    ) -> None:
        paths = [stores] if isinstance(stores, (str, Path)) else list(stores)
        if not paths:
            raise ValueError("ShardDataset needs at least one store")
        opened = [TileStore.open(p) for p in paths]
        self.paths = [str(p) for p in paths]
        self.bands = opened[0].band_names
        for store in opened[1:]:
            check_bands(self.bands, store.band_names, str(store.path))
        if bands is not None:
            check_bands(list(bands), self.bands, self.paths[0])
        attrs = [s.attrs for s in opened]
        dtypes = sorted({a["dtype"] for a in attrs})
        if len(dtypes) > 1:
            raise BandError(f"{self.paths}: stores hold pixels of different dtypes {dtypes} (different "
                            "units); tile them into stores of one dtype to read them as one dataset")
        self.sensor: str = attrs[0]["sensor"]
        self.tile_size: int = attrs[0]["config"]["tile_size"]
        self.classes: list[str] = sorted({c for a in attrs for c in a.get("classes", [])})
        self.mean, self.std = merge_stats([a["stats"] for a in attrs], self.bands)
        self.normalize = normalize
        self.native = native
        self._shift = self.mean.astype(np.float32)[:, None, None]
        self._scale = (1.0 / self.std).astype(np.float32)[:, None, None]
        self.shard_tiles = [s.shard_tiles for s in opened]
        self.gsd = [_store_gsd(a) for a in attrs]
        self._gsd = [torch.tensor(g, dtype=torch.float32) for g in self.gsd]
        self.scene_tables = [s.scenes(["id", "label", "split"]) for s in opened]
        """Per store: ``id``, ``label``, ``split`` columns of its scene table (NumPy arrays)."""
        self._build_table(opened, set(scenes) if scenes is not None else None)
        self._images: dict[int, Any] = {}
        self._pid = -1

    def _build_table(self, opened: list[TileStore], keep: set[str] | None) -> None:
        """Rows ``(store, slot, scene, row, col, label)`` of every tile, from the scene tables."""
        parts = []
        label_of = {c: i for i, c in enumerate(self.classes)}
        for k, store in enumerate(opened):
            table = store.tile_table()
            slots, scene = table["slot"], table["scene"]
            names, inverse = np.unique(self.scene_tables[k]["label"], return_inverse=True)
            codes = np.array([label_of.get(n, -1) for n in names.tolist()], dtype=np.int64)
            labels = codes[inverse.reshape(-1)]
            part = np.stack([np.full(len(slots), k), slots, scene, table["row"], table["col"],
                             labels[scene]], axis=1).astype(np.int64)
            if keep is not None:
                ids = self.scene_tables[k]["id"].tolist()
                wanted = np.fromiter((i in keep for i in ids), dtype=bool, count=len(ids))
                part = part[wanted[scene]]
            parts.append(part)
        self.table = np.concatenate(parts) if parts else np.zeros((0, 6), np.int64)
        if keep is not None and not len(self.table):
            raise BandError(f"{self.paths}: no tile belongs to the requested scenes")

    def __len__(self) -> int:
        return len(self.table)

    def _arrays(self, k: int) -> TileReader:
        """The tile reader of store ``k``, opened once per process (DataLoader workers reopen)."""
        if self._pid != os.getpid():  # a new DataLoader worker: reopen
            self._images, self._pid = {}, os.getpid()
        if k not in self._images:
            self._images[k] = TileReader(Path(self.paths[k]) / "images")
        return self._images[k]

    def scene_id(self, i: int) -> str:
        """Scene id of tile ``i``."""
        store, _, scene = self.table[i, :3]
        return str(self.scene_tables[store]["id"][scene])

    def georef(self, i: int) -> dict[str, Any]:
        """Georeferencing of tile ``i``: scene id, window, affine transform, CRS, date."""
        store, slot = self.table[i, :2]
        return TileStore.open(self.paths[store]).georef(int(slot))

    def shard_of(self, i: int) -> tuple[int, int]:
        """(store, shard) holding tile ``i``."""
        store, slot = self.table[i, :2]
        return int(store), int(slot) // self.shard_tiles[store]

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.__getitems__([i])[0]

    def __getitems__(self, indices: Sequence[int]) -> TileBatch:
        """Read several tiles: one batched read per store, one normalisation of the whole batch.

        Returns:
            A :class:`~rsmae.data.batch.TileBatch`: the batch's tensors, already stacked, that is
            also the sequence of sample dicts (``batch[j]`` is the sample of ``indices[j]``).
        """
        index = np.asarray(indices, dtype=np.int64).reshape(-1)
        rows = self.table[index]
        stores = np.unique(rows[:, 0]).tolist()
        first = self._arrays(stores[0] if stores else 0)
        tensors = batch_tensors(len(rows), first.tile_shape,
                                first.dtype if self.native else np.dtype(np.float32))
        out = tensors["image"].numpy()
        pixels = out if self.native else first.empty(len(rows))
        if len(stores) <= 1:
            first.read(rows[:, 1], out=pixels)
        else:
            for k in stores:
                where = np.flatnonzero(rows[:, 0] == k)
                pixels[where] = self._arrays(k).read(rows[where, 1])
        if not self.native and self.normalize:
            np.subtract(pixels, self._shift, out=out)
            np.multiply(out, self._scale, out=out)
        elif not self.native:
            out[...] = pixels
        return self._sample(index, rows, tensors)

    def _sample(self, index: np.ndarray, rows: np.ndarray, tensors: dict[str, torch.Tensor]
                ) -> TileBatch:
        """Fill the ``gsd``, ``label``, ``index`` of a batch whose images are read; wrap it."""
        tensors["gsd"].numpy()[:] = np.asarray(self.gsd, dtype=np.float32)[rows[:, 0]]
        tensors["label"].numpy()[:] = rows[:, 5]
        tensors["index"].numpy()[:] = index
        return TileBatch(tensors)


def describe_data(dataset: ShardDataset) -> dict[str, Any]:
    """What a model trained on ``dataset`` must remember: bands, sensor, statistics, GSD, size.

    Returns:
        JSON-friendly ``{"bands", "sensor", "mean", "std", "gsd", "tile_size"}``; ``gsd`` is
        ``None`` when the stores differ in GSD.
    """
    gsds = sorted(set(dataset.gsd))
    return {
        "bands": list(dataset.bands),
        "sensor": dataset.sensor,
        "mean": [float(v) for v in dataset.mean],
        "std": [float(v) for v in dataset.std],
        "gsd": float(gsds[0]) if len(gsds) == 1 else None,
        "tile_size": int(dataset.tile_size),
    }


def _store_gsd(attrs: dict[str, Any]) -> float:
    """Metres per pixel of a store's tiles: the resolution, else the finest band's GSD."""
    resolution = attrs["config"].get("resolution")
    if resolution:
        return float(resolution)
    gsds = [b["gsd_m"] for b in attrs["bands"] if b.get("gsd_m")]
    return float(min(gsds)) if gsds else 1.0
