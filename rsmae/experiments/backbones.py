"""The backbones of the transfer benchmark (issue 10): corpora, pretrainings, manifest.

Inits of one ViT (the recipe of ``configs/bench/pretrain/base.yaml``), each a ``backbone.safetensors``:

- ``random``: the encoder as created (seed 0), with the Sentinel-2 corpus's bands and statistics;
- ``natural_mae``: MAE on Tiny-ImageNet train images (R, G, B), as many images as the Sentinel-2
  corpus has tiles, N steps; adapt its patch kernels to a task's bands with ``load_backbone(bands=)``;
- ``natural_rs_mae``: MAE on Tiny-ImageNet for N/2 steps, then continued on Sentinel-2 for N/2
  (``init_backbone``; fresh decoder, optimiser and schedule): the same N steps in all;
- ``rs_mae`` / ``rs_rcmae``: MAE / RC-MAE on the Sentinel-2 corpus, N steps, with the EuroSAT probe
  curve (``probe.json``).

The Sentinel-2 corpus is every real Sentinel-2 L1C scene of the data folder except evaluation images:
``oscd_unlabelled/`` but ``saclay_w`` (18 scenes; :data:`NEAR_EVALUATION`: on the ground of EuroSAT
and OSCD images) and the eo-learn test patch (5 frames, via ``datasets/eolearn_s2l1c/prepare.py``);
never ``eurosat_ms_subset/`` nor ``oscd_subset/``. Every file a
pretraining store records is compared with every file under the evaluation folders
(:func:`rsmae.experiments.leaks.check_no_leaks`: resolved path, then bytes) before any pretraining;
one match stops the build, naming the file.

Resumable: a finished store, or a run whose ``run.json`` matches (:func:`rsmae.experiments.runs.resume_run`),
is skipped. Tiling and pretraining run as subprocesses (``pipelines/tile.py``, ``pipelines/pretrain.py``).
Writes ``OUT/backbones.json``: ``{init: {path, sha256, steps, corpus, images, scenes, ...}}``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

import rsmae.experiments.runs as runs
from rsmae.data import ShardDataset
from rsmae.data.dataset import describe_data
from rsmae.errors import WeightsError
from rsmae.experiments.config import CONFIGS, DATA
from rsmae.experiments.leaks import check_no_leaks
from rsmae.experiments.runs import RunSpec, config_digest, is_complete, resume_run, store_summary
from rsmae.files import atomic_write_json
from rsmae.models import create_encoder, save_backbone
from rsmae.models.registry import sha256_file
from rsmae.models.weights import BackboneMeta, read_backbone_meta
from rsmae.store import TileStore
from rsmae.tasks.init import corpus_record

__all__ = ["EVAL_FOLDERS", "INITS", "NEAR_EVALUATION", "STORES", "Run", "build_backbones",
           "build_natural_store", "build_rs_store", "load_manifest", "manifest_entries", "plan_runs",
           "pretrain", "random_backbone", "save_random_backbone"]

log = logging.getLogger(__name__)

EVAL_FOLDERS = ("eurosat_ms_subset", "oscd_subset")
# corpus scenes on the ground of an evaluation image (benchmarks/footprint_leaks.py): left out
NEAR_EVALUATION = {"saclay_w": "holds EuroSAT Residential_2285, adjoins saclay_e (granule T31UDP, one date)"}
STORES = {"s2_l1c": "Sentinel-2 L1C: oscd_unlabelled but saclay_w + eo-learn test patch",
          "tinyimagenet": "Tiny-ImageNet train (R, G, B)"}
INITS = {"random": (), "natural_mae": ("natural_mae",), "natural_rs_mae": ("natural_half", "natural_to_rs"),
         "rs_mae": ("rs_mae",), "rs_rcmae": ("rs_rcmae",)}


@dataclass(frozen=True)
class Run:
    """One pretraining: run folder ``OUT/<name>``, override config, store, steps, optional start."""

    name: str
    override: str
    store: str
    steps: int
    init_from: str | None = None
    probe: bool = False


def plan_runs(steps: int) -> list[Run]:
    """The pretrainings for ``steps`` = N, in the order they must run."""
    half = steps // 2
    return [Run("rs_mae", "rs_mae.yaml", "s2_l1c", steps, probe=True),
            Run("rs_rcmae", "rs_rcmae.yaml", "s2_l1c", steps, probe=True),
            Run("natural_mae", "natural_mae.yaml", "tinyimagenet", steps),
            Run("natural_half", "natural_mae.yaml", "tinyimagenet", half),
            Run("natural_to_rs", "natural_to_rs.yaml", "s2_l1c", steps - half, "natural_half", probe=True)]


# ---------------------------------------------------------------- corpora
def build_rs_store(out: Path, data: Path = DATA, workers: int = 2) -> Path:
    """The Sentinel-2 L1C pretraining store ``OUT/stores/s2_l1c.zarr`` (64-px tiles), unless finished."""
    store = out / "stores" / "s2_l1c.zarr"
    if is_complete(store):
        return store
    eolearn = out / "prepared" / "eolearn"
    py, call = sys.executable, runs.run_command
    call([py, "datasets/eolearn_s2l1c/prepare.py", data / "eolearn_s2l1c_testpatch", "--out", eolearn])
    cities = sorted(p for p in (data / "oscd_unlabelled").iterdir()
                    if p.is_dir() and p.name not in NEAR_EVALUATION)
    call([py, "pipelines/tile.py", *cities, eolearn, "--sensor", "s2-l1c",
          "--band-order", "eolearn-l1c", "--tile-size", "64", "--workers", str(workers), "--out", store])
    return store


def build_natural_store(out: Path, images: int, data: Path = DATA) -> Path:
    """``OUT/stores/tinyimagenet.zarr``: ``images`` train images, one 64-px tile each.

    A finished store of another image count is rebuilt.
    """
    store = out / "stores" / "tinyimagenet.zarr"
    if is_complete(store) and TileStore.open(store).attrs["tiles"] == images:
        return store
    prepared = out / "prepared" / "tinyimagenet"
    shutil.rmtree(prepared, ignore_errors=True)  # a folder left by another --limit would add images
    py, call = sys.executable, runs.run_command
    call([py, "datasets/tinyimagenet/prepare.py", data / "tinyimagenet64_subset", "--out", prepared,
          "--limit", str(images)])
    call([py, "pipelines/tile.py", prepared, "--sensor", "rgb", "--tile-size", "64", "--nodata", "nan",
          "--overwrite", "--out", store])
    return store


# ---------------------------------------------------------------- pretraining
def _recipe() -> dict[str, Any]:
    return yaml.safe_load((CONFIGS / "base.yaml").read_text())


def random_backbone(out: Path, rs_store: Path, seed: int = 0) -> Path:
    """``OUT/random/backbone.safetensors``: the recipe's encoder as created, with the corpus's bands.

    Kept while its metadata (architecture, bands, statistics) is what the recipe and store give now.
    """
    path = out / "random" / "backbone.safetensors"
    model = _recipe()["model"]
    info = describe_data(ShardDataset([str(rs_store)]))
    meta = BackboneMeta(preset=model["preset"], img_size=info["tile_size"], patch_size=model["patch_size"],
                        in_chans=len(info["bands"]), bands=info["bands"], sensor=info["sensor"],
                        mean=info["mean"], std=info["std"], gsd=info["gsd"],
                        source=f"random init (create_encoder, torch seed {seed}), statistics of "
                        f"{rs_store.name}")
    try:
        saved = read_backbone_meta(path)
        if dataclasses.replace(meta, format_version=saved.format_version) == saved:
            return path
    except WeightsError:  # missing or unreadable
        pass
    return save_random_backbone(meta, path, seed)


def save_random_backbone(meta: BackboneMeta, path: Path, seed: int = 0) -> Path:
    """The encoder ``meta`` describes, freshly initialised with torch seed ``seed``, saved at ``path``."""
    torch.manual_seed(seed)
    encoder = create_encoder(meta.preset, in_chans=meta.in_chans, img_size=meta.img_size,
                             patch_size=meta.patch_size, **meta.encoder_kwargs)
    return save_backbone(encoder, path, meta)


def _fingerprint(run: Run, store: Path, init: Path | None) -> dict[str, Any]:
    """What decides a pretraining's backbone: steps, config contents, corpus contents, init bytes."""
    return {"steps": run.steps, "configs": config_digest([CONFIGS / "base.yaml", CONFIGS / run.override]),
            "corpus": corpus_record([store]), "init_sha256": sha256_file(init) if init else None}


