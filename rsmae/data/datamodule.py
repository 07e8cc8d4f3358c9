"""``TileDataModule``: train/val loaders over tile stores split by scene; several band sets mixed."""

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
from rsmae.data.mixed import (
    MixedDataset,
    collate_mixed,
    describe_mix,
    flat_stores,
    group_batch_info,
    group_stores,
    mix_weights,
)
from rsmae.data.sampler import MixedBatchSampler, ShardSampler

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
    """Loaders over one or more finished tile stores, of one band set or several (a mix).

    The train loader is a :class:`~rsmae.data.ResumableDataLoader`: its position in the epoch is
    saved in Lightning checkpoints, so a run resumed mid-epoch sees the batches an uninterrupted run
    would. With ``native=True`` (the default) batches carry images in the stores' dtype (``uint16``
    for Sentinel-2: half the bytes of float32 between worker processes), not normalised; normalise
    them on the device with :func:`~rsmae.data.normalize_images` and the ``mean``/``std`` of
    :attr:`data_info` (:class:`~rsmae.tasks.PretrainTask` does so in ``on_after_batch_transfer``).

    Stores of different band sets (Sentinel-2 and Landsat, ...) form groups (:mod:`rsmae.data.mixed`):
    each training batch comes from one group, the groups in the ratio of ``mix``, and carries its
    group's name, sensor, band names and statistics (``batch["group"]``, ``"sensor"``, ``"bands"``,
    ``"mean"``, ``"std"``); ``data_info["groups"]`` lists them. Pretrain on a mix with
    ``PretrainTask(patch_embed="spectral")``: one encoder for every band set.

    Args:
        stores: Store paths (grouped by sensor, bands and dtype), or named groups of stores with the same
            bands: ``{"s2": [a.zarr, b.zarr], "landsat": [c.zarr]}``.
        batch_size: Samples per batch (per process).
        num_workers: DataLoader workers.
        val_fraction: Fraction of scenes held out for validation (within each group).
        seed: Seed of the split and of the sampler's order.
        buffer_shards: Shards mixed together by the sampler.
        native: Batches of images in the stores' dtype, normalised later on the device; ``False``
            gives float32 images normalised in the workers (with their group's statistics).
        mix: Share of the training batches per group, ``{name: weight}`` (any positive scale); default:
            proportional to the groups' tile counts. Only with more than one group.
    """

    def __init__(self, stores: list[str] | dict[str, list[str]], batch_size: int = 64, num_workers: int = 2,
                 val_fraction: float = 0.1, seed: int = 0, buffer_shards: int = 4, native: bool = True,
                 mix: dict[str, float] | None = None) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.stores = flat_stores(stores)
        self.train_set: ShardDataset | None = None
        self.val_set: ShardDataset | None = None
        self.mixed_train: MixedDataset | None = None
        self.mixed_val: MixedDataset | None = None
        self._full: dict[str, ShardDataset] = {}

    @functools.cached_property
    def groups(self) -> dict[str, list[str]]:
        """Store paths per group of one band set (:func:`~rsmae.data.mixed.group_stores`)."""
        return group_stores(self.hparams.stores)

    @property
    def mixed(self) -> bool:
        """The stores hold more than one group: batches come from one group each."""
        return len(self.groups) > 1

    @functools.cached_property
    def data_info(self) -> dict[str, Any]:
        """Bands, sensor, statistics, GSD and tile size of the stores (read before ``setup``).

        Of a mix: those of the first group, and every group's under ``"groups"`` with its ``weight``.
        """
        if self.mixed:
            parts = self._full or {name: ShardDataset(paths) for name, paths in self.groups.items()}
            weights = mix_weights(self.hparams.mix, {name: len(d) for name, d in parts.items()})
            return describe_mix(parts, weights)
        if self.hparams.mix is not None and set(self.hparams.mix) - set(self.groups):
            mix_weights(self.hparams.mix, dict.fromkeys(self.groups, 1))  # raises, naming the groups
        dataset = self.train_set if self.train_set is not None else ShardDataset(self.stores)
        return describe_data(dataset)

    def _split(self, paths: list[str]) -> tuple[ShardDataset, ShardDataset, ShardDataset | None]:
        """The full, train and val datasets of stores of one band set."""
        full = ShardDataset(paths)
        columns = {key: np.concatenate([t[key] for t in full.scene_tables]) for key in ("id", "split")}
        train, val = split_scenes(columns, self.hparams.val_fraction, self.hparams.seed)
        native = self.hparams.native
        return (full, ShardDataset(paths, scenes=train, native=native),
                ShardDataset(paths, scenes=val, native=native) if val else None)

    def setup(self, stage: str | None = None) -> None:
        """Open the stores and split their scenes (each group's on its own)."""
        if not self.mixed:
            self.full, self.train_set, self.val_set = self._split(self.stores)
            return
        splits = {name: self._split(paths) for name, paths in self.groups.items()}
        self._full = {name: s[0] for name, s in splits.items()}
        infos = {g["name"]: group_batch_info(g) for g in self.data_info["groups"]}
        self.mixed_train = MixedDataset([s[1] for s in splits.values()], list(infos.values()))
        vals = [(s[2], infos[name]) for name, s in splits.items() if s[2] is not None]
        self.mixed_val = MixedDataset(*map(list, zip(*vals, strict=True))) if vals else None
        first = next(iter(splits.values()))  # the group data_info describes: what callbacks render
        self.full, self.train_set, self.val_set = first

    def _sampler(self, dataset: ShardDataset, train: bool) -> ShardSampler:
        trainer = self.trainer
        replicas = trainer.world_size if trainer is not None else 1
        rank = trainer.global_rank if trainer is not None else 0
        return ShardSampler(dataset, shuffle=train, buffer_shards=self.hparams.buffer_shards,
                            seed=self.hparams.seed, num_replicas=replicas, rank=rank)

    def _loader(self, dataset: ShardDataset, train: bool) -> DataLoader:
        workers = self.hparams.num_workers
        loader = ResumableDataLoader if train else DataLoader
        return loader(dataset, batch_size=self.hparams.batch_size, sampler=self._sampler(dataset, train),
                      num_workers=workers, persistent_workers=workers > 0, collate_fn=collate_tiles,
                      drop_last=train, pin_memory=False)

    def _mixed_loader(self, dataset: MixedDataset, train: bool) -> DataLoader:
        weights = {g["name"]: g["weight"] for g in self.data_info["groups"]}
        samplers = [self._sampler(d, train) for d in dataset.parts]
        sampler = MixedBatchSampler(samplers, dataset.offsets[:-1].tolist(),
                                    [weights[i["group"]] for i in dataset.infos],
                                    batch_size=self.hparams.batch_size, shuffle=train, seed=self.hparams.seed)
        workers = self.hparams.num_workers
        loader = ResumableDataLoader if train else DataLoader
        return loader(dataset, batch_sampler=sampler, num_workers=workers, persistent_workers=workers > 0,
                      collate_fn=collate_mixed, pin_memory=False)

    def train_dataloader(self) -> ResumableDataLoader:
        """Shuffled shard-aware loader that resumes mid-epoch (of a mix: one group per batch)."""
        if self.mixed:
            return self._mixed_loader(self.mixed_train, train=True)
        return self._loader(self.train_set, train=True)

    def val_dataloader(self) -> DataLoader | list:
        """Loader over the held-out scenes (empty when there are none; of a mix: group after group)."""
        if self.mixed:
            return self._mixed_loader(self.mixed_val, train=False) if self.mixed_val is not None else []
        return self._loader(self.val_set, train=False) if self.val_set is not None else []
