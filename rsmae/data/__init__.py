"""Data loading over tile stores."""

from rsmae.data.datamodule import TileDataModule, split_scenes
from rsmae.data.dataset import ShardDataset, collate_tiles, describe_data, merge_stats, normalize_images
from rsmae.data.loader import ResumableDataLoader
from rsmae.data.mixed import MixedDataset, collate_mixed, group_stores, mix_weights
from rsmae.data.sampler import MixedBatchSampler, ShardSampler

__all__ = [
    "MixedBatchSampler",
    "MixedDataset",
    "ResumableDataLoader",
    "ShardDataset",
    "ShardSampler",
    "TileDataModule",
    "collate_mixed",
    "collate_tiles",
    "describe_data",
    "group_stores",
    "merge_stats",
    "mix_weights",
    "normalize_images",
    "split_scenes",
]
