"""Configuration of a landscape study (``configs/landscape/*.yaml``): models, data, grid, measures.

Every section is a dataclass with defaults; unknown keys are refused with the section named, so a
typo never silently falls back to a default. Paths are used as written (relative to the working
directory, as the pretraining configs are).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from rsmae.errors import InputNotFoundError, LandscapeError

__all__ = [
    "OBJECTIVES",
    "DataSpec",
    "DirectionSpec",
    "GridSpec",
    "HessianSpec",
    "LandscapeConfig",
    "ModelSpec",
    "NoiseSpec",
]

# Objective names of a study and what they evaluate.
OBJECTIVES = {
    "recon": "MAE reconstruction loss of the (student) MAE, fixed masks",
    "pretrain": "the model's own pretraining loss (MAE, or RC-MAE with its fixed teacher), fixed masks",
    "probe": "linear-probe cross-entropy on EuroSAT, head fitted at the centre and held fixed",
    "classification": "cross-entropy of a supervised classifier (encoder + head)",
}
KINDS = ("pretrain", "backbone", "classifier")

T = TypeVar("T")


@dataclass
class ModelSpec:
    """One model of the comparison.

    Attributes:
        name: Label in tables and figures.
        kind: ``"pretrain"`` (Lightning checkpoint of ``pipelines/pretrain.py``: MAE or RC-MAE),
            ``"backbone"`` (``backbone.safetensors``: probe loss only) or ``"classifier"`` (a
            supervised ViT as ``pipelines/evaluate.py --protocol full --out`` saves it: ``path`` =
            its ``backbone.safetensors``, ``head`` = its ``head.safetensors``, a
            :class:`~rsmae.tasks.finetune.PooledHead`; a bare ``weight``/``bias`` file is a linear
            head on the cls token).
        path: The model file.
        head: Head file of a classifier.
        weights: RC-MAE: the encoder probed, ``"student"`` or ``"teacher"``.
        seed: Training seed of this file. Entries sharing a ``name`` are one model trained with
            different seeds (each with its own ``seed``, the same ``kind``): the report aggregates
            every measure over them (and over the direction seeds). ``None``: one file per name.
    """

    name: str
    kind: str
    path: str
    head: str | None = None
    weights: str = "student"
    seed: int | None = None

    @property
    def label(self) -> str:
        """Name of this file's outputs: the model name, with ``_s<seed>`` for a training seed."""
        return self.name if self.seed is None else f"{self.name}_s{self.seed}"

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise LandscapeError(f"model {self.name!r}: kind={self.kind!r}; choose one of {', '.join(KINDS)}")
        if self.kind == "classifier" and not self.head:
            raise LandscapeError(f"model {self.name!r}: a classifier needs head: <its head.safetensors>")
        if self.weights not in ("student", "teacher"):
            raise LandscapeError(f"model {self.name!r}: weights={self.weights!r}; choose student or teacher")


@dataclass
class DataSpec:
    """Fixed data of the objectives (the same samples for every model).

    Attributes:
        store: Tile store(s) for the pretraining losses; ``None`` uses the EuroSAT images.
        pretrain_samples: Tiles of the pretraining losses.
        batch_size: Samples per forward.
        mask_seed: Seed of the fixed mask noise.
        seed: Seed of the choice of samples.
        eurosat: EuroSAT folder (``train/``, ``test/``) for the probe loss.
        probe_split: EuroSAT split the probe head is fitted on (the supervised models' training split).
        probe_eval_split: EuroSAT split of the probe and classification losses, their Hessians and noise:
            by default ``test``, images no model was trained on (the supervised model is fine-tuned on
            ``train``, the pretraining corpus holds no EuroSAT image). Equal to ``probe_split``: the
            losses on the images the head was fitted on (the studies before issue 21).
        probe_samples: Images of the probe head fit and of the probe loss, each (``None``: the whole split).
        probe_steps: Adam steps of the probe head fit.
    """

    store: str | list[str] | None = None
    pretrain_samples: int = 32
    batch_size: int = 16
    mask_seed: int = 0
    seed: int = 0
    eurosat: str = "../shared/data/eurosat_ms_subset"
    probe_split: str = "train"
    probe_eval_split: str = "test"
    probe_samples: int | None = 64
    probe_steps: int = 300


@dataclass
class GridSpec:
    """Grid of the 2D surfaces: ``size x size`` over ``[lo, hi]`` in both directions.

    Attributes:
        size: Grid points per side.
        lo: Lowest step along each direction (in units of the filter-normalised direction).
        hi: Highest step along each direction.
    """

    size: int = 21
    lo: float = -1.0
    hi: float = 1.0


@dataclass
class DirectionSpec:
    """Direction seeds: seed ``s`` draws ``d1`` with ``2 s`` and ``d2`` with ``2 s + 1``.

    Attributes:
        seeds: One surface per seed (the same seeds for every model).
        include_1d: Also perturb 1-D parameters (biases, norms); ``false`` keeps them fixed.
    """

    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    include_1d: bool = False


@dataclass
class HessianSpec:
    """Top eigenvalues (power iteration) and Hutchinson trace; ``enabled: false`` skips both.

    Attributes:
        enabled: Measure the Hessian's top eigenvalues and trace.
        top_k: Eigenvalues of largest magnitude.
        iters: Largest number of power iterations.
        tol: Relative change of the eigenvalues that ends the iteration.
        trace_samples: Rademacher vectors of the Hutchinson trace.
        seed: Seed of the start vectors and the Rademacher vectors.
    """

    enabled: bool = True
    top_k: int = 1
    iters: int = 20
    tol: float = 1e-3
    trace_samples: int = 20
    seed: int = 0


