"""Shared by the pretraining tests: a small CLI config on a real store, a datamodule, a CPU trainer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import yaml
from conftest import EUROSAT, ROOT

from rsmae.data import TileDataModule

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


def _config(tmp: Path, store: Path, method: str = "mae", *, steps: int = 4, every: int = 2,
            batch_size: int = 8, probe: bool = False, callbacks: list[dict] | None = None,
            trainer_args: dict | None = None, workers: int = 0, **model: Any) -> Path:
    """The shipped tiny config with a smaller model and run, writing under ``tmp``.

    ``every``: steps between checkpoints, reconstruction images and validations (1 batch). The run
    folder is only set as ``trainer.default_root_dir``: the loggers and checkpoints follow it.
    """
    cfg = shipped_config(f"{method}_tiny")
    trainer = cfg["trainer"]
    trainer.update({"max_steps": steps, "log_every_n_steps": 1, "val_check_interval": every,
                    "check_val_every_n_epoch": 1, "limit_val_batches": 1, "enable_progress_bar": False,
                    "enable_model_summary": False, "default_root_dir": str(tmp), **(trainer_args or {})})
    if not probe:
        trainer["callbacks"] = [c for c in trainer["callbacks"] if "ProbeCallback" not in c["class_path"]]
    for cb in trainer["callbacks"]:
        args = cb.setdefault("init_args", {})
        name = cb["class_path"].rsplit(".", 1)[-1]
        if name == "ModelCheckpoint":
            args.update(every_n_train_steps=every)
        elif name == "ReconstructionImages":
            args.update(every_n_steps=every, num_images=4)
        elif name == "ProbeCallback":
            args.update(root=str(EUROSAT), every_n_epochs=1, linear_steps=50)
    trainer["callbacks"] += callbacks or []
    cfg["model"].update({"preset": "vit_test", "warmup_steps": 1, **model})
    cfg["data"].update(stores=[str(store)], batch_size=batch_size, num_workers=workers)
    tmp.mkdir(parents=True, exist_ok=True)
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _datamodule(store: Path, batch_size: int = 8) -> TileDataModule:
    return TileDataModule([str(store)], batch_size=batch_size, num_workers=0)


def _trainer(steps: int, **kw: Any) -> L.Trainer:
    return L.Trainer(accelerator="cpu", devices=1, max_steps=steps, logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0, **kw)
