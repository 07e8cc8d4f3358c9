"""Stores of different band sets in one pretraining run (issue 24): store groups, each batch from one group.

What ``TileDataModule(stores={...}, mix={...})`` builds when its stores hold more than one band set::

    stores   {name: [paths]}           one group per band set; a plain list is grouped by sensor, bands, dtype
    mix      {name: weight}            share of the training batches (default: proportional to tile counts)
    parts    ShardDataset per group     split by scene within the group, normalised with the group's stats
    MixedDataset                        the parts end to end: tile i of group g is index offsets[g] + i
    MixedBatchSampler                   each batch's indices from one group, groups in the ratio of the mix
    collate_mixed                       the batch's tensors + its group: "group", "sensor", "bands"
                                        (sensor-qualified, "landsat-oli:B4"), "mean", "std" (lists of floats)

The batch's ``gsd`` tensor already holds each tile's GSD. ``data_info`` describes the first group (the
bands an exported backbone records) and lists every group under ``"groups"``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from rsmae.bands import SENSORS
from rsmae.data.batch import TileBatch
from rsmae.data.dataset import ShardDataset, describe_data
from rsmae.errors import BandError
from rsmae.store import TileStore

__all__ = ["BATCH_KEYS", "GroupBatch", "MixedDataset", "collate_mixed", "describe_mix", "flat_stores",
           "group_batch_info", "group_stores", "mix_weights", "qualified_bands"]

BATCH_KEYS = ("group", "sensor", "bands", "mean", "std")  # what a mixed batch says of its group


def flat_stores(stores: Sequence[str | Path] | Mapping[str, Sequence[str | Path]]) -> list[str]:
    """Every store path of ``stores`` (a list, or groups ``{name: [paths]}``), in order."""
    if isinstance(stores, Mapping):
        return [str(p) for paths in stores.values() for p in _as_list(paths)]
    return [str(p) for p in _as_list(stores)]


def group_stores(stores: Sequence[str | Path] | Mapping[str, Sequence[str | Path]]) -> dict[str, list[str]]:
    """Groups of stores with one band set each: ``{name: [paths]}``.

    A mapping is taken as it is (its groups named by the user). A list is grouped by (sensor, bands,
    dtype) in the order of first appearance; a group is named after its sensor (``"s2-l1c"``), with
    ``-2``, ``-3``... when two groups share a sensor.

    Raises:
        ValueError: for no store, or an empty group.
    """
    if isinstance(stores, Mapping):
        groups = {str(name): [str(p) for p in _as_list(paths)] for name, paths in stores.items()}
        empty = [name for name, paths in groups.items() if not paths]
        if not groups or empty:
            raise ValueError(f"data.stores groups {sorted(groups)}: group(s) {empty or 'all'} have no store; "
                             "give each group a list of store paths")
        return groups
    paths = [str(p) for p in _as_list(stores)]
    if not paths:
        raise ValueError("data.stores is empty: give one store path or more")
    keys: dict[tuple, list[str]] = {}
    for path in paths:
        attrs = TileStore.open(path).attrs
        key = (attrs["sensor"], tuple(b["name"] for b in attrs["bands"]), attrs["dtype"])
        keys.setdefault(key, []).append(path)
    groups: dict[str, list[str]] = {}
    for (sensor, _, _), members in keys.items():
        name, k = str(sensor), 1
        while name in groups:
            k += 1
            name = f"{sensor}-{k}"
        groups[name] = members
    return groups


def mix_weights(mix: Mapping[str, float] | None, tiles: Mapping[str, int]) -> dict[str, float]:
    """The share of the training batches of each group (summing to 1).

    Args:
        mix: ``{group: weight}`` (any positive scale), or ``None``: proportional to ``tiles``.
        tiles: Tiles per group.

    Raises:
        ValueError: naming the groups when ``mix`` names others, misses one, or has no positive weight.
    """
    if mix is None:
        mix = dict(tiles)
    names = list(tiles)
    unknown, missing = sorted(set(mix) - set(names)), [n for n in names if n not in mix]
    if unknown or missing:
        raise ValueError(f"data.mix names {sorted(mix)} but the store groups are {names} (unknown: "
                         f"{unknown}, missing: {missing}); give one weight per group, or leave data.mix "
                         "out for weights proportional to the groups' tile counts")
    values = [float(mix[n]) for n in names]
    if not all(math.isfinite(v) and v >= 0 for v in values) or sum(values) <= 0:
        raise ValueError(f"data.mix {dict(mix)}: weights must be finite, >= 0 and not all 0")
    return {n: v / sum(values) for n, v in zip(names, values, strict=True)}


def qualified_bands(bands: Sequence[str], sensor: str | None) -> list[str]:
    """``"sensor:band"`` names (``"landsat-oli:B4"``): a plain ``"B02"`` is another band in another sensor."""
    if sensor is None or sensor.lower() not in SENSORS:
        return list(bands)
    return [b if ":" in b else f"{sensor}:{b}" for b in bands]


def describe_mix(parts: Mapping[str, ShardDataset], weights: Mapping[str, float]) -> dict[str, Any]:
    """``data_info`` of a mix: the first group's :func:`~rsmae.data.describe_data`, all in ``"groups"``.

    Each group: ``name``, ``stores``, ``bands``, ``sensor``, ``mean``, ``std``, ``gsd``, ``tile_size``,
    ``tiles`` and ``weight``.

    Raises:
        BandError: naming the stores and their tile sizes when the groups' tiles differ in size (one model
            input size).
    """
    infos = {name: describe_data(dataset) for name, dataset in parts.items()}
    groups = [{"name": name, "stores": list(dataset.paths), **infos[name], "tiles": len(dataset),
               "weight": float(weights[name])} for name, dataset in parts.items()]
    sizes = {g["name"]: g["tile_size"] for g in groups}
    if len(set(sizes.values())) > 1:
        where = "; ".join(f"{g['name']} ({', '.join(g['stores'])}): {g['tile_size']} px" for g in groups)
        raise BandError(f"the store groups have tiles of different sizes ({where}); a model takes one input "
                        "size: tile every store at one tile_size")
    return {**copy.deepcopy(next(iter(infos.values()))), "groups": groups}  # no list shared with a group


class GroupBatch(TileBatch):
    """A :class:`~rsmae.data.batch.TileBatch` of one group, with its group's ``info`` (:data:`BATCH_KEYS`)."""

    def __init__(self, tensors: dict[str, torch.Tensor], info: dict[str, Any]) -> None:
        super().__init__(tensors)
        self.info = info


