"""The cells of a grid: their plan, result files, fingerprints and resume.

A cell is one ``{init, protocol, fraction | dataset, seed}``; it writes one result file
(:func:`cell_path`) holding its :func:`fingerprint`, what its result depends on and nothing else (no
path, no machine name). A result whose fingerprint matches is done (:func:`is_done`); tables are
assembled from whatever cells are done (:func:`read_cells`).
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import rsmae
from rsmae.experiments.config import ROOT, GridConfig
from rsmae.files import read_json
from rsmae.models.registry import sha256_file

__all__ = ["CACHE_VERSION", "cell_path", "fingerprint", "folder_digest", "is_done", "plan_cells",
           "read_cells", "resolved_precision"]

# Bump when the computation of a cell changes (protocols, metrics, what a result holds): every cell
# result made before is then stale and runs again.
CACHE_VERSION = 2


def plan_cells(config: GridConfig, inits: Iterable[str] | None = None) -> list[dict[str, Any]]:
    """Every cell of the grid, in a stable order (the SLURM array index is a position here).

    A grid block crosses its protocols with ``fractions`` (scene classification) or ``datasets``
    (change detection), every init (``inits``, default the config's, or the block's own) and every
    seed. Seeds come outermost, so a grid stopped early has every init and protocol at the same number
    of seeds.
    """
    inits = list(config.inits if inits is None else inits)
    cells = []
    for block in config.grid:
        for seed in config.seeds:
            for value in block.values:
                for protocol in block.protocols:
                    for init in inits if block.inits is None else block.inits:
                        cell = {"init": init, "protocol": protocol, block.axis: str(value), "seed": int(seed)}
                        cells.append(cell)
    return cells


def cell_path(cells_dir: str | Path, cell: dict[str, Any]) -> Path:
    """Result file of a cell."""
    where = str(cell.get("fraction", cell.get("dataset"))).lower().replace("%", "pct")
    where = re.sub(r"[^0-9a-z]+", "", where)
    return Path(cells_dir) / cell["init"] / f"{cell['protocol']}__{where}__seed{cell['seed']}.json"


@functools.cache
def folder_digest(root: str) -> str:
    """SHA-256 of a data folder (or file): its files' relative names and bytes, hidden files aside.

    Relative roots are taken from the repository root; a missing one digests as ``missing <root>``.
    Computed once per process.
    """
    path = ROOT / root
    if not path.exists():
        return f"missing {root}"
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    digest = hashlib.sha256()
    for file in files:
        if not any(part.startswith(".") for part in file.relative_to(path).parts):
            digest.update(f"{file.relative_to(path).as_posix()}:{sha256_file(file)}\n".encode())
    return digest.hexdigest()


def resolved_precision(cell: dict[str, Any], config: GridConfig) -> str:
    """The precision a cell trains in on this machine: ``auto`` or unset resolved as the evaluation does.

    Frozen protocols compute fp32 features (no autocast) and fit fp32 heads: ``"32-true"``.
    """
    import torch

    from rsmae.evaluation.classification import FROZEN_PROTOCOLS
    from rsmae.tasks.precision import default_precision

    if config.is_change:
        settings = {**(config.change or {}), **config.datasets[cell["dataset"]].get("settings", {})}
        given = str(settings.get("precision", "auto"))
        if given != "auto":
            return given
        on_gpu = settings.get("accelerator", "auto") in ("auto", "gpu", "cuda") and torch.cuda.is_available()
        return default_precision("cuda" if on_gpu else "cpu")
    if cell["protocol"] in FROZEN_PROTOCOLS:
        return "32-true"
    settings = config.finetune or {}
    if settings.get("precision") not in (None, "auto"):
        return str(settings["precision"])
    on_gpu = settings.get("accelerator", "auto") in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    return default_precision("cuda" if on_gpu else "cpu")


def _data_key(cell: dict[str, Any], config: GridConfig) -> dict[str, Any]:
    """The cell's data settings, its folders replaced by :func:`folder_digest` (contents, not paths)."""
    data = config.datasets[cell["dataset"]] if config.is_change else config.data
    return {k: folder_digest(str(v)) if k in ("train_root", "test_root") else v for k, v in data.items()}


def fingerprint(cell: dict[str, Any], backbone: dict[str, Any], config: GridConfig) -> str:
    """What a cell's result depends on, and nothing else (no path, no machine name).

    The backbone's bytes, the contents of the data folders and the data settings, the protocol
    settings and recipe, the resolved precision, the rsmae version, :data:`CACHE_VERSION` and the
    feature cache's version.
    """
    from rsmae.evaluation.classification import FINETUNE_RECIPE, FROZEN_PROTOCOLS, LR_SWEEP
    from rsmae.evaluation.features import CACHE_VERSION as FEATURES_VERSION

    change = config.is_change
    tuned = not change and cell["protocol"] not in FROZEN_PROTOCOLS
    frozen = {"lr_sweep": LR_SWEEP, "features": FEATURES_VERSION}
    recipe = FINETUNE_RECIPE if tuned else None if change else frozen
    settings = {k: v for k, v in config.settings.items() if k != "precision"}
    parts = {"cell": cell, "backbone": backbone.get("sha256"), "recipe": recipe,
             "data": _data_key(cell, config), "settings": settings,
             "precision": resolved_precision(cell, config), "rsmae": rsmae.__version__,
             "cache_version": CACHE_VERSION}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def is_done(path: Path, key: str) -> bool:
    """Whether ``path`` holds a finished result with fingerprint ``key`` (unreadable: not done)."""
    result = read_json(path)
    return isinstance(result, dict) and result.get("fingerprint") == key


def read_cells(config: GridConfig, cells: list[dict[str, Any]], manifest: dict[str, dict[str, Any]]
               ) -> list[dict[str, Any]]:
    """Results of the finished cells among ``cells`` (stale results of other backbones or recipes skipped)."""
    out = []
    for cell in cells:
        path = cell_path(config.cells_dir, cell)
        if cell["init"] in manifest and is_done(path, fingerprint(cell, manifest[cell["init"]], config)):
            out.append(read_json(path))
    return out


