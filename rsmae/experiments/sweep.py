"""The pretraining sweep of the loss-landscape study: batch size and optimizer at one sample budget.

:func:`plan` gives each run its optimizer steps (``samples / batch``), micro-batch, gradient
accumulation and warmup; :func:`expand` repeats each run per training seed (``seeds``);
:func:`run_config` gives a run its own recipe when it has a seed or keeps checkpoints along training
(``checkpoint_every_samples``); :func:`pretrain` runs one (``pipelines/pretrain.py``), resumed through
its ``run.json`` (:func:`rsmae.experiments.runs.resume_run`); :func:`snapshots` picks each run's
checkpoint nearest a common training loss; :func:`study` measures the landscapes of the models given
(:func:`rsmae.landscape.study.run_study`).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml

from rsmae.errors import RsmaeError
from rsmae.experiments.config import ROOT
from rsmae.experiments.runs import RunSpec, config_digest, resume_run, store_summary
from rsmae.files import atomic_write_text
from rsmae.landscape.config import LandscapeConfig
from rsmae.landscape.equal_loss import (
    Snapshot,
    checkpoints,
    choose_snapshot,
    common_level,
    loss_at,
    training_curve,
    with_checkpoints,
)
from rsmae.landscape.study import StudyResult, run_study
from rsmae.tasks.init import corpus_record

__all__ = ["expand", "landscape_model", "plan", "pretrain", "run_config", "run_folder", "snapshots", "study"]


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


def expand(cfg: dict[str, Any]) -> list[dict[str, Any]]:
    """The planned runs, one per training seed when ``seeds`` is given (``model`` and ``seed`` added)."""
    runs = plan(cfg)
    if not cfg.get("seeds"):
        return runs
    return [{**r, "name": f"{r['name']} s{s}", "model": r["name"], "seed": int(s)}
            for r in runs for s in cfg["seeds"]]


def run_config(run: dict[str, Any], cfg: dict[str, Any], out: Path) -> dict[str, Any]:
    """``cfg`` with the run's own recipe (its seed, checkpoints) when ``seeds`` or checkpoints are asked.

    The recipe goes to ``<out>/recipes/<run>.yaml``, rewritten only when its bytes change, so a finished
    run (whose record holds the recipe's digest) is reused.
    """
    every = cfg.get("checkpoint_every_samples")
    if not every and "seed" not in run:
        return cfg
    recipe = yaml.safe_load((ROOT / cfg["pretrain_config"]).read_text())
    if every:
        recipe = with_checkpoints(recipe, max(1, int(every) // int(run["batch"])))
    if "seed" in run:
        recipe["seed_everything"] = run["seed"]
    path = out / "recipes" / f"{run_folder(Path(), run).name}.yaml"
    text = f"# {cfg['pretrain_config']} for {run['name']} (benchmarks/landscape_sweep.py)\n" \
        + yaml.safe_dump(recipe, sort_keys=False)
    if not path.is_file() or path.read_text() != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, text)
    return {**cfg, "pretrain_config": str(path)}


def landscape_model(run: dict[str, Any], path: Path) -> dict[str, Any]:
    """The study's model entry of a run's checkpoint (training seeds of one run share its name)."""
    return {"name": run.get("model", run["name"]), "kind": "pretrain", "path": str(path),
            **({"seed": run["seed"]} if "seed" in run else {})}


def snapshots(cfg: dict[str, Any], runs: list[dict[str, Any]], out: Path) -> dict[str, Snapshot] | None:
    """Each run's checkpoint nearest the common training-loss level; ``None`` without intermediate ones."""
    window = int((cfg.get("equal_loss") or {}).get("window", 5))
    ckpts = {r["name"]: checkpoints(run_folder(out, r), final_step=r["steps"]) for r in runs}
    if any(len(c) < 2 for c in ckpts.values()):
        return None
    curves = {r["name"]: training_curve(run_folder(out, r)) for r in runs}
    finals = {r["name"]: loss_at(curves[r["name"]], r["steps"], window) for r in runs}
    level = common_level(finals, (cfg.get("equal_loss") or {}).get("level"))
    return {name: choose_snapshot(curves[name], ckpts[name], level, window=window) for name in curves}


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


def study(cfg: dict[str, Any], models: list[dict[str, Any]], out: Path) -> StudyResult:
    """The landscape study (``cfg["landscape"]``) of ``models`` (:func:`landscape_model`) into ``out``."""
    spec = LandscapeConfig.from_dict({**cfg["landscape"], "out": str(out), "models": models},
                                     where="landscape")
    return run_study(spec)
