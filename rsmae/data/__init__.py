"""Data loading over tile stores."""

from rsmae.data.datamodule import TileDataModule, split_scenes
from rsmae.data.dataset import ShardDataset, collate_tiles, merge_stats, normalize_images
from rsmae.data.sampler import ShardSampler

__all__ = [
    "ShardDataset",
    "ShardSampler",
    "TileDataModule",
    "collate_tiles",
    "merge_stats",
    "normalize_images",
    "split_scenes",
]
