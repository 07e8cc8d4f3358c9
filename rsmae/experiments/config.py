"""Where the grids' YAML configs are read and their relative paths resolved.

Relative paths in a config (data folders, ``backbones_dir``, ``cells_dir``, ``cache_dir``) are taken
from :data:`ROOT`, the repository checkout the benchmarks run from, so a grid gives the same cells
whatever the working directory.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import yaml

__all__ = ["CONFIGS", "DATA", "ROOT", "load_config", "log_to_stdout"]

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "data"
CONFIGS = ROOT / "configs" / "bench" / "pretrain"


def load_config(path: str | Path) -> dict[str, Any]:
    """The grid config (YAML); relative paths are taken from the repository root."""
    config = yaml.safe_load(Path(path).read_text())
    config["config_path"] = str(path)
    for key in ("train_root", "test_root"):
        if "data" in config:
            config["data"][key] = str((ROOT / config["data"][key]).resolve())
    config["backbones_dir"] = str(ROOT / config.get("backbones_dir", "runs/transfer"))
    config["cells_dir"] = str(ROOT / config.get("cells_dir", "runs/transfer/cells"))
    config["cache_dir"] = str(ROOT / config.get("cache_dir", "runs/transfer/features"))
    return config


def log_to_stdout() -> None:
    """Show the progress lines of :mod:`rsmae.experiments` (commands run, the leak check) on stdout.

    For the entry points in ``benchmarks/``; the library itself only logs.
    """
    logger = logging.getLogger("rsmae.experiments")
    if not logger.handlers:
        logger.addHandler(logging.StreamHandler(sys.stdout))
    logger.setLevel(logging.INFO)
