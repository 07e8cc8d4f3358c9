"""Scene-classification data for one backbone: its bands, its normalisation, splits and label fractions.

Every init is scored under identical preprocessing rules: the images are read with the
backbone's own bands in its own order and normalised with the statistics that travel with its
weights. When the backbone was pretrained on other bands (an RGB natural-image MAE scored on
13-band EuroSAT), its patch embedding is adapted by band name and the statistics are computed from
the task's training split; the adaptation is logged and recorded in the result, never silent.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Sequence
from pathlib import Path

import rasterio
import torch
from lightning.fabric import Fabric
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor

from rsmae.bands import get_layout, get_sensor
from rsmae.data import normalize_images
from rsmae.datasets.scene_folder import SUFFIXES, SceneFolder
from rsmae.errors import BandError, InputNotFoundError, ModelConfigError, RasterReadError
from rsmae.models.weights import BackboneMeta, load_backbone, read_backbone_meta
from rsmae.tasks.statistics import backbone_or_training_statistics

__all__ = [
    "ACCELERATORS",
    "ClassificationData",
    "accelerator_device",
    "backbone_meta",
    "label_subset",
    "load_classification",
    "load_for_task",
    "peek_size",
    "stratified_split",
    "task_bands",
]

_logger = logging.getLogger(__name__)

ACCELERATORS = ("auto", "cpu", "gpu")  # the --accelerator choices; Lightning also takes cuda, mps


@dataclasses.dataclass
class ClassificationData:
    """Normalised images and labels of the train / val / test splits of one task, for one backbone.

    Attributes:
        train: ``(images, labels)`` the protocol trains on (after the label fraction).
        val: ``(images, labels)`` held out from the training folder to choose hyperparameters.
        test: ``(images, labels)`` of the test folder: scored once, never used for choices.
        classes: Class names in label order.
        bands: Band names in channel order (the backbone's).
        mean: Per-band mean used for normalisation (data units).
        std: Per-band standard deviation used.
        adaptation: What was adapted to fit the backbone to the data ("" when nothing).
    """

    train: tuple[Tensor, Tensor]
    val: tuple[Tensor, Tensor]
    test: tuple[Tensor, Tensor]
    classes: list[str]
    bands: list[str]
    mean: list[float]
    std: list[float]
    adaptation: str = ""


def accelerator_device(accelerator: str = "auto") -> torch.device:
    """The device a Lightning ``accelerator`` with one device runs on, resolved as the ``Trainer`` does.

    Evaluation trains with ``Trainer(accelerator=device.type, devices=1)`` and moves its model and data
    to this device for feature extraction and inference.

    Args:
        accelerator: ``"auto"`` (a GPU when one is visible, else the CPU), ``"cpu"``, ``"gpu"``, or any
            accelerator name Lightning knows (``"cuda"``, ``"mps"``).

    Raises:
        ModelConfigError: when the accelerator is unknown or not available here, with the fix.
    """
    try:
        return Fabric(accelerator=accelerator, devices=1).device
    except (RuntimeError, ValueError) as err:
        raise ModelConfigError(f"--accelerator {accelerator}: {err}; use --accelerator auto (a GPU when "
                               "one is visible, else the CPU) or --accelerator cpu") from None


def backbone_meta(path: str | Path) -> BackboneMeta:
    """The :class:`~rsmae.models.weights.BackboneMeta` stored in a backbone file.

    Raises:
        WeightsError: naming ``path`` when it is missing or not a backbone file, with the fix.
    """
    return read_backbone_meta(path)


def task_bands(sensor: str, layout: str) -> tuple[str, ...]:
    """Canonical band names of a task's files (``layout`` of ``sensor``)."""
    return get_layout(layout, get_sensor(sensor))


def peek_size(folder: str | Path) -> int:
    """Image size of the first image of a class-folder tree (tasks have square images).

    Raises:
        InputNotFoundError: naming ``folder`` when it holds no image.
        RasterReadError: naming the file when it is not square or unreadable.
    """
    first = next((p for p in sorted(Path(folder).glob("*/*")) if p.suffix.lower() in SUFFIXES), None)
    if first is None:
        raise InputNotFoundError(f"{folder}: no class folders with images; expected {folder}/<Class>/*.tif")
    try:
        with rasterio.open(first) as src:
            height, width = src.height, src.width
    except rasterio.errors.RasterioIOError as err:
        raise RasterReadError(f"{first}: not a readable raster ({err})") from err
    if height != width:
        raise RasterReadError(f"{first}: {height}x{width} px; scene classification needs square images")
    return height


def load_for_task(
    path: str | Path, data_bands: Sequence[str], data_sensor: str, img_size: int, *, adapt: bool = True
) -> tuple[VisionTransformer, str]:
    """Load a backbone to be fed the task's data.

    When the backbone's bands are all among the data's bands (same registry bands), it is loaded as
    saved and the data are read in its band order. Otherwise its patch embedding is adapted by band
    name to all the data's bands (:func:`~rsmae.load_backbone` ``bands=``).

    Args:
        path: Backbone file.
        data_bands: Bands the task's files hold.
        data_sensor: Their sensor.
        img_size: Input size of the task (position embeddings are resampled when it differs).
        adapt: Allow band adaptation; with ``False`` a band mismatch raises.

    Returns:
        The encoder (with ``rsmae_meta``) and a description of the adaptation ("" when none).

    Raises:
        BandError: when the bands differ and ``adapt`` is off, or no band can be paired.
    """
    meta = backbone_meta(path)
    sensor = get_sensor(data_sensor)
    data = {sensor.band(b) for b in data_bands}
    try:
        own = [get_sensor(meta.sensor or data_sensor).band(b) for b in meta.bands]
    except BandError:
        own = []
    if own and all(b in data for b in own):
        return load_backbone(path, img_size=img_size), ""
    if not adapt:
        raise BandError(
            f"{path}: backbone bands {meta.bands} ({meta.sensor}) are not all in the data's bands "
            f"{list(data_bands)} ({data_sensor}); allow band adaptation or choose matching data"
        )
    encoder = load_backbone(path, bands=list(data_bands), sensor=data_sensor, img_size=img_size)
    note = f"patch embedding adapted by band name from {meta.bands} ({meta.sensor}) to {list(data_bands)}"
    _logger.warning("%s: %s", path, note)
    return encoder, note


def stratified_split(labels: Tensor, fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """Indices ``(keep, held_out)``: ``fraction`` of every class (at least one) held out."""
    gen = torch.Generator().manual_seed(seed)
    keep, held = [], []
    for c in labels.unique(sorted=True):
        idx = (labels == c).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)]
        n = min(max(1, round(fraction * len(idx))), len(idx) - 1) if fraction > 0 else 0
        held.append(idx[:n])
        keep.append(idx[n:])
    return torch.cat(keep).sort().values, torch.cat(held).sort().values


