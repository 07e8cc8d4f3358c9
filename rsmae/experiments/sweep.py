"""The pretraining sweep of the loss-landscape study: batch size and optimizer at one sample budget.

:func:`plan` gives each run its optimizer steps (``samples / batch``), micro-batch, gradient
accumulation and warmup; :func:`pretrain` runs one (``pipelines/pretrain.py``), resumed through its
``run.json`` (:func:`rsmae.experiments.runs.resume_run`); :func:`study` measures the landscape of every
run's final checkpoint (:func:`rsmae.landscape.study.run_study`).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from rsmae.errors import RsmaeError
from rsmae.experiments.config import ROOT
from rsmae.experiments.runs import RunSpec, config_digest, resume_run, store_summary
from rsmae.landscape.config import LandscapeConfig
from rsmae.landscape.study import StudyResult, run_study
from rsmae.tasks.init import corpus_record

__all__ = ["plan", "pretrain", "run_folder", "study"]


def plan(cfg: dict[str, Any]) -> list[dict[str, Any]]:
    """Each run's optimizer steps, micro-batch, accumulation and warmup from the sample budget."""
    runs = []
    for run in cfg["runs"]:
        micro = min(int(run["batch"]), int(cfg["micro_batch"]))
        if run["batch"] % micro:
            raise RsmaeError(f"run {run['name']!r}: batch {run['batch']} is not a multiple of "
                             f"micro_batch {micro}")
        steps = max(1, int(cfg["samples"]) // int(run["batch"]))
        runs.append({**run, "micro_batch": micro, "accumulate": run["batch"] // micro, "steps": steps,
                     "warmup": max(1, round(float(cfg["warmup_fraction"]) * steps))})
    return runs


def run_folder(out: Path, run: dict[str, Any]) -> Path:
    """The folder of a run: its name in lower case, spaces as underscores."""
    return out / run["name"].lower().replace(" ", "_")


def pretrain(run: dict[str, Any], cfg: dict[str, Any], out: Path) -> dict[str, Any]:
    """Pretrain one run (unless its ``run.json`` matches its settings); return its record."""
    folder = run_folder(out, run)
    wanted = {"run": run, "config_sha256": config_digest([ROOT / cfg["pretrain_config"]]),
              "corpus": corpus_record([ROOT / cfg["store"]])}
    cmd = [sys.executable, "pipelines/pretrain.py", "fit", "--config", cfg["pretrain_config"],
           "--trainer.max_steps", run["steps"], "--trainer.accumulate_grad_batches", run["accumulate"],
           "--trainer.default_root_dir", folder, "--trainer.logger.init_args.save_dir", folder,
           "--data.stores", json.dumps([cfg["store"]]), "--data.batch_size", run["micro_batch"],
           "--model.optimizer", run["optimizer"], "--model.base_lr", run["base_lr"],
           "--model.weight_decay", run["weight_decay"], "--model.warmup_steps", run["warmup"]]
    record = {"run": run, "config": cfg["pretrain_config"], **store_summary(ROOT / cfg["store"])}
    return resume_run(RunSpec(folder, wanted, cmd, "checkpoints/last.ckpt", record, cfg.get("threads")))


def study(cfg: dict[str, Any], runs: list[dict[str, Any]], out: Path) -> StudyResult:
    """The landscape study of the sweep's checkpoints."""
    models = [{"name": r["name"], "kind": "pretrain",
               "path": str(run_folder(out, r) / "checkpoints" / "last.ckpt")} for r in runs]
    spec = LandscapeConfig.from_dict({**cfg["landscape"], "out": str(out / "study"), "models": models},
                                     where="landscape")
    return run_study(spec)
