"""EuroSAT for the probe callback: the encoder's bands matched by name, role or wavelength, normalised."""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import Tensor

from rsmae.data import normalize_images
from rsmae.datasets import EuroSAT
from rsmae.datasets.matching import match_dataset_bands
from rsmae.errors import BandError
from rsmae.tasks.statistics import backbone_or_training_statistics

__all__ = ["SPLITS", "load_probe_eurosat"]

_logger = logging.getLogger(__name__)
SPLITS = ("train", "test")


def load_probe_eurosat(root: str | None, data_info: dict[str, Any]
                       ) -> tuple[dict[str, EuroSAT], dict[str, Tensor]]:
    """EuroSAT's splits and, per split, images in the encoder's channels, normalised.

    Each channel gets the EuroSAT band matched to the encoder's band
    (:func:`~rsmae.datasets.match_dataset_bands`; zeros where none matches). A Sentinel-2 encoder's
    statistics are used; any other sensor's describe another product, so EuroSAT's train-split
    statistics are (:func:`~rsmae.tasks.statistics.backbone_or_training_statistics`).

    Raises:
        BandError: when ``data_info`` names no sensor, or no band matches.
    """
    sensor, bands = data_info.get("sensor"), list(data_info["bands"])
    if not sensor:
        raise BandError("ProbeCallback needs the sensor of the pretraining bands in data_info")
    matched = match_dataset_bands(bands, sensor, EuroSAT.all_bands, EuroSAT.sensor)
    mapping = ", ".join(f"{b} <- {m or 'zeros'} ({how})"
                        for b, (m, how) in zip(bands, matched, strict=True))
    own = sensor in ("s2-l1c", "s2-l2a")  # EuroSAT has every Sentinel-2 band, in the same numbers
    if own:
        _logger.log(logging.INFO if sensor == EuroSAT.sensor else logging.WARNING,
                    "probing a %s encoder on EuroSAT (Sentinel-2 L1C), pretraining statistics: %s",
                    sensor, mapping)
    else:
        _logger.warning("probing a %s encoder on EuroSAT (Sentinel-2 L1C), EuroSAT train-split "
                        "statistics: %s", sensor, mapping)
    used = [b for b, _ in matched] if own else sorted({b for b, _ in matched if b is not None},
                                                      key=EuroSAT.all_bands.index)
    data = {s: EuroSAT(root, s, bands=used) for s in SPLITS}
    sources = [None if b is None else used.index(b) for b, _ in matched]

    def train_split() -> tuple[list[float], list[float]]:  # per encoder channel (zeros: 0 and 1)
        train = data["train"].images.double()
        mean, std = train.mean(dim=(0, 2, 3)), train.std(dim=(0, 2, 3)).clamp_min(1e-6)
        return ([0.0 if i is None else float(mean[i]) for i in sources],
                [1.0 if i is None else float(std[i]) for i in sources])

    mean, std, _ = backbone_or_training_statistics(data_info.get("mean"), data_info.get("std"),
                                                   train_split, usable=own)
    return data, {s: _channels(ds.images, sources, mean, std) for s, ds in data.items()}


def _channels(raw: Tensor, sources: list[int | None], mean: list[float], std: list[float]) -> Tensor:
    """``(N, len(sources), H, W)``: channel ``j`` is ``raw[:, sources[j]]`` normalised, zeros for ``None``.

    ``mean[j]`` and ``std[j]`` are the statistics of channel ``j``.
    """
    out = raw.new_zeros(raw.shape[0], len(sources), *raw.shape[2:], dtype=torch.float32)
    for j, i in enumerate(sources):
        if i is not None:
            out[:, j] = normalize_images(raw[:, i : i + 1], mean[j : j + 1], std[j : j + 1])[:, 0]
    return out
