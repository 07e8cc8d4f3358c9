"""Datasets with fixed splits, one class per file (bands and splits as class attributes)."""

from rsmae.datasets.bigearthnet import load_bigearthnet
from rsmae.datasets.bitemporal import IGNORE_INDEX, BitemporalScenes, PairCrops, PairScene
from rsmae.datasets.eurosat import EuroSAT
from rsmae.datasets.landsat_cd import LandsatCD
from rsmae.datasets.leakage import check_no_eval_images, find_eval_images
from rsmae.datasets.levircd import LEVIRCD
from rsmae.datasets.matching import match_dataset_bands
from rsmae.datasets.oscd import OSCD

__all__ = [
    "IGNORE_INDEX",
    "LEVIRCD",
    "OSCD",
    "BitemporalScenes",
    "EuroSAT",
    "LandsatCD",
    "PairCrops",
    "PairScene",
    "check_no_eval_images",
    "find_eval_images",
    "load_bigearthnet",
    "match_dataset_bands",
]