def label_subset(labels: Tensor, fraction: str | float, seed: int) -> Tensor:
    """Indices of a label fraction, sampled per class with ``seed`` (reproducible).

    Args:
        labels: ``(N,)`` class indices.
        fraction: ``"100%"``/``1.0`` (all), ``"25%"``/``0.25`` (that share of every class, at least
            one), or ``"5-shot"`` (five per class, fewer where a class has fewer).
        seed: Sampling seed.

    Raises:
        ValueError: on an unknown fraction.
    """
    text = str(fraction).strip().lower()
    gen = torch.Generator().manual_seed(seed)
    if text.endswith("-shot"):
        per_class = lambda n: min(n, int(text[:-5]))  # noqa: E731
    else:
        try:
            share = float(text[:-1]) / 100 if text.endswith("%") else float(text)
        except ValueError:
            share = -1.0  # reported below with the accepted forms
        if not 0 < share <= 1:
            raise ValueError(f"label fraction {fraction!r}: give a share in (0, 1], 'P%' or 'K-shot'")
        per_class = lambda n: max(1, math.ceil(share * n)) if share < 1 else n  # noqa: E731
    out = []
    for c in labels.unique(sorted=True):
        idx = (labels == c).nonzero().flatten()
        out.append(idx[torch.randperm(len(idx), generator=gen)[: per_class(len(idx))]])
    return torch.cat(out).sort().values


def _stats(images: Tensor) -> tuple[list[float], list[float]]:
    flat = images.transpose(0, 1).reshape(images.shape[1], -1).double()
    return flat.mean(1).tolist(), flat.std(1).clamp_min(1e-6).tolist()


def load_classification(
    encoder: VisionTransformer,
    train_root: str | Path,
    test_root: str | Path,
    *,
    fraction: str | float = "100%",
    seed: int = 0,
    val_fraction: float = 0.2,
    sensor: str = "s2-l1c",
    layout: str = "eurosat",
) -> ClassificationData:
    """Read, split and normalise a class-folder task for ``encoder`` (bands and stats from its meta).

    The validation split is held out of the training folder with seed 0 (the same for every init
    and seed); the label fraction is then drawn from the rest with ``seed``.

    Raises:
        BandError: when the files lack one of the encoder's bands.
    """
    meta: BackboneMeta = encoder.rsmae_meta
    train_set = SceneFolder(train_root, sensor=sensor, layout=layout, bands=meta.bands)
    test_set = SceneFolder(test_root, sensor=sensor, layout=layout, bands=meta.bands,
                           classes=train_set.classes)
    x, y = train_set.tensors()
    rest, val = stratified_split(y, val_fraction, seed=0)
    chosen = rest[label_subset(y[rest], fraction, seed)]
    mean, std, from_training = backbone_or_training_statistics(meta.mean, meta.std, lambda: _stats(x[rest]))
    note = "normalisation statistics computed from the training split (the backbone has none)" \
        if from_training else ""
    if from_training:
        _logger.warning("%s", note)
    def norm(images: Tensor) -> Tensor:
        return normalize_images(images, mean, std)

    tx, ty = test_set.tensors()
    return ClassificationData(
        train=(norm(x[chosen]), y[chosen]),
        val=(norm(x[val]), y[val]),
        test=(norm(tx), ty),
        classes=list(train_set.classes),
        bands=list(meta.bands),
        mean=list(mean),
        std=list(std),
        adaptation=note,
    )
