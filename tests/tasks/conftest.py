"""Fixtures of the pretraining tests: a small CLI config on a real store, and callbacks its YAML names."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import yaml

from tests.conftest import EUROSAT
from tests.tasks.pretrain_helpers import shipped_config


@pytest.fixture(scope="session")
def pretrain_config() -> Callable[..., Path]:
    """``pretrain_config(tmp, store, method="mae", **options)``: a config file for ``pretrain.py fit``."""

    def make(tmp: Path, store: Path, method: str = "mae", *, steps: int = 4, every: int = 2,
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

    return make


# Callbacks named by class path in the pretraining tests' YAML configs ("tests.tasks.conftest.KillAt"); the
# DDP test's subprocesses import them with the checkout on PYTHONPATH.

class SimulatedKill(RuntimeError):
    """Stands in for a killed process."""


class KillAt(L.Callback):
    """Die at the start of the batch after global step ``step`` (its checkpoint is on disk)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            raise SimulatedKill(f"killed at step {self.step}")


class RecordBatches(L.Callback):
    """Write the tile indices each rank trained on and a checksum of its final weights."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir
        self.indices: list[int] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.indices.extend(int(i) for i in batch["index"])

    def on_train_end(self, trainer, pl_module) -> None:
        checksum = float(sum(p.detach().double().sum() for p in pl_module.parameters()))
        record = {"rank": trainer.global_rank, "world_size": trainer.world_size,
                  "indices": self.indices, "checksum": checksum}
        Path(self.out_dir, f"rank{trainer.global_rank}.json").write_text(json.dumps(record))
