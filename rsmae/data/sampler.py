"""A shard-aware sampler: shuffled shard order, shuffled tiles within a buffer of shards."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from torch.utils.data import Sampler

from rsmae.data.dataset import ShardDataset

__all__ = ["ShardSampler"]


class ShardSampler(Sampler[int]):
    """Yield tile indices so that each stretch of the epoch reads a few whole shards.

    Shards are shuffled; the tiles of ``buffer_shards`` consecutive shards are shuffled together.
    With ``num_replicas`` > 1 every rank takes a disjoint set of shards and all ranks yield the
    same number of indices (the list is padded by repeating from its start). The order depends
    only on ``seed``, the epoch and the rank, so a resumed run sees the same data order.

    ``skip`` drops that many indices from the start of the next iteration only (then it is reset to
    0); :class:`~rsmae.data.ResumableDataLoader` sets it to resume mid-epoch without reading the
    skipped tiles. ``len()`` stays the full count.

    Args:
        dataset: The dataset (its indices are grouped by the shard they live in).
        shuffle: Shuffle shards and tiles; ``False`` yields indices in storage order.
        buffer_shards: Shards whose tiles are mixed together.
        seed: Base seed.
        num_replicas: Number of distributed ranks.
        rank: This rank.
    """

    def __init__(self, dataset: ShardDataset, *, shuffle: bool = True, buffer_shards: int = 4,
                 seed: int = 0, num_replicas: int = 1, rank: int = 0) -> None:
        self.shuffle = shuffle
        self.buffer_shards = max(1, buffer_shards)
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.epoch = 0
        self.skip = 0
        self.shards = _shard_groups(dataset)
        self.total = -(-len(dataset) // num_replicas)  # per rank

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch (its order differs from other epochs')."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.total

    def __iter__(self) -> Iterator[int]:
        skip, self.skip = max(0, int(self.skip)), 0
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(len(self.shards)) if self.shuffle else np.arange(len(self.shards))
        mine = order[self.rank :: self.num_replicas] if self.num_replicas > 1 else order
        out: list[np.ndarray] = []
        for start in range(0, len(mine), self.buffer_shards):
            chunk = np.concatenate([self.shards[s] for s in mine[start : start + self.buffer_shards]])
            out.append(rng.permutation(chunk) if self.shuffle else chunk)
        flat = np.concatenate(out) if out else np.zeros(0, dtype=np.int64)
        if len(flat) < self.total:  # pad so that every rank yields the same count
            flat = np.resize(np.concatenate([flat, np.concatenate(self.shards)]), self.total)
        return iter(flat[skip : self.total].tolist())


def _shard_groups(dataset: ShardDataset) -> list[np.ndarray]:
    """Indices of ``dataset`` grouped by (store, shard), groups and indices in ascending order."""
    table = np.asarray(dataset.table)
    if not len(table):
        return []
    store = table[:, 0]
    shard = table[:, 1] // np.asarray(dataset.shard_tiles, dtype=np.int64)[store]
    order = np.lexsort((np.arange(len(table)), shard, store))
    key_s, key_h = store[order], shard[order]
    cuts = np.flatnonzero((np.diff(key_s) != 0) | (np.diff(key_h) != 0)) + 1
    return np.split(order, cuts)
