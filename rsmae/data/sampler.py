"""A shard-aware sampler: shuffled shard order, shuffled tiles within a buffer of shards."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from torch.utils.data import Sampler

from rsmae.data.dataset import ShardDataset

__all__ = ["MixedBatchSampler", "ShardSampler", "apportion"]


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


class MixedBatchSampler(Sampler[list[int]]):
    """Batches of a mix of store groups, each batch drawn from one group (issue 24).

    Group ``g``'s tiles are the indices ``offsets[g] + i`` of a concatenated dataset, ``i`` in the order
    of that group's :class:`ShardSampler` (whole shards, shuffled within a buffer; each rank its own
    shards). With ``shuffle`` an epoch has as many batches as the groups hold full batches; each group
    gets its ``weights`` share of them (largest remainders, so the ratio holds exactly per epoch), in
    an order drawn from ``(seed, epoch)`` (the same on every rank: a step trains one band set). A group
    that needs more batches than it holds goes through its tiles again in a new order. Without
    ``shuffle`` (validation) every tile comes once, group after group, the last batch of each group
    short.

    ``skip`` drops that many *batches* from the start of the next iteration (then it is reset to 0);
    :class:`~rsmae.data.ResumableDataLoader` sets it to resume mid-epoch, and no tile is read for the
    skipped batches. The order depends only on the seed, the epoch and the rank.

    Args:
        samplers: One sampler per group (over that group's own dataset).
        offsets: Index of each group's first tile in the concatenated dataset.
        weights: Share of the batches of each group (normalised; ``shuffle`` only).
        batch_size: Tiles per batch.
        shuffle: Mix groups and tiles; ``False`` yields every tile once in storage order.
        seed: Base seed of the group order and of the groups' tile orders.
    """

    def __init__(self, samplers: list[ShardSampler], offsets: list[int], weights: list[float], *,
                 batch_size: int, shuffle: bool = True, seed: int = 0) -> None:
        if len(samplers) != len(offsets) or len(samplers) != len(weights):
            raise ValueError(f"{len(samplers)} samplers, {len(offsets)} offsets, {len(weights)} weights: "
                             "give one of each per group")
        total = float(sum(weights))
        if not all(w >= 0 for w in weights) or total <= 0:
            raise ValueError(f"mix weights {list(weights)} must be >= 0 with a positive sum")
        self.samplers, self.offsets = list(samplers), [int(o) for o in offsets]
        self.weights = [float(w) / total for w in weights]
        self.batch_size, self.shuffle, self.seed = int(batch_size), shuffle, seed
        self.epoch = 0
        self.skip = 0
        if shuffle:
            full = max(1, sum(len(s) // self.batch_size for s in self.samplers))
            self.counts = apportion(self.weights, full)
        else:
            self.counts = [-(-len(s) // self.batch_size) for s in self.samplers]

    @property
    def sampler(self) -> MixedBatchSampler:
        """Itself: Lightning sets the epoch of ``loader.batch_sampler.sampler``."""
        return self

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch (its group order and tile orders differ from other epochs')."""
        self.epoch = epoch

    def __len__(self) -> int:
        return sum(self.counts)

    def schedule(self) -> np.ndarray:
        """The group of every batch of this epoch, in order."""
        groups = np.repeat(np.arange(len(self.counts)), self.counts)
        if not self.shuffle:
            return groups
        return np.random.default_rng([self.seed, self.epoch, len(self.counts)]).permutation(groups)

    def __iter__(self) -> Iterator[list[int]]:
        skip, self.skip = max(0, int(self.skip)), 0
        groups = self.schedule()
        done = np.bincount(groups[:skip], minlength=len(self.counts))
        streams = [self._batches(g, int(done[g])) for g in range(len(self.counts))]
        for g in groups[skip:].tolist():
            yield next(streams[g])

    def _batches(self, group: int, start: int) -> Iterator[list[int]]:
        """Batches of ``group`` from its batch ``start`` on (its tiles again in a new order when used up)."""
        sampler, size, offset = self.samplers[group], self.batch_size, self.offsets[group]
        if not self.shuffle:
            flat = np.asarray(list(iter(sampler)), dtype=np.int64) + offset
            for at in range(start * size, len(flat), size):
                yield flat[at : at + size].tolist()
            return
        per_pass = len(sampler)
        if per_pass == 0:
            raise ValueError(f"group {group} of the mix has no tile for this rank; give it weight 0")
        first = start * size
        turn, at = divmod(first, per_pass)
        buffer = np.zeros(0, dtype=np.int64)
        while True:
            sampler.set_epoch(_pass_key(self.seed, self.epoch, group, turn))
            buffer = np.concatenate([buffer, np.asarray(list(iter(sampler)), dtype=np.int64)[at:] + offset])
            turn, at = turn + 1, 0
            while len(buffer) >= size:
                yield buffer[:size].tolist()
                buffer = buffer[size:]


def apportion(weights: list[float], total: int) -> list[int]:
    """``total`` split by ``weights`` (summing to 1) into integers, by largest remainders (ties: first)."""
    raw = np.asarray(weights, dtype=np.float64) * total
    counts = np.floor(raw).astype(np.int64)
    order = np.argsort(-(raw - counts), kind="stable")
    counts[order[: total - int(counts.sum())]] += 1
    return counts.tolist()


def _pass_key(seed: int, epoch: int, group: int, turn: int) -> int:
    """The epoch given to a group's ShardSampler for its ``turn``-th pass in ``epoch``: distinct per key."""
    return int(np.random.SeedSequence([seed, epoch, group, turn]).generate_state(1, np.uint32)[0])