@dataclass
class NoiseSpec:
    """Gaussian weight noise: levels, draws, seed; ``enabled: false`` skips it.

    Attributes:
        enabled: Measure the loss rise under filter-normalised Gaussian weight noise.
        sigmas: Noise levels (relative to each filter's norm).
        draws: Noise draws per level.
        seed: Draw ``k`` uses seed ``seed + k``.
        include_1d: Also perturb 1-D parameters (biases, norms).
    """

    enabled: bool = True
    sigmas: list[float] = field(default_factory=lambda: [0.01, 0.02, 0.05, 0.1])
    draws: int = 20
    seed: int = 1000
    include_1d: bool = False


@dataclass
class LandscapeConfig:
    """A whole study.

    Attributes:
        out: Output folder.
        models: The models compared.
        objectives: Objective names (:data:`OBJECTIVES`); each model gets those that apply to it.
        data: Fixed data.
        grid: Surface grid.
        directions: Direction seeds.
        hessian: Curvature measures.
        noise: Noise flatness.
        interpolate: Pairs of model names: loss along the straight line between them (the first
            listed training seed of each).
        threshold: Loss rise that ends the basin (report).
        chunk_size: Grid points per batched forward.
        workers: Local processes for surface rows (1 = this process).
        dask: Scheduler address, or ``true`` for a local Dask cluster of ``workers`` processes.
        threads: Torch threads during the study (``None``: torch's default). On a busy machine tiny
            models run faster on 1 thread (multithreaded small ops wait for descheduled threads).
        plots_per_model: Draw each model's contour (first direction seed) beside the comparisons.
        plots_3d: Also draw each model's 3D view.
    """

    out: str
    models: list[ModelSpec]
    objectives: list[str] = field(default_factory=lambda: ["recon", "pretrain", "probe"])
    data: DataSpec = field(default_factory=DataSpec)
    grid: GridSpec = field(default_factory=GridSpec)
    directions: DirectionSpec = field(default_factory=DirectionSpec)
    hessian: HessianSpec = field(default_factory=HessianSpec)
    noise: NoiseSpec = field(default_factory=NoiseSpec)
    interpolate: list[list[str]] = field(default_factory=list)
    threshold: float = 0.1
    chunk_size: int = 8
    workers: int = 1
    dask: str | bool | None = None
    threads: int | None = None
    plots_per_model: bool = True
    plots_3d: bool = True

    def __post_init__(self) -> None:
        unknown = [o for o in self.objectives if o not in OBJECTIVES]
        if unknown:
            raise LandscapeError(f"unknown objectives {unknown}; choose from {', '.join(OBJECTIVES)}")
        if not self.directions.seeds:
            raise LandscapeError("directions.seeds is empty; give at least one seed (e.g. [0, 1, 2])")
        names = [m.name for m in self.models]
        labels = [m.label for m in self.models]
        if not names or len(set(labels)) != len(labels):
            raise LandscapeError(f"models {labels}: give at least one model, each with its own name (or, "
                                 "for training seeds of one model, the same name with its own seed)")
        for name in dict.fromkeys(names):
            group = [m for m in self.models if m.name == name]
            if len(group) > 1 and (any(m.seed is None for m in group) or len({m.kind for m in group}) > 1):
                raise LandscapeError(f"models named {name!r}: entries sharing a name are training seeds of "
                                     "one model; give each a seed: and the same kind")
        for pair in self.interpolate:
            if len(pair) != 2 or not set(pair) <= set(names):
                raise LandscapeError(f"interpolate entry {pair}: give two model names out of {names}")

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "config") -> LandscapeConfig:
        """Build from a parsed YAML mapping; ``where`` names the source in errors."""
        data = dict(data)
        models = [_build(ModelSpec, m, f"{where}: models[{i}]") for i, m in enumerate(data.pop("models", []))]
        sections = {"data": DataSpec, "grid": GridSpec, "directions": DirectionSpec,
                    "hessian": HessianSpec, "noise": NoiseSpec}
        for key, section in sections.items():
            data[key] = _build(section, data.get(key) or {}, f"{where}: {key}")
        return _build(cls, {**data, "models": models}, where)

    @classmethod
    def from_yaml(cls, path: str | Path) -> LandscapeConfig:
        """Read a YAML config file."""
        path = Path(path)
        if not path.is_file():
            raise InputNotFoundError(f"{path}: no such config; see configs/landscape/cpu-small.yaml")
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            raise LandscapeError(f"{path}: not valid YAML ({err})") from err
        if not isinstance(data, dict):
            raise LandscapeError(f"{path}: expected a mapping with out, models, ...")
        return cls.from_dict(data, str(path))

    def to_dict(self) -> dict[str, Any]:
        """Plain values (for ``config.yaml`` in the output folder)."""
        return dataclasses.asdict(self)


def _build(cls: type[T], values: Any, where: str) -> T:
    if isinstance(values, cls):
        return values
    if not isinstance(values, dict):
        raise LandscapeError(f"{where}: expected a mapping, got {values!r}")
    known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - known)
    if unknown:
        raise LandscapeError(f"{where}: unknown keys {unknown}; known: {', '.join(sorted(known))}")
    try:
        return cls(**values)
    except TypeError as err:
        raise LandscapeError(f"{where}: {err}") from err
