"""The configs shipped with rsmae, named by name: ``rsmae fit --config mae_tiny``.

The repository's top-level ``configs/`` folder is installed as the package data ``rsmae/configs``
(``pyproject.toml``: ``package-dir``); an editable install or a checkout reads ``configs/`` beside
``rsmae/``. A ``--config`` value that is a file is used as it is; otherwise it names a shipped
config relative to ``configs/`` or to the command's folder of it, with or without ``.yaml``:
``mae_tiny``, ``pretrain/mae_tiny``, ``configs/pretrain/mae_tiny.yaml``, ``bench/pretrain/rs_mae``.
"""

from __future__ import annotations

from pathlib import Path

import rsmae
from rsmae.errors import InputNotFoundError

__all__ = ["config_root", "expand_pretrain_configs", "resolve_config", "shipped_configs"]

SUFFIXES = (".yaml", ".yml")


def config_root() -> Path:
    """The shipped configs: ``rsmae/configs`` of an installed wheel, else the checkout's ``configs/``."""
    package = Path(rsmae.__file__).resolve().parent
    installed = package / "configs"
    return installed if installed.is_dir() else package.parent / "configs"


def shipped_configs(folder: str = "") -> list[str]:
    """Names of the shipped configs under ``folder`` (``pretrain``), relative to it, without ``.yaml``."""
    base = config_root() / folder
    return sorted(str(p.relative_to(base).with_suffix("")) for p in base.rglob("*") if p.suffix in SUFFIXES)


def resolve_config(value: str, folder: str) -> Path:
    """The file a ``--config`` value names: the path itself, else a shipped config.

    Args:
        value: A path, or a name relative to ``configs/`` or to ``configs/<folder>``.
        folder: The command's folder of configs (``pretrain``, ``landscape``), searched first.

    Raises:
        InputNotFoundError: neither a file nor a shipped name; lists the shipped names.
    """
    path = Path(value)
    if path.is_file():
        return path
    root = config_root()
    name = value.removeprefix("configs/")
    stems = [name] if name.endswith(SUFFIXES) else [name + s for s in SUFFIXES]
    for candidate in (root / folder / stem for stem in stems):
        if candidate.is_file():
            return candidate
    for candidate in (root / stem for stem in stems):
        if candidate.is_file():
            return candidate
    raise InputNotFoundError(
        f"--config {value}: no such file, and no shipped config of that name; shipped configs/{folder}: "
        f"{', '.join(shipped_configs(folder))} (other folders of configs/: name them as "
        f"{', '.join(sorted(p.name + '/...' for p in root.iterdir() if p.is_dir() and p.name != folder))})")


def expand_pretrain_configs(argv: list[str]) -> list[str]:
    """``argv`` with each pretraining ``--config`` name replaced by its file, its base before it.

    A name (not a path) of an override such as ``mae_tiny`` also brings the ``base.yaml`` of its
    folder, unless that base came earlier: ``--config mae_tiny`` is
    ``--config .../pretrain/base.yaml --config .../pretrain/mae_tiny.yaml``. Paths are left as they are.

    Raises:
        InputNotFoundError: a value is neither a file nor a shipped config.
    """
    out: list[str] = []
    seen: set[Path] = set()
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("--config", "-c") and i + 1 < len(argv):
            value, i = argv[i + 1], i + 2
        elif arg.startswith("--config="):
            value, i = arg.removeprefix("--config="), i + 1
        else:
            out.append(arg)
            i += 1
            continue
        path = resolve_config(value, "pretrain")
        seen.add(path.resolve())
        if Path(value).is_file():  # a path: as given
            out += [arg, value] if arg in ("--config", "-c") else [arg]
            continue
        base = path.with_name("base.yaml")
        if path != base and base.is_file() and base.resolve() not in seen:
            out += ["--config", str(base)]
            seen.add(base.resolve())
        out += ["--config", str(path)]
    return out
