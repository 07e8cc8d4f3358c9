"""The shipped pretraining configs as the CLI composes them (base plus an override); the tests' small
config built from them is the ``pretrain_config`` fixture of ``tests/tasks/conftest.py``."""

from __future__ import annotations

import yaml

from tests.conftest import ROOT

PRETRAIN = ROOT / "configs" / "pretrain"


def _merged(base: dict, override: dict) -> dict:
    """``override`` over ``base`` as LightningCLI merges two ``--config``: key by key, lists replaced."""
    out = dict(base)
    for key, value in override.items():
        both = isinstance(value, dict) and isinstance(base.get(key), dict)
        out[key] = _merged(base[key], value) if both else value
    return out


def shipped_config(name: str) -> dict:
    """``configs/pretrain/base.yaml`` with the override ``configs/pretrain/<name>.yaml``, unresolved."""
    base = yaml.safe_load((PRETRAIN / "base.yaml").read_text())
    return _merged(base, yaml.safe_load((PRETRAIN / f"{name}.yaml").read_text()))
