"""Bitemporal change-detection scenes on one grid, random co-located crops, a registration check.

Every change dataset (:class:`~rsmae.datasets.OSCD`, :class:`~rsmae.datasets.LEVIRCD`,
:class:`~rsmae.datasets.LandsatCD`) reads its pairs through :func:`read_pair`: the grid of date 1 is
built by the tiler's :func:`~rsmae.tiling.grid.scene_grid` (the finest band's grid) and both dates are
read onto it by the tiler's :class:`~rsmae.tiling.grid.SceneReader` (bands at other resolutions or on
a slightly different grid through a bilinear ``WarpedVRT``): one implementation of alignment, so
date 2, the label and every band line up pixel for pixel. A date whose bands or footprint differ from
date 1 is an error naming both files.

A sample is a dict::

    {"image": (2, C, H, W) float32 (raw digital numbers), "mask": (H, W) int64 (0 no change,
     1 change, ``IGNORE_INDEX`` unlabelled), "city": scene name, "path": date-1 path}

Batches stack to ``(B, 2, C, H, W)``, torchgeo's ``(B, T, C, H, W)`` convention for pairs.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import rasterio
import torch
from torch.utils.data import Dataset

from rsmae.bands import get_sensor
from rsmae.errors import BandError, GridError, InputNotFoundError
from rsmae.tiling.grid import Grid, SceneReader, check_footprints, gdal_env, scene_grid
from rsmae.tiling.scenes import Scene

__all__ = [
    "IGNORE_INDEX",
    "BitemporalScenes",
    "PairCrops",
    "PairScene",
    "band_statistics",
    "estimate_shift",
    "read_pair",
]

_logger = logging.getLogger(__name__)

IGNORE_INDEX = 255  # mask value of unlabelled pixels: left out of losses and metrics


@dataclass(frozen=True)
class PairScene:
    """One bitemporal scene in memory.

    Attributes:
        name: Scene (city) name.
        image: ``(2, C, H, W)`` pixels of both dates in the files' dtype, on the date-1 grid.
        mask: ``(H, W)`` uint8: 0 no change, 1 change, :data:`IGNORE_INDEX` unlabelled.
        paths: Date-1 and date-2 sources (folder or file).
        label_path: The label file.
    """

    name: str
    image: np.ndarray
    mask: np.ndarray
    paths: tuple[str, str]
    label_path: str

    def rows(self, start: int, stop: int | None = None) -> PairScene:
        """A view of rows ``start:stop`` (e.g. a held-out validation strip); no copy."""
        return replace(self, image=self.image[..., start:stop, :], mask=self.mask[start:stop])

    def match_dates(self) -> PairScene:
        """Relative radiometric normalisation: date 2 rescaled per band to date 1's mean and std.

        Removes a global brightness / contrast change between the dates (season, sun angle,
        atmosphere: OSCD's pisa is 20-30 % darker in date 2 in most bands), which a change model
        would otherwise call change everywhere. Statistics are over the whole scene; values are
        rounded and clipped to the image dtype's range.
        """
        x1, x2 = self.image[0].astype(np.float64), self.image[1].astype(np.float64)
        m1, s1 = x1.mean(axis=(1, 2), keepdims=True), x1.std(axis=(1, 2), keepdims=True)
        m2, s2 = x2.mean(axis=(1, 2), keepdims=True), x2.std(axis=(1, 2), keepdims=True)
        matched = rescale_bands(x2, (m2, s2), (m1, s1), self.image.dtype)
        image = np.stack([self.image[0], matched.astype(self.image.dtype)])
        return replace(self, image=image)

    def sample(self) -> dict[str, Any]:
        """The whole scene as a sample dict."""
        return {"image": torch.from_numpy(self.image.astype(np.float32)),
                "mask": torch.from_numpy(self.mask.astype(np.int64)), "city": self.name,
                "path": self.paths[0]}


def rescale_bands(x: np.ndarray, own: tuple[np.ndarray, np.ndarray], reference: tuple[np.ndarray, np.ndarray],
                  dtype: np.dtype | str) -> np.ndarray:
    """``x`` rescaled per band from its ``own`` (mean, std) to ``reference``'s, as float64.

    Integer ``dtype``: rounded and clipped to its range (NaN kept). The one rule of date matching:
    :meth:`PairScene.match_dates` in memory, ``rsmae.predict.matching`` block by block.
    """
    out = (x - own[0]) * (reference[1] / np.maximum(own[1], 1e-9)) + reference[0]
    if np.issubdtype(np.dtype(dtype), np.integer):
        info = np.iinfo(dtype)
        out = np.clip(np.rint(out), info.min, info.max)
    return out


def read_pair(scene1: Scene, scene2: Scene, sensor: str, *,
              window: tuple[int, int, int, int] | None = None) -> tuple[np.ndarray, Grid]:
    """Read both dates of a pair onto the date-1 grid with the tiler's grid code.

    Args:
        scene1: Date 1 (its finest band's grid is the reference).
        scene2: Date 2, same bands in the same order.
        sensor: Registry sensor of the bands.
        window: ``(row, col, height, width)`` of the date-1 grid to read; default the whole grid.

    Returns:
        ``(2, C, H, W)`` pixels in the files' dtype and the date-1 grid.

    Raises:
        BandError: the dates hold different bands (naming both).
        GridError: the dates differ in CRS or footprint (naming both files).
    """
    bands1, bands2 = [s.band for s in scene1.sources], [s.band for s in scene2.sources]
    if bands1 != bands2:
        raise BandError(f"{scene1.files[0]} has bands {bands1} but {scene2.files[0]} has {bands2}; "
                        "both dates must hold the same bands")
    reg = get_sensor(sensor)
    with gdal_env():
        grid, dtype, _ = scene_grid(scene1, reg, None)
        grid2, dtype2, _ = scene_grid(scene2, reg, None)  # date 2's own files agree among themselves
        ref1 = _finest(scene1, grid)
        ref2 = _finest(scene2, grid2)
        try:
            check_footprints(ref1, [ref2])
        except GridError as err:
            raise GridError(f"date 2 {ref2} is not on the footprint of date 1 {ref1}: {err}; "
                            "co-register the two dates (same CRS and extent)") from None
        if dtype2 != dtype:
            raise BandError(f"{ref1} is {dtype} but {ref2} is {dtype2}; both dates must share a dtype")
        row, col, height, width = window or (0, 0, grid.height, grid.width)
        if row < 0 or col < 0 or row + height > grid.height or col + width > grid.width:
            raise GridError(f"{ref1}: window {window} leaves the {grid.height} x {grid.width} grid")
        out = np.empty((2, len(bands1), height, width), dtype=dtype)
        for t, scene in enumerate((scene1, scene2)):
            with SceneReader(scene, grid, dtype) as reader:
                out[t] = reader.read(row, col, height, width)
    return out, grid


def _finest(scene: Scene, grid: Grid) -> str:
    """The file of ``scene`` whose pixel size is the grid's (the reference of its footprint)."""
    for path in scene.files:
        with rasterio.open(path) as src:
            if np.isclose(abs(src.transform.a), abs(grid.transform[0]), rtol=1e-6):
                return path
    return scene.files[0]


def estimate_shift(a: np.ndarray, b: np.ndarray) -> tuple[int, int]:
    """Integer translation ``(dy, dx)`` with ``b ≈ roll(a, (dy, dx))``, by phase correlation.

    A registration check for two dates of one band: a co-registered pair gives ``(0, 0)`` (to a
    pixel), a pair whose date 2 is shifted by a few pixels gives that shift.

    Args:
        a: ``(H, W)`` date-1 band.
        b: ``(H, W)`` date-2 band, same shape.
    """
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"estimate_shift needs two (H, W) arrays of one shape, got {a.shape}, {b.shape}")
    fa = np.fft.fft2(a - a.mean())
    fb = np.fft.fft2(b - b.mean())
    cross = fb * np.conj(fa)
    corr = np.fft.ifft2(cross / np.maximum(np.abs(cross), 1e-12)).real
    dy, dx = np.unravel_index(int(np.argmax(corr)), corr.shape)
    h, w = a.shape
    return int(dy - h if dy > h // 2 else dy), int(dx - w if dx > w // 2 else dx)


class BitemporalScenes(Dataset):
    """Base of the change datasets: whole scenes in memory, one sample per scene.

    Subclasses set the class attributes and implement :meth:`_verify`, :meth:`_names` and
    :meth:`_load`.

    Args:
        root: The dataset folder.
        split: One of the class's ``splits`` (``"all"``: every labelled scene in ``root``).
        cities: Scene names to load instead of a split (e.g. to score a model on another folder).
        bands: Band names to read, in this order (any alias); default all the dataset's bands.
        window: ``(row, col, height, width)`` read from every scene instead of the whole scene
            (small real crops for tests).
    """

    sensor: ClassVar[str]
    all_bands: ClassVar[tuple[str, ...]]
    splits: ClassVar[dict[str, tuple[str, ...]]]
    ignore_index: ClassVar[int] = IGNORE_INDEX

    def __init__(self, root: str | Path, split: str = "train", *, cities: Sequence[str] | None = None,
                 bands: Sequence[str] | None = None,
                 window: tuple[int, int, int, int] | None = None) -> None:
        self.root = Path(root)
        self._verify()
        self.split = split if cities is None else "cities"
        self.bands = self.select(bands)
        self.window = window
        available = self._names()
        wanted = list(cities) if cities is not None else self._split_names(split, available)
        missing = [c for c in wanted if c not in available]
        if missing:
            raise InputNotFoundError(f"{self.root}: no labelled scene {missing} (found {available}); pass "
                                     "cities among them or the root of the folder holding them")
        self.scenes = [self._load(name) for name in wanted]
        _logger.info("%s %s: %d scenes %s, bands %s", type(self).__name__, self.split, len(self.scenes),
                     wanted, list(self.bands))

    @classmethod
    def select(cls, bands: Sequence[str] | None) -> tuple[str, ...]:
        """Canonical names of ``bands`` (all the dataset's bands when ``None``), checked to exist."""
        if bands is None:
            return cls.all_bands
        names = get_sensor(cls.sensor).resolve(bands)
        missing = [b for b in names if b not in cls.all_bands]
        if missing:
            raise BandError(f"{cls.__name__} has no band(s) {missing}; its bands are {list(cls.all_bands)}")
        return names

    def _split_names(self, split: str, available: list[str]) -> list[str]:
        """Scene names of ``split`` (``"all"``: every labelled scene found)."""
        if split == "all":
            return available
        if split not in self.splits:
            raise ValueError(f"split={split!r}; {type(self).__name__} splits are "
                             f"{', '.join([*self.splits, 'all'])}, or pass cities=")
        return list(self.splits[split])

    def _verify(self) -> None:
        raise NotImplementedError

    def _names(self) -> list[str]:
        raise NotImplementedError

    def _load(self, name: str) -> PairScene:
        raise NotImplementedError

    def _check_label(self, label: np.ndarray, path: Path | str, reference: str, shape: tuple[int, int]
                     ) -> np.ndarray:
        """Crop a label to the read window after checking it has the date-1 grid's size."""
        if label.shape != shape:
            raise GridError(f"label {path} is {label.shape[0]} x {label.shape[1]} px but the date-1 grid "
                            f"of {reference} is {shape[0]} x {shape[1]}; labels must be on date 1's grid")
        if self.window is None:
            return label
        row, col, height, width = self.window
        return label[row:row + height, col:col + width]

    def __len__(self) -> int:
        return len(self.scenes)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.scenes[index].sample()

    def change_fraction(self) -> float:
        """Fraction of labelled pixels that changed."""
        change = sum(int((s.mask == 1).sum()) for s in self.scenes)
        labelled = sum(int((s.mask != self.ignore_index).sum()) for s in self.scenes)
        return change / max(labelled, 1)


def band_statistics(scenes: Sequence[PairScene]) -> tuple[list[float], list[float]]:
    """Per-band mean and standard deviation over both dates of ``scenes`` (float64 sums)."""
    channels = scenes[0].image.shape[1]
    total = np.zeros(channels)
    squares = np.zeros(channels)
    count = 0
    for scene in scenes:
        x = scene.image.astype(np.float64)
        total += x.sum(axis=(0, 2, 3))
        squares += (x * x).sum(axis=(0, 2, 3))
        count += x.shape[0] * x.shape[2] * x.shape[3]
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean * mean, 1e-12))
    return mean.tolist(), std.tolist()