def pretrain(run: Run, stores: dict[str, Path], out: Path, data: Path = DATA,
             threads: int | None = None) -> dict[str, Any]:
    """Run one pretraining (unless its ``run.json`` has the same fingerprint) and return its record."""
    folder, init = out / run.name, out / run.init_from / "backbone.safetensors" if run.init_from else None
    cmd = [sys.executable, "pipelines/pretrain.py", "fit", "--config", CONFIGS / "base.yaml",
           "--config", CONFIGS / run.override, "--trainer.max_steps", str(run.steps),
           "--trainer.default_root_dir", folder, "--trainer.logger.init_args.save_dir", folder,
           "--data.stores", json.dumps([str(stores[run.store])])]
    if run.probe:  # ProbeCallback is the last callback of the override
        cmd += ["--trainer.callbacks.init_args.root", data / "eurosat_ms_subset"]
    if init:
        cmd += ["--model.init_backbone", init]
    record = {"steps": run.steps, **store_summary(stores[run.store]), "init_backbone": init and str(init)}
    wanted = _fingerprint(run, stores[run.store], init)
    return resume_run(RunSpec(folder, wanted, cmd, "backbone.safetensors", record, threads))


# ---------------------------------------------------------------- manifest
_STAGE_KEYS = ("store", "steps", "images", "scenes", "seconds", "threads", "final_loss", "final_recon_loss")