class MixedDataset(Dataset):
    """The tiles of several groups' datasets end to end; a batch of indices must come from one group.

    Args:
        parts: One dataset per group.
        infos: One dict per group, what its batches carry: ``group`` (name), ``sensor``, ``bands``,
            ``mean``, ``std``.
    """

    def __init__(self, parts: Sequence[ShardDataset], infos: Sequence[dict[str, Any]]) -> None:
        if len(parts) != len(infos) or not parts:
            raise ValueError(f"{len(parts)} datasets, {len(infos)} group infos: give one of each per group")
        self.parts, self.infos = list(parts), [dict(i) for i in infos]
        self.offsets = np.concatenate([[0], np.cumsum([len(p) for p in self.parts])]).astype(np.int64)

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def group_of(self, indices: Sequence[int]) -> tuple[int, np.ndarray]:
        """The group of ``indices`` and their indices in its dataset.

        Raises:
            ValueError: when the indices span groups (a batch is of one band set).
        """
        index = np.asarray(indices, dtype=np.int64).reshape(-1)
        groups = np.searchsorted(self.offsets, index, side="right") - 1
        if len(index) and (groups.min() != groups.max() or groups[0] >= len(self.parts) or index.min() < 0):
            raise ValueError(f"indices {index.tolist()[:8]}... span groups or leave 0..{len(self) - 1}; draw "
                             "batches of a MixedDataset with a MixedBatchSampler (one group per batch)")
        group = int(groups[0]) if len(index) else 0
        return group, index - self.offsets[group]

    def __getitems__(self, indices: Sequence[int]) -> GroupBatch:
        """Read a batch of one group; its ``index`` tensor holds the mixed dataset's indices."""
        group, local = self.group_of(indices)
        batch = self.parts[group].__getitems__(local.tolist())
        batch.tensors["index"].add_(int(self.offsets[group]))
        return GroupBatch(batch.tensors, self.infos[group])

    def __getitem__(self, i: int) -> dict[str, Any]:
        batch = self.__getitems__([i])
        return {**batch[0], **batch.info}


def group_batch_info(info: Mapping[str, Any]) -> dict[str, Any]:
    """What a batch of a group carries (:data:`BATCH_KEYS`), from the group's ``data_info`` entry."""
    bands = qualified_bands(info["bands"], info["sensor"])
    return {"group": info["name"], "sensor": info["sensor"], "bands": bands, "mean": list(info["mean"]),
            "std": list(info["std"])}


def collate_mixed(samples: GroupBatch | Sequence[dict[str, Any]]) -> dict[str, Any]:
    """A :class:`GroupBatch` as a batch dict: its tensors and its group (the keys of :data:`BATCH_KEYS`)."""
    if not isinstance(samples, GroupBatch):
        raise TypeError("collate_mixed takes a GroupBatch (MixedDataset.__getitems__), got "
                        f"{type(samples).__name__}")
    return {**samples.tensors, **samples.info}


def _as_list(value: Any) -> list[Any]:  # noqa: ANN401
    return [value] if isinstance(value, (str, Path)) else list(value)