class PairCrops(Dataset):
    """Random co-located crops of bitemporal scenes: the same window in both dates and the label.

    Item ``i`` is drawn from a generator seeded by ``(seed, i)``, so an epoch is reproducible and
    independent of workers. Scenes are chosen in proportion to their area; a scene smaller than the
    crop is padded (pixels by edge replication, the label with the ignore index). Samples also hold
    ``"window"``: the crop's ``(row, col)`` in its scene.

    Args:
        scenes: The scenes (e.g. :attr:`BitemporalScenes.scenes`, or their training strips).
        size: Crop side in pixels.
        length: Crops per epoch.
        seed: Seed of the crop positions.
        ignore_index: Label of padded pixels.
    """

    def __init__(self, scenes: Sequence[PairScene], size: int, length: int, seed: int = 0,
                 ignore_index: int = IGNORE_INDEX) -> None:
        if not scenes:
            raise ValueError("PairCrops needs at least one scene")
        self.scenes = list(scenes)
        self.size, self.length, self.seed, self.ignore_index = int(size), int(length), seed, ignore_index
        areas = np.array([s.mask.size for s in self.scenes], dtype=np.float64)
        self._p = areas / areas.sum()

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, Any]:
        rng = np.random.default_rng([self.seed, index])
        scene = self.scenes[int(rng.choice(len(self.scenes), p=self._p))]
        h, w = scene.mask.shape
        row = int(rng.integers(0, max(h - self.size, 0) + 1))
        col = int(rng.integers(0, max(w - self.size, 0) + 1))
        image = scene.image[..., row:row + self.size, col:col + self.size].astype(np.float32)
        mask = scene.mask[row:row + self.size, col:col + self.size].astype(np.int64)
        pad_h, pad_w = self.size - mask.shape[0], self.size - mask.shape[1]
        if pad_h or pad_w:
            image = np.pad(image, ((0, 0), (0, 0), (0, pad_h), (0, pad_w)), mode="edge")
            mask = np.pad(mask, ((0, pad_h), (0, pad_w)), constant_values=self.ignore_index)
        return {"image": torch.from_numpy(image), "mask": torch.from_numpy(mask), "city": scene.name,
                "path": scene.paths[0], "window": torch.tensor([row, col])}
