"""Settings of a change-detection evaluation, each a dataclass passed whole.

:class:`ChangeConfig` holds training and scoring settings (``--set KEY=VALUE``), :class:`ChangeRun`
what to train and score and where results go.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rsmae.datasets import LEVIRCD, OSCD, BitemporalScenes, LandsatCD
from rsmae.models.trainable import Tune
from rsmae.tasks.change import ChangeTask

__all__ = ["CHANGE_DATASETS", "ChangeConfig", "ChangeRun", "change_dataset"]

CHANGE_DATASETS: dict[str, type[BitemporalScenes]] = {"oscd": OSCD, "levircd": LEVIRCD, "landsat": LandsatCD}


@dataclasses.dataclass
class ChangeConfig:
    """Settings of :func:`evaluate_change` (CPU-friendly defaults: one OSCD cell in minutes).

    Attributes:
        steps: Optimiser steps.
        batch_size: Pairs per step.
        crop_size: Training crop side = inference window = the ViT's input size.
        overlap: Pixels shared by neighbouring inference windows.
        window_batch: Windows per forward in inference.
        blend: Weight window of the blended logits (``cosine``, ``triangular``, ``flat``).
        val_fraction: Bottom fraction of every training scene held out for the threshold.
        match_dates: Rescale date 2 per band to date 1's scene mean and std before anything else
            (:meth:`~rsmae.datasets.PairScene.match_dates`), in training and scoring alike.
        preset: Encoder preset of a random init.
        patch_size: Patch size of a random init.
        fusion: ``"diff"`` or ``"concat"``.
        decoder_dim: Decoder width.
        pos_weight: BCE weight of change pixels; ``None`` = sqrt(no-change / change) of the
            training pixels.
        dice_weight: Soft-Dice weight (0 = BCE only).
        lr: Decoder / from-scratch learning rate.
        encoder_lr: Learning rate of tuned encoder parts.
        weight_decay: AdamW weight decay.
        warmup_steps: Warmup steps (``None`` = 5 %).
        dihedral: Random D4 element per pair in training.
        precision: Lightning precision (``"32-true"``, ``"bf16-mixed"``); ``"auto"`` = bf16 where the
            CPU computes it natively (:func:`~rsmae.tasks.precision.default_precision`), in training
            and inference alike.
        maps: Write a change-map PNG per test scene (with ``out_dir``).
        accelerator: Lightning accelerator of training and scoring: ``"auto"`` (a GPU when one is
            visible, else the CPU), ``"cpu"`` or ``"gpu"``; resolved to the device type it runs on.
        progress: Show the training steps and the scored scenes (a bar on a terminal, else log lines).
        threads: Torch threads during the run (restored after); ``None`` keeps the current count.
            One thread per process pays when several runs share the cores.
    """

    steps: int = 300
    batch_size: int = 8
    crop_size: int = 64
    overlap: int = 16
    window_batch: int = 32
    blend: str = "cosine"
    val_fraction: float = 0.2
    match_dates: bool = True
    preset: str = "vit_tiny"
    patch_size: int = 16
    fusion: str = "diff"
    decoder_dim: int = 64
    pos_weight: float | None = None
    dice_weight: float = 0.0
    lr: float = 1e-3
    encoder_lr: float = 1e-4
    weight_decay: float = 0.01
    warmup_steps: int | None = None
    dihedral: bool = True
    precision: str = "auto"
    maps: bool = True
    accelerator: str = "auto"
    progress: bool = True
    threads: int | None = None

    def task_kwargs(self) -> dict[str, Any]:
        """The settings that are :class:`~rsmae.tasks.change.ChangeTask` arguments of the same name.

        Derived from ``ChangeTask``'s signature, so a setting is written once, here.
        """
        shared = inspect.signature(ChangeTask).parameters
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name in shared}

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> ChangeConfig:
        """Build from keyword arguments, naming the valid ones when a key is unknown."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(kwargs) - names)
        if unknown:
            raise TypeError(f"unknown change-detection setting(s) {unknown}; valid: {sorted(names)}")
        return cls(**kwargs)

    @classmethod
    def parse_settings(cls, items: Sequence[str]) -> dict[str, Any]:
        """``["steps=300", "precision=bf16-mixed"]`` -> keyword arguments (JSON values, else strings).

        Raises:
            ValueError: an item is not ``KEY=VALUE``.
        """
        out: dict[str, Any] = {}
        for item in items:
            key, sep, value = item.partition("=")
            if not sep or not key.strip():
                raise ValueError(f"setting {item!r} is not KEY=VALUE (e.g. steps=300)")
            try:
                out[key.strip()] = json.loads(value)
            except json.JSONDecodeError:
                out[key.strip()] = value
        return out


@dataclasses.dataclass(kw_only=True)
class ChangeRun:
    """One change-detection evaluation: the model to train (or load), the scenes, the outputs.

    Attributes:
        backbone: Backbone file of the encoder's initial weights; ``None`` = random init (or no
            encoder with ``model="fc-siam-diff"``).
        tune: Encoder parts that train (a parsed tune setting).
        test_root: Folder of the test scenes (the dataset's layout).
        train_root: Folder of the training scenes (default ``test_root``).
        dataset: ``"oscd"``, ``"levircd"`` or ``"landsat"``.
        seed: Seed of the model init, crops and augmentation.
        out: Output folder, or ``None``.
        model: ``"siamese-vit"`` or ``"fc-siam-diff"``.
        train_cities: Training scenes instead of the dataset's train split.
        test_cities: Test scenes instead of its test split (``["all"]``: every labelled scene).
        bands: Bands to use (default all of the dataset's).
        load: A model saved by an earlier run: scored without training.
        on_scene: Called with each test scene's metrics as soon as it is scored.
        config: Training and scoring settings.
    """

    backbone: str | Path | None
    tune: Tune
    test_root: str | Path
    train_root: str | Path | None = None
    dataset: str = "oscd"
    seed: int = 0
    out: Path | None = None
    model: str = "siamese-vit"
    train_cities: Sequence[str] | None = None
    test_cities: Sequence[str] | None = None
    bands: Sequence[str] | None = None
    load: str | Path | None = None
    on_scene: Callable[[dict[str, Any]], None] | None = None
    config: ChangeConfig = dataclasses.field(default_factory=ChangeConfig)

    @property
    def dataset_class(self) -> type[BitemporalScenes]:
        """The dataset class of :attr:`dataset` (:func:`change_dataset`)."""
        return change_dataset(self.dataset)


def change_dataset(name: str) -> type[BitemporalScenes]:
    """The scene dataset named ``name`` (:data:`CHANGE_DATASETS`).

    Raises:
        ValueError: naming the datasets.
    """
    try:
        return CHANGE_DATASETS[name]
    except KeyError:
        raise ValueError(f"dataset {name!r}; choose {', '.join(CHANGE_DATASETS)}") from None