def _init_entry(out: Path, names: Sequence[str], records: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Manifest entry of a pretrained init: its last run's backbone, its runs as stages."""
    stages = [{"run": r, **{k: records[r].get(k) for k in _STAGE_KEYS}} for r in names]
    last = records[names[-1]]
    path = out / names[-1] / "backbone.safetensors"
    return {"path": str(path), "sha256": sha256_file(path), "steps": sum(s["steps"] for s in stages),
            "corpus": " -> ".join(STORES[Path(s["store"]).stem] for s in stages),
            "images": sum(s["images"] for s in stages), "scenes": sum(s["scenes"] for s in stages),
            "bands": last["bands"], "sensor": last["sensor"], "probe_start": last.get("probe_start"),
            "probe_end": last.get("probe_end"), "stages": stages}


def manifest_entries(out: Path, stores: dict[str, Path], records: dict[str, dict[str, Any]],
                     leak_check: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``{init: {path, sha256, steps, corpus, images, scenes, bands, sensor, ...}}`` of the five inits."""
    rs = store_summary(stores["s2_l1c"])
    path = out / "random" / "backbone.safetensors"
    manifest = {"random": {"path": str(path), "sha256": sha256_file(path), "steps": 0,
                           "corpus": f"none (statistics of {STORES['s2_l1c']})", "images": 0, "scenes": 0,
                           "bands": rs["bands"], "sensor": rs["sensor"]}}
    manifest.update({init: _init_entry(out, names, records) for init, names in INITS.items() if names})
    for entry in manifest.values():
        entry["leak_check"] = leak_check
    return manifest


def build_backbones(out: str | Path = "runs/transfer", steps: int = 1500, data: str | Path = DATA,
                    workers: int = 2, threads: int | None = None) -> dict[str, dict[str, Any]]:
    """Build what is missing (stores, leak check, random init, pretrainings) and write the manifest.

    Args:
        out: Output folder (stores, runs, ``backbones.json``).
        steps: N, the pretraining steps of every pretrained init.
        data: The shared data folder (``oscd_unlabelled/``, ``eolearn_s2l1c_testpatch/``,
            ``tinyimagenet64_subset/``, and the evaluation folders ``eurosat_ms_subset/``, ``oscd_subset/``).
        workers: Tiling processes.
        threads: ``OMP_NUM_THREADS`` of the pretraining processes (default: torch's choice).

    Returns:
        The manifest, also written to ``OUT/backbones.json``.

    Raises:
        StoreError: a pretraining store holds an evaluation image.
        RsmaeError: a subprocess failed.
    """
    out, data = Path(out).resolve(), Path(data).resolve()
    rs = build_rs_store(out, data, workers)
    images = min(store_summary(rs)["images"], 3030)  # the Tiny-ImageNet subset has 3,030 train images
    stores = {"s2_l1c": rs, "tinyimagenet": build_natural_store(out, images, data)}
    leak_check = check_no_leaks(list(stores.values()), [data / f for f in EVAL_FOLDERS])
    log.info("leak check: %d scene files, none under %s", leak_check["store_files"], ", ".join(EVAL_FOLDERS))
    random_backbone(out, rs)
    records = {run.name: pretrain(run, stores, out, data, threads) for run in plan_runs(steps)}
    manifest = manifest_entries(out, stores, records, leak_check)
    atomic_write_json(out / "backbones.json", manifest, indent=1)
    return manifest


def load_manifest(out: str | Path = "runs/transfer") -> dict[str, dict[str, Any]]:
    """The manifest written by :func:`build_backbones` (raises ``FileNotFoundError`` naming it)."""
    path = Path(out) / "backbones.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no manifest; run python benchmarks/transfer_backbones.py "
                                f"--out {out}")
    return json.loads(path.read_text())
