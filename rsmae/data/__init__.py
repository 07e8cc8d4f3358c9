"""Data loading over tile stores."""

from rsmae.data.datamodule import TileDataModule, split_scenes
from rsmae.data.dataset import ShardDataset, collate_tiles, describe_data, merge_stats, normalize_images
from rsmae.data.loader import ResumableDataLoader
from rsmae.data.sampler import ShardSampler

__all__ = [
    "ResumableDataLoader",
    "ShardDataset",
    "ShardSampler",
    "TileDataModule",
    "collate_tiles",
    "describe_data",
    "merge_stats",
    "normalize_images",
    "split_scenes",
]
