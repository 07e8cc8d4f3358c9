"""Build the backbones of the transfer benchmark (issue 10): corpora, pretrainings, manifest.

Inits of one ViT (the recipe of ``configs/bench/pretrain/base.yaml``), each a ``backbone.safetensors``:

- ``random``: the encoder as created (seed 0), with the Sentinel-2 corpus's bands and statistics;
- ``natural_mae``: MAE on Tiny-ImageNet train images (R, G, B), as many images as the Sentinel-2
  corpus has tiles, N steps; adapt its patch kernels to a task's bands with ``load_backbone(bands=)``;
- ``natural_rs_mae``: MAE on Tiny-ImageNet for N/2 steps, then continued on Sentinel-2 for N/2
  (``init_backbone``; fresh decoder, optimiser and schedule): the same N steps in all;
- ``rs_mae`` / ``rs_rcmae``: MAE / RC-MAE on the Sentinel-2 corpus, N steps, with the EuroSAT probe
  curve (``probe.json``).

The Sentinel-2 corpus is every real Sentinel-2 L1C scene of the data folder except evaluation images:
``oscd_unlabelled/`` (20 scenes) and the eo-learn test patch (5 frames, via
``datasets/eolearn_s2l1c/prepare.py``); never ``eurosat_ms_subset/`` nor ``oscd_subset/``. Every file a
pretraining store records is compared with every file under the evaluation folders
(``corpus_leaks.py`` over :func:`rsmae.datasets.check_no_eval_images`: resolved path, then bytes)
before any pretraining; one match stops the build, naming the file.

Resumable: a finished store, or a run whose ``run.json`` matches (steps, config file contents, store
contents, init sha256; never paths), is skipped; an unfinished, unreadable or stale run is started again
from scratch. Tiling and pretraining run as subprocesses (``pipelines/tile.py``, ``pipelines/pretrain.py``).
Writes ``OUT/backbones.json``: ``{init: {path, sha256, steps, corpus, images, scenes, ...}}``.

Example (N = 1500: 5 pretrainings, 52 minutes measured with --threads 1 on a busy shared 2-core CPU;
an idle one should need about 3-5 minutes per pretraining with the default threads)::

    python benchmarks/transfer_backbones.py --out runs/transfer --steps 1500
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from rsmae.data import ShardDataset
from rsmae.data.dataset import describe_data
from rsmae.errors import RsmaeError, StoreError, WeightsError
from rsmae.evaluation.speed import cpu_name
from rsmae.files import atomic_write_json, read_json
from rsmae.models import create_encoder, save_backbone
from rsmae.models.registry import sha256_file
from rsmae.models.weights import BackboneMeta, read_backbone_meta
from rsmae.store import TileStore
from rsmae.tasks.init import corpus_record
from rsmae.tasks.report import read_metrics

sys.path.insert(0, str(Path(__file__).resolve().parent))
from corpus_leaks import check_no_leaks  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
CONFIGS = ROOT / "configs" / "bench" / "pretrain"
EVAL_FOLDERS = ("eurosat_ms_subset", "oscd_subset")
STORES = {"s2_l1c": "Sentinel-2 L1C: oscd_unlabelled + eo-learn test patch",
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


def _call(cmd: Sequence[Any], threads: int | None = None) -> float:
    """Run a command from the repository root (output to ours); its wall time in seconds.

    ``threads`` sets ``OMP_NUM_THREADS`` for it (default: torch's choice, one per core). On a
    machine shared with other jobs one thread wastes far less time than two spinning on one core.
    """
    env = {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}
    print("$", " ".join(str(c) for c in cmd), flush=True)
    started = time.perf_counter()
    done = subprocess.run([str(c) for c in cmd], cwd=ROOT, env=env, check=False)
    if done.returncode:
        raise RsmaeError(f"{cmd[1]} failed with exit code {done.returncode}; see the output above")
    return time.perf_counter() - started


def _complete(store: Path) -> bool:
    try:
        return TileStore.open(store).complete
    except StoreError:
        return False


# ---------------------------------------------------------------- corpora
def build_rs_store(out: Path, data: Path = DATA, workers: int = 2) -> Path:
    """The Sentinel-2 L1C pretraining store ``OUT/stores/s2_l1c.zarr`` (64-px tiles), unless finished."""
    store = out / "stores" / "s2_l1c.zarr"
    if _complete(store):
        return store
    eolearn = out / "prepared" / "eolearn"
    py = sys.executable
    _call([py, "datasets/eolearn_s2l1c/prepare.py", data / "eolearn_s2l1c_testpatch", "--out", eolearn])
    _call([py, "pipelines/tile.py", data / "oscd_unlabelled", eolearn, "--sensor", "s2-l1c",
           "--band-order", "eolearn-l1c", "--tile-size", "64", "--workers", str(workers), "--out", store])
    return store


def build_natural_store(out: Path, images: int, data: Path = DATA) -> Path:
    """``OUT/stores/tinyimagenet.zarr``: ``images`` train images, one 64-px tile each.

    A finished store of another image count is rebuilt.
    """
    store = out / "stores" / "tinyimagenet.zarr"
    if _complete(store) and TileStore.open(store).attrs["tiles"] == images:
        return store
    prepared = out / "prepared" / "tinyimagenet"
    shutil.rmtree(prepared, ignore_errors=True)  # a folder left by another --limit would add images
    py = sys.executable
    _call([py, "datasets/tinyimagenet/prepare.py", data / "tinyimagenet64_subset", "--out", prepared,
           "--limit", str(images)])
    _call([py, "pipelines/tile.py", prepared, "--sensor", "rgb", "--tile-size", "64", "--nodata", "nan",
           "--overwrite", "--out", store])
    return store


def store_summary(store: Path) -> dict[str, Any]:
    """Tiles, scenes, bands and sensor of a finished store."""
    opened = TileStore.open(store)
    attrs = opened.attrs
    return {"store": str(store), "images": int(attrs["tiles"]), "scenes": opened.n_scenes,
            "bands": [b["name"] for b in attrs["bands"]], "sensor": attrs["sensor"]}


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
    torch.manual_seed(seed)
    encoder = create_encoder(model["preset"], in_chans=len(info["bands"]), img_size=info["tile_size"],
                             patch_size=model["patch_size"])
    return save_backbone(encoder, path, meta)


def config_digest(paths: Sequence[str | Path]) -> str:
    """SHA-256 of the bytes of config files, in order: the same contents anywhere give the same key."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(hashlib.sha256(Path(path).read_bytes()).digest())
    return digest.hexdigest()


def _fingerprint(run: Run, store: Path, init: Path | None) -> dict[str, Any]:
    """What decides a pretraining's backbone: steps, config contents, corpus contents, init bytes."""
    return {"steps": run.steps, "configs": config_digest([CONFIGS / "base.yaml", CONFIGS / run.override]),
            "corpus": corpus_record([store]), "init_sha256": sha256_file(init) if init else None}


def pretrain(run: Run, stores: dict[str, Path], out: Path, data: Path = DATA,
             threads: int | None = None) -> dict[str, Any]:
    """Run one pretraining (unless its ``run.json`` has the same fingerprint) and return its record."""
    folder, init = out / run.name, out / run.init_from / "backbone.safetensors" if run.init_from else None
    wanted = _fingerprint(run, stores[run.store], init)
    record = read_json(folder / "run.json")  # missing or unreadable: not done
    done = isinstance(record, dict) and record.get("fingerprint") == wanted
    if done and (folder / "backbone.safetensors").is_file():
        return {**record, **run_results(folder)}  # done; results re-read from its logs
    shutil.rmtree(folder, ignore_errors=True)  # unfinished or stale: start again
    cmd = [sys.executable, "pipelines/pretrain.py", "fit", "--config", CONFIGS / "base.yaml",
           "--config", CONFIGS / run.override, "--trainer.max_steps", str(run.steps),
           "--trainer.default_root_dir", folder, "--trainer.logger.init_args.save_dir", folder,
           "--data.stores", json.dumps([str(stores[run.store])])]
    if run.probe:  # ProbeCallback is the last callback of the override
        cmd += ["--trainer.callbacks.init_args.root", data / "eurosat_ms_subset"]
    if init:
        cmd += ["--model.init_backbone", init]
    seconds = _call(cmd, threads)
    record = {"steps": run.steps, **store_summary(stores[run.store]), "init_backbone": init and str(init),
              "fingerprint": wanted, "seconds": round(seconds, 1), "threads": threads, **run_results(folder)}
    atomic_write_json(folder / "run.json", record, indent=1)
    return record


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


# ---------------------------------------------------------------- manifest
_STAGE_KEYS = ("store", "steps", "images", "scenes", "seconds", "threads", "final_loss", "final_recon_loss")


def _init_entry(out: Path, runs: Sequence[str], records: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Manifest entry of a pretrained init: its last run's backbone, its runs as stages."""
    stages = [{"run": r, **{k: records[r].get(k) for k in _STAGE_KEYS}} for r in runs]
    last = records[runs[-1]]
    path = out / runs[-1] / "backbone.safetensors"
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
    manifest.update({init: _init_entry(out, runs, records) for init, runs in INITS.items() if runs})
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
    print(f"leak check: {leak_check['store_files']} scene files, none under {', '.join(EVAL_FOLDERS)}",
          flush=True)
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


def summary_rows(manifest: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per init: counts, minutes, final losses, EuroSAT probe at the start and end, sha256."""
    rows = []
    for init, e in manifest.items():
        stages = e.get("stages", [])
        last = stages[-1] if stages else {}
        row = {"init": init, **{k: e[k] for k in ("steps", "corpus", "images", "scenes")},
               "minutes": round(sum(s["seconds"] for s in stages) / 60, 1) if stages else None,
               "final_loss": last.get("final_loss"), "final_recon_loss": last.get("final_recon_loss")}
        for when in ("start", "end"):
            probe = e.get(f"probe_{when}") or {}
            row.update({f"{k}_{when}": probe.get(f"probe/{k}_acc") for k in ("knn", "linear")})
        rows.append({**row, "sha256": e["sha256"]})
    return rows


def table(manifest: dict[str, dict[str, Any]]) -> str:
    """Markdown table of :func:`summary_rows`."""
    def num(value: float | None, fmt: str = ".3f") -> str:
        return "-" if value is None else format(value, fmt)

    lines = ["| init | steps | corpus | images | scenes | minutes | final loss (recon) | kNN: step 0, end "
             "| linear: step 0, end |", "|---|---|---|---|---|---|---|---|---|"]
    for r in summary_rows(manifest):
        cells = [r["init"], r["steps"], r["corpus"], r["images"], r["scenes"], num(r["minutes"], ".1f"),
                 f"{num(r['final_loss'], '.4f')} ({num(r['final_recon_loss'], '.4f')})",
                 *(f"{num(r[k + '_start'])}, {num(r[k + '_end'])}" for k in ("knn", "linear"))]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def write_results(manifest: dict[str, dict[str, Any]], folder: Path, command: str) -> Path:
    """``transfer_backbones.md`` and ``.csv`` in ``folder``: machine, command, the table."""
    folder.mkdir(parents=True, exist_ok=True)
    cpu = cpu_name()
    threads = sorted({str(s.get("threads") or "torch default") for e in manifest.values()
                      for s in e.get("stages", [])})
    machine = (f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}; pretraining threads: "
               f"{', '.join(threads)}; load average now {os.getloadavg()[0]:.1f}")
    rows = summary_rows(manifest)
    with open(folder / "transfer_backbones.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    path = folder / "transfer_backbones.md"
    path.write_text(f"# Transfer-benchmark backbones\n\nMachine: {machine}\n\nCommand: `{command}`\n\n"
                    f"{table(manifest)}\n\nkNN / linear: EuroSAT probe (216 train / 54 test) of the "
                    "initial and final weights of the last stage (probe.json); minutes: wall time of the "
                    "pretraining subprocesses.\n")
    return path


def main(argv: list[str] | None = None) -> int:
    """Command line; exit code 2 on an rsmae error (a leak, a failed subprocess)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("runs/transfer"))
    p.add_argument("--steps", type=int, default=1500, help="N: pretraining steps of every init")
    p.add_argument("--data", type=Path, default=DATA, help="the shared data folder")
    p.add_argument("--workers", type=int, default=2, help="tiling processes")
    p.add_argument("--threads", type=int, default=None,
                   help="OMP_NUM_THREADS of the pretrainings (1 on a busy shared machine)")
    p.add_argument("--results", type=Path, default=None, help="also write transfer_backbones.md there")
    args = p.parse_args(argv)
    if args.steps < 2:
        print(f"error: --steps {args.steps}: need at least 2 (N/2 + N/2 for the continued init)",
              file=sys.stderr)
        return 2
    try:
        manifest = build_backbones(args.out, args.steps, args.data, args.workers, args.threads)
    except RsmaeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(table(manifest))
    if args.results:
        given = argv if argv is not None else sys.argv[1:]
        command = " ".join(["python benchmarks/transfer_backbones.py", *given])
        print(f"wrote {write_results(manifest, args.results, command)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
