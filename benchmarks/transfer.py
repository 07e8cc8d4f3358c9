"""Transfer benchmark (issue 10): inits x protocols x label fractions x seeds -> tables and plots.

Builds the backbones it needs (``transfer_backbones.py``: stores, pretrainings, manifest), then runs
every cell of the grid — one ``rsmae.evaluation.classification.evaluate_classification`` call — and
writes one result file per cell, so cells run anywhere (local processes, the Dask cluster the tiler
uses, SLURM array tasks) and a killed run resumes where it stopped. Tables and plots are assembled
from whatever cells are done (``transfer_tables.py``).

Examples::

    python benchmarks/transfer.py --config configs/bench/cpu-small.yaml
    python benchmarks/transfer.py --config configs/bench/cpu-small.yaml --workers 2
    python benchmarks/transfer.py --config configs/bench/gpu-full.yaml --dask tcp://scheduler:8786
    # SLURM: sbatch --array=0-$(($(python benchmarks/transfer.py --config C --count) - 1)) ...
    python benchmarks/transfer.py --config C --cell-index $SLURM_ARRAY_TASK_ID
    python benchmarks/transfer.py --config C --tables-only
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import yaml
from tqdm import tqdm

from rsmae.files import atomic_write_json, read_json

sys.path.insert(0, str(Path(__file__).resolve().parent))
from transfer_backbones import build_backbones, load_manifest  # noqa: E402
from transfer_tables import cell_path, fingerprint, is_done, write_tables  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


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


def plan_cells(config: dict[str, Any], inits: Iterable[str]) -> list[dict[str, Any]]:
    """Every cell of the grid, in a stable order (the SLURM array index is a position here).

    A grid block crosses its protocols with ``fractions`` (scene classification) or ``datasets``
    (change detection), every init (or the block's own ``inits``) and every seed. Seeds come
    outermost, so a grid stopped early has every init and protocol at the same number of seeds.
    """
    cells = []
    for block in config["grid"]:
        axis = "fraction" if "fractions" in block else "dataset"
        for seed in config["seeds"]:
            for value in block[f"{axis}s"]:
                for protocol in block["protocols"]:
                    for init in block.get("inits", inits):
                        cell = {"init": init, "protocol": protocol, axis: str(value), "seed": int(seed)}
                        cells.append(cell)
    return cells


def _classification(cell: dict[str, Any], backbone: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    from rsmae.evaluation.classification import evaluate_classification

    data = config["data"]
    return evaluate_classification(
        backbone["path"], cell["protocol"], data["train_root"], data["test_root"],
        fraction=cell["fraction"], seed=cell["seed"], cache_dir=config["cache_dir"],
        sensor=data.get("sensor", "s2-l1c"), layout=data.get("layout", "eurosat"), progress=False,
        **config.get("finetune", {}))  # the grid has one bar for all cells


def _change(cell: dict[str, Any], backbone: dict[str, Any], config: dict[str, Any]) -> dict[str, Any]:
    from rsmae.evaluation.change import evaluate_change

    data = config["datasets"][cell["dataset"]]
    out = cell_path(config["cells_dir"], cell).with_suffix("")
    start = time.perf_counter()
    result = evaluate_change(
        backbone.get("path"), "full" if cell["protocol"] == "scratch" else cell["protocol"],
        test_root=ROOT / data["test_root"], train_root=ROOT / data.get("train_root", data["test_root"]),
        dataset=data.get("task", cell["dataset"]), seed=cell["seed"], out_dir=out,
        model=backbone.get("model", "siamese-vit"),
        **{"progress": False, **config.get("change", {}), **data.get("settings", {})})
    result["scenes"] = [{k: v for k, v in scene.items() if not isinstance(v, (list, dict))}
                        for scene in result["scenes"]]
    result["wall_s"] = time.perf_counter() - start
    return result


def run_cell(cell: dict[str, Any], backbone: dict[str, Any], config: dict[str, Any], threads: int = 0
             ) -> dict[str, Any]:
    """Evaluate one cell and write its result file atomically; return the result."""
    import torch

    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # one bar for the grid, not one per cell
    warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode")  # frozen parts, on purpose
    if threads:
        torch.set_num_threads(threads)
    key = fingerprint(cell, backbone, config)  # first: a failing import costs nothing, not a whole cell
    evaluate = _change if config.get("task") == "change" else _classification
    result = evaluate(cell, backbone, config)
    result.update(cell, fingerprint=key, threads=torch.get_num_threads())
    atomic_write_json(cell_path(config["cells_dir"], cell), result, indent=1, default=str)
    return result


def _local(jobs: list[tuple], workers: int) -> Iterable[Any]:
    if workers <= 1:
        for job in jobs:
            yield run_cell(*job)
        return
    threads = max(1, (os.cpu_count() or 1) // workers)
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        futures = [pool.submit(run_cell, *job, threads) for job in jobs]
        try:
            for future in as_completed(futures):
                yield future.result()
        except BaseException:  # a failed cell stops the grid now, not after every other cell ran
            pool.shutdown(wait=False, cancel_futures=True)
            raise


def _dask(jobs: list[tuple], address: str) -> Iterable[Any]:
    from distributed import Client
    from distributed import as_completed as dask_completed

    with Client(address) as client:
        futures = [client.submit(run_cell, *job, pure=False) for job in jobs]
        for future in dask_completed(futures):
            yield future.result()


def run_grid(config: dict[str, Any], cells: list[dict[str, Any]], manifest: dict[str, dict[str, Any]], *,
             workers: int = 1, dask: str | None = None, log: Callable[[str], None] = print) -> int:
    """Run the cells not done yet, with a progress bar; return how many ran."""
    jobs, done = [], 0
    for cell in cells:
        backbone = manifest[cell["init"]]
        if is_done(cell_path(config["cells_dir"], cell), fingerprint(cell, backbone, config)):
            done += 1
        else:
            jobs.append((cell, backbone, config))
    log(f"{len(cells)} cells: {done} done, {len(jobs)} to run")
    results = _dask(jobs, dask) if dask else _local(jobs, workers)
    bar = tqdm(total=len(cells), initial=done, unit="cell", desc="transfer", disable=None)
    for result in results:
        where = result.get("fraction") or result.get("dataset")
        score = f"f1 {result['f1']:.3f}" if "f1" in result else f"accuracy {result['accuracy']:.3f}"
        bar.set_postfix_str(f"{result['init']} {result['protocol']} {where} s{result['seed']}: {score}")
        bar.update(1)
    bar.close()
    return len(jobs)


def _newest(pattern: str) -> Path:
    glob = any(c in pattern for c in "*?[")
    matches = sorted(ROOT.glob(pattern), key=lambda p: p.stat().st_mtime) if glob else [ROOT / pattern]
    if not matches or not matches[-1].is_file():
        raise FileNotFoundError(f"{pattern}: no backbone file; pretrain first (pipelines/pretrain.py)")
    return matches[-1]


def manifest_from_paths(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Manifest of backbones given as paths (``backbones: {init: path or glob}``, newest match).

    An init ``random`` without a path is the first backbone's architecture, bands and statistics
    with freshly initialised weights (torch seed 0).
    """
    import torch

    from rsmae.evaluation.data import backbone_meta
    from rsmae.evaluation.features import file_digest
    from rsmae.models import create_encoder, save_backbone

    paths = {init: _newest(p) for init, p in config["backbones"].items()}
    if "random" in config["inits"] and "random" not in paths:
        meta = backbone_meta(next(iter(paths.values())))
        torch.manual_seed(0)
        encoder = create_encoder(meta.preset, in_chans=meta.in_chans, img_size=meta.img_size,
                                 patch_size=meta.patch_size, **meta.encoder_kwargs)
        meta.source = "random init (torch seed 0)"
        paths["random"] = save_backbone(encoder, Path(config["backbones_dir"]) / "random.safetensors", meta)
    return {init: {"path": str(p), "sha256": file_digest(p), "steps": None, "corpus": str(p.parent),
                   "images": None, "scenes": None} for init, p in paths.items()}


def add_external(config: dict[str, Any], manifest: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Convert the foreign weights named under ``external`` into backbone files; add them as inits.

    A converted file is reused while its record ``<kind>.json`` (the source file's SHA-256, the
    converter's settings and the rsmae version) matches; a changed source is converted again.
    """
    import rsmae
    from rsmae.evaluation.data import peek_size, task_bands
    from rsmae.evaluation.features import file_digest
    from rsmae.evaluation.interop import import_weights

    data = config.get("data", {})
    for kind, path in (config.get("external") or {}).items():
        if not path:
            continue
        out = Path(config["backbones_dir"]) / "external" / f"{kind}.safetensors"
        settings = {"bands": list(task_bands(data["sensor"], data["layout"])), "sensor": data["sensor"],
                    "img_size": peek_size(data["train_root"])}
        key = {"source_sha256": file_digest(ROOT / path), "converter": kind, **settings,
               "rsmae": rsmae.__version__}
        if read_json(out.with_suffix(".json")) != key or not out.is_file():
            import_weights(ROOT / path, kind, out, **settings)
            atomic_write_json(out.with_suffix(".json"), key, indent=1)  # after the file: a kill reconverts
        manifest[kind] = {"path": str(out), "sha256": file_digest(out), "steps": None, "corpus": str(path),
                          "images": None, "scenes": None}
        if kind not in config["inits"]:
            config["inits"].append(kind)
    return manifest


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/bench/cpu-small.yaml")
    p.add_argument("--workers", type=int, default=None, help="local processes (default: the config's)")
    p.add_argument("--dask", default=None, metavar="ADDRESS", help="run the cells on a Dask scheduler")
    p.add_argument("--cell-index", type=int, default=None, help="run only this cell (SLURM arrays)")
    p.add_argument("--count", action="store_true", help="print the number of cells and exit")
    p.add_argument("--tables-only", action="store_true", help="assemble tables from finished cells")
    p.add_argument("--results", default=str(ROOT / "benchmarks" / "results"))
    return p.parse_args(argv)


def main(argv: list[str] | None = None, writer: Callable[..., list[Path]] = write_tables) -> int:
    """Build backbones, run the grid, write the tables (with ``writer``); return the exit code."""
    args = parse_args(argv)
    config = load_config(args.config)
    if args.count:
        print(len(plan_cells(config, config["inits"])))
        return 0
    start = time.perf_counter()
    if config.get("backbones"):
        manifest = manifest_from_paths(config)
    else:
        if not args.tables_only:
            build_backbones(config["backbones_dir"], steps=int(config["pretrain_steps"]))
        manifest = load_manifest(config["backbones_dir"])
    manifest = add_external(config, manifest)
    if config.get("task") == "change":  # the from-scratch reference row of change detection
        manifest["fc_siam_diff"] = {"path": None, "sha256": None, "model": "fc-siam-diff", "steps": 0,
                                    "corpus": "none (from scratch)", "images": 0, "scenes": 0}
    missing = sorted({c["init"] for c in plan_cells(config, config["inits"])} - set(manifest))
    if missing:
        print(f"error: no backbone for inits {missing} in {config['backbones_dir']}/backbones.json; "
              "run without --tables-only to build them", file=sys.stderr)
        return 2
    cells = plan_cells(config, config["inits"])
    if args.cell_index is not None:
        cells = [cells[args.cell_index]]
    if not args.tables_only:
        run_grid(config, cells, manifest, workers=args.workers or int(config.get("workers", 1)),
                 dask=args.dask)
    if args.cell_index is None:
        paths = writer(config, plan_cells(config, config["inits"]), manifest, Path(args.results),
                        elapsed=0.0 if args.tables_only else time.perf_counter() - start)
        print("\n".join(f"wrote {p}" for p in paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
