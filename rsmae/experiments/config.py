"""The grids' typed config: where the YAML is read, checked and its relative paths resolved.

A grid config (``configs/bench/*.yaml``) becomes one :class:`GridConfig`, passed whole to the plan,
the cells, the inits and the table writers. Relative paths (data folders, ``backbones_dir``,
``cells_dir``, ``cache_dir``) are taken from :data:`ROOT`, the repository checkout the benchmarks
run from, so a grid gives the same cells whatever the working directory. The per-task sections
(``data``, ``datasets``, ``finetune``, ``change``) stay mappings: they are passed on as keyword
arguments of the evaluations, and a cell's fingerprint holds exactly the keys the YAML gives.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from rsmae.errors import RsmaeError

__all__ = ["CONFIGS", "DATA", "ROOT", "GridBlock", "GridConfig", "GridConfigError", "load_config",
           "log_to_stdout"]

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "data"
CONFIGS = ROOT / "configs" / "bench" / "pretrain"


class GridConfigError(RsmaeError, ValueError):
    """A grid config that cannot be read: names the file and the key."""


@dataclass(frozen=True)
class GridBlock:
    """One block of the grid: its protocols crossed with label ``fractions`` or change ``datasets``.

    ``inits`` (default: the grid's) narrows the block to some inits, e.g. a from-scratch reference.
    """

    protocols: list[str]
    fractions: list[str] | None = None
    datasets: list[str] | None = None
    inits: list[str] | None = None

    @property
    def axis(self) -> str:
        """``"fraction"`` (scene classification) or ``"dataset"`` (change detection)."""
        return "fraction" if self.fractions is not None else "dataset"

    @property
    def values(self) -> list[str]:
        """The fractions or the datasets."""
        return list(self.fractions if self.fractions is not None else self.datasets or [])


@dataclass
class GridConfig:
    """A grid of cells: inits x protocols x fractions (or datasets) x seeds, and where things go.

    ``inits`` grows when foreign weights under ``external`` are converted
    (:func:`rsmae.experiments.inits.add_external`).
    """

    config_path: str = "config.yaml"
    task: str = "classification"
    inits: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    grid: list[GridBlock] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    datasets: dict[str, dict[str, Any]] = field(default_factory=dict)
    finetune: dict[str, Any] | None = None
    change: dict[str, Any] | None = None
    backbones: dict[str, str] | None = None
    external: dict[str, str | None] = field(default_factory=dict)
    backbones_dir: str = str(ROOT / "runs" / "transfer")
    cells_dir: str = str(ROOT / "runs" / "transfer" / "cells")
    cache_dir: str = str(ROOT / "runs" / "transfer" / "features")
    workers: int = 1
    pretrain_steps: int = 1500
    results_name: str = "change_detection"

    @classmethod
    def from_dict(cls, raw: dict[str, Any], where: str = "config") -> GridConfig:
        """A config from its mapping (keys as in the YAML); paths are kept as given.

        Raises:
            GridConfigError: an unknown key, naming it and ``where``.
        """
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise GridConfigError(f"{where}: unknown keys {unknown}; a grid config has {sorted(known)}")
        values = dict(raw)
        values["grid"] = [b if isinstance(b, GridBlock) else GridBlock(**b) for b in raw.get("grid") or []]
        values["seeds"] = [int(s) for s in raw.get("seeds") or []]
        values["inits"] = list(raw.get("inits") or [])
        values["external"] = dict(raw.get("external") or {})
        return cls(**values)

    @property
    def is_change(self) -> bool:
        """Whether the cells are change detection (``task: change``) rather than scene classification."""
        return self.task == "change"

    @property
    def settings(self) -> dict[str, Any]:
        """The protocol settings: ``finetune`` (classification) or ``change``."""
        return dict(self.finetune if self.finetune is not None else self.change or {})


def load_config(path: str | Path) -> GridConfig:
    """The grid config (YAML); relative paths are taken from the repository root.

    Raises:
        GridConfigError: an unknown key.
    """
    raw = yaml.safe_load(Path(path).read_text())
    raw["config_path"] = str(path)
    if "data" in raw:
        for key in ("train_root", "test_root"):
            raw["data"][key] = str((ROOT / raw["data"][key]).resolve())
    raw["backbones_dir"] = str(ROOT / raw.get("backbones_dir", "runs/transfer"))
    raw["cells_dir"] = str(ROOT / raw.get("cells_dir", "runs/transfer/cells"))
    raw["cache_dir"] = str(ROOT / raw.get("cache_dir", "runs/transfer/features"))
    return GridConfig.from_dict(raw, where=str(path))


def log_to_stdout() -> None:
    """Show the progress lines of :mod:`rsmae.experiments` (commands run, the leak check) on stdout.

    For the entry points in ``benchmarks/``; the library itself only logs.
    """
    logger = logging.getLogger("rsmae.experiments")
    if not logger.handlers:
        logger.addHandler(logging.StreamHandler(sys.stdout))
    logger.setLevel(logging.INFO)
