"""``TileDataModule``: train/val loaders over tile stores, split by scene."""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L
import numpy as np
from torch.utils.data import DataLoader

from rsmae.data.dataset import ShardDataset, collate_tiles, describe_data
from rsmae.data.loader import ResumableDataLoader
from rsmae.data.sampler import ShardSampler

__all__ = ["TileDataModule", "split_scenes"]


def split_scenes(
    scenes: Mapping[str, np.ndarray] | Sequence[Mapping[str, Any]], val_fraction: float, seed: int
) -> tuple[list[str], list[str]]:
    """Split scene ids into train and val (no tile of a scene is in both: no spatial leakage).

    Scenes whose path names a ``val``/``test`` split go to val; otherwise a scene goes to val when
    a hash of (seed, id) falls below ``val_fraction`` — stable when scenes are added.

    Args:
        scenes: ``id`` and ``split`` columns (as :meth:`~rsmae.store.TileStore.scenes` gives), or
            one dict per scene with those keys.
        val_fraction: Fraction of scenes held out when no split is named.
        seed: Seed of the hash.
    """
    if isinstance(scenes, Mapping):
        ids = [str(i) for i in np.asarray(scenes["id"]).tolist()]
        splits = [str(s or "") for s in np.asarray(scenes["split"]).tolist()]
    else:
        ids = [str(r["id"]) for r in scenes]
        splits = [str(r.get("split") or "") for r in scenes]
    kept = [k for k, i in enumerate(ids) if i]  # the row of a skipped scene has no id and no tile
    ids, splits = [ids[k] for k in kept], [splits[k] for k in kept]
    named = [i for i, s in zip(ids, splits, strict=True) if s in ("val", "test")]
    if named:
        held = set(named)
        return [i for i in ids if i not in held], named

    def unit(scene_id: str) -> float:
        digest = hashlib.sha256(f"{seed}:{scene_id}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64

    val = [i for i in ids if unit(i) < val_fraction]
    if not val and val_fraction > 0 and len(ids) > 1:
        val = [min(ids, key=unit)]
    held = set(val)
    return [i for i in ids if i not in held], val


class TileDataModule(L.LightningDataModule):
    """Loaders over one or more finished tile stores.

    The train loader is a :class:`~rsmae.data.ResumableDataLoader`: its position in the epoch is
    saved in Lightning checkpoints, so a run resumed mid-epoch sees the batches an uninterrupted run
    would. With ``native=True`` (the default) batches carry images in the stores' dtype (``uint16``
    for Sentinel-2: half the bytes of float32 between worker processes), not normalised; normalise
    them on the device with :func:`~rsmae.data.normalize_images` and the ``mean``/``std`` of
    :attr:`data_info` (:class:`~rsmae.tasks.PretrainTask` does so in ``on_after_batch_transfer``).

    Args:
        stores: Store paths with the same bands.
        batch_size: Samples per batch (per process).
        num_workers: DataLoader workers.
        val_fraction: Fraction of scenes held out for validation.
        seed: Seed of the split and of the sampler's order.
        buffer_shards: Shards mixed together by the sampler.
        native: Batches of images in the stores' dtype, normalised later on the device; ``False``
            gives float32 images normalised in the workers.
    """

    def __init__(self, stores: list[str], batch_size: int = 64, num_workers: int = 2,
                 val_fraction: float = 0.1, seed: int = 0, buffer_shards: int = 4,
                 native: bool = True) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.stores = list(stores)
        self.train_set: ShardDataset | None = None
        self.val_set: ShardDataset | None = None

    @functools.cached_property
    def data_info(self) -> dict[str, Any]:
        """Bands, sensor, statistics, GSD and tile size of the stores (read before ``setup``)."""
        dataset = self.train_set if self.train_set is not None else ShardDataset(self.stores)
        return describe_data(dataset)

    def setup(self, stage: str | None = None) -> None:
        """Open the stores and split their scenes."""
        full = ShardDataset(self.stores)
        columns = {key: np.concatenate([t[key] for t in full.scene_tables]) for key in ("id", "split")}
        train, val = split_scenes(columns, self.hparams.val_fraction, self.hparams.seed)
        native = self.hparams.native
        self.full = full
        self.train_set = ShardDataset(self.stores, scenes=train, native=native)
        self.val_set = ShardDataset(self.stores, scenes=val, native=native) if val else None

    def _loader(self, dataset: ShardDataset, train: bool) -> DataLoader:
        trainer = self.trainer
        replicas = trainer.world_size if trainer is not None else 1
        rank = trainer.global_rank if trainer is not None else 0
        sampler = ShardSampler(dataset, shuffle=train, buffer_shards=self.hparams.buffer_shards,
                               seed=self.hparams.seed, num_replicas=replicas, rank=rank)
        workers = self.hparams.num_workers
        loader = ResumableDataLoader if train else DataLoader
        return loader(dataset, batch_size=self.hparams.batch_size, sampler=sampler,
                      num_workers=workers, persistent_workers=workers > 0, collate_fn=collate_tiles,
                      drop_last=train, pin_memory=False)

    def train_dataloader(self) -> ResumableDataLoader:
        """Shuffled shard-aware loader that resumes mid-epoch."""
        return self._loader(self.train_set, train=True)

    def val_dataloader(self) -> DataLoader | list:
        """Loader over the held-out scenes (empty when there are none)."""
        return self._loader(self.val_set, train=False) if self.val_set is not None else []
