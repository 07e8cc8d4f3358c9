"""Pretraining runs resumed through their ``run.json``, and the stores they read.

A run is a subprocess (``pipelines/pretrain.py``) writing into its own folder. Its ``run.json``
holds the run's fingerprint (what decides its weights: steps, config contents, corpus contents,
init bytes; never paths); a run whose ``run.json`` matches and whose output file exists is done, an
unfinished, unreadable or stale one is started again from scratch (:func:`resume_run`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rsmae.errors import RsmaeError, StoreError
from rsmae.experiments.config import ROOT
from rsmae.files import atomic_write_json, read_json
from rsmae.store import TileStore
from rsmae.tasks.report import read_metrics

__all__ = ["RunSpec", "config_digest", "is_complete", "resume_run", "run_command", "run_results",
           "store_summary"]

log = logging.getLogger(__name__)


def run_command(cmd: Sequence[Any], threads: int | None = None) -> float:
    """Run a command from the repository root (output to ours); its wall time in seconds.

    ``threads`` sets ``OMP_NUM_THREADS`` for it (default: torch's choice, one per core). On a
    machine shared with other jobs one thread wastes far less time than two spinning on one core.

    Raises:
        RsmaeError: the command failed (its output is above).
    """
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    log.info("$ %s", " ".join(str(c) for c in cmd))
    started = time.perf_counter()
    done = subprocess.run([str(c) for c in cmd], cwd=ROOT, env=env, check=False)
    if done.returncode:
        raise RsmaeError(f"{cmd[1]} failed with exit code {done.returncode}; see the output above")
    return time.perf_counter() - started


def is_complete(store: Path) -> bool:
    """Whether ``store`` is a finished tile store (missing or unreadable: not)."""
    try:
        return TileStore.open(store).complete
    except StoreError:
        return False


def store_summary(store: Path) -> dict[str, Any]:
    """Tiles, scenes, bands and sensor of a finished store."""
    opened = TileStore.open(store)
    attrs = opened.attrs
    return {"store": str(store), "images": int(attrs["tiles"]), "scenes": opened.n_scenes,
            "bands": [b["name"] for b in attrs["bands"]], "sensor": attrs["sensor"]}


def config_digest(paths: Sequence[str | Path]) -> str:
    """SHA-256 of the bytes of config files, in order: the same contents anywhere give the same key."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(hashlib.sha256(Path(path).read_bytes()).digest())
    return digest.hexdigest()


def run_results(folder: Path) -> dict[str, Any]:
    """Final training losses and the first and last probe of a run folder.

    Losses are means of the last 5 logged values; ``final_loss`` includes RC-MAE's consistency term,
    ``final_recon_loss`` is the reconstruction alone (comparable across methods).
    """
    curves = read_metrics(folder) if (folder / "metrics.csv").is_file() else {}  # none logged yet
    out: dict[str, Any] = {}
    for key, metric in (("final_loss", "train/loss"), ("final_recon_loss", "train/recon_loss")):
        values = [v for _, v in curves.get(metric, [])][-5:]
        out[key] = round(sum(values) / len(values), 4) if values else None
    history = read_json(folder / "probe.json")
    if history:
        out["probe_start"] = {k: v for k, v in history[0].items() if k.startswith(("step", "probe/"))}
        out["probe_end"] = {k: v for k, v in history[-1].items() if k.startswith(("step", "probe/"))}
    return out


@dataclass(frozen=True)
class RunSpec:
    """One resumable run: its folder, fingerprint, command, and the file a finished run leaves.

    ``record`` is what its ``run.json`` holds besides the fingerprint, wall time, threads and
    :func:`run_results`.
    """

    folder: Path
    fingerprint: Any
    command: list[Any]
    output: str
    record: dict[str, Any] = field(default_factory=dict)
    threads: int | None = None


def resume_run(spec: RunSpec) -> dict[str, Any]:
    """Run ``spec`` unless its ``run.json`` has the same fingerprint and its output exists; its record."""
    folder = spec.folder
    record = read_json(folder / "run.json")  # missing or unreadable: not done
    done = isinstance(record, dict) and record.get("fingerprint") == spec.fingerprint
    if done and (folder / spec.output).is_file():
        return {**record, **run_results(folder)}  # done; results re-read from its logs
    shutil.rmtree(folder, ignore_errors=True)  # unfinished or stale: start again
    seconds = run_command(spec.command, spec.threads)
    record = {**spec.record, "fingerprint": spec.fingerprint, "seconds": round(seconds, 1),
              "threads": spec.threads, **run_results(folder)}
    atomic_write_json(folder / "run.json", record, indent=1)
    return record
