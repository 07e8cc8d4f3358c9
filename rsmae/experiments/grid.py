"""Running a grid: one evaluation per cell, one result file each, on local processes or Dask.

:func:`run_cell` evaluates one cell (a scene-classification cell is one
:func:`rsmae.evaluation.classification.evaluate_classification` call, a change-detection cell one
:func:`rsmae.evaluation.change.evaluate_change` call) and writes its result file atomically, so cells
run anywhere (local processes, the Dask cluster the tiler uses, SLURM array tasks). :func:`run_grid`
runs the cells not done yet over :func:`rsmae.parallel.parallel_map`; a killed grid resumes where it
stopped.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from collections.abc import Callable
from typing import Any

from tqdm import tqdm

from rsmae.experiments.cells import cell_path, fingerprint, is_done
from rsmae.experiments.config import ROOT, GridConfig
from rsmae.files import atomic_write_json
from rsmae.parallel import parallel_map

__all__ = ["run_cell", "run_grid"]

_logger = logging.getLogger(__name__)


def _classification(cell: dict[str, Any], backbone: dict[str, Any], config: GridConfig) -> dict[str, Any]:
    from rsmae.evaluation.classification import evaluate_classification

    data = config.data
    return evaluate_classification(
        backbone["path"], cell["protocol"], data["train_root"], data["test_root"],
        fraction=cell["fraction"], seed=cell["seed"], cache_dir=config.cache_dir,
        sensor=data.get("sensor", "s2-l1c"), layout=data.get("layout", "eurosat"), progress=False,
        **(config.finetune or {}))  # the grid has one bar for all cells


def _change(cell: dict[str, Any], backbone: dict[str, Any], config: GridConfig) -> dict[str, Any]:
    from rsmae.evaluation.change import evaluate_change

    data = config.datasets[cell["dataset"]]
    out = cell_path(config.cells_dir, cell).with_suffix("")
    start = time.perf_counter()
    result = evaluate_change(
        backbone.get("path"), "full" if cell["protocol"] == "scratch" else cell["protocol"],
        test_root=ROOT / data["test_root"], train_root=ROOT / data.get("train_root", data["test_root"]),
        dataset=data.get("task", cell["dataset"]), seed=cell["seed"], out_dir=out,
        model=backbone.get("model", "siamese-vit"),
        **{"progress": False, **(config.change or {}), **data.get("settings", {})})
    result["scenes"] = [{k: v for k, v in scene.items() if not isinstance(v, (list, dict))}
                        for scene in result["scenes"]]
    result["wall_s"] = time.perf_counter() - start
    return result


def run_cell(cell: dict[str, Any], backbone: dict[str, Any], config: GridConfig, threads: int = 0
             ) -> dict[str, Any]:
    """Evaluate one cell and write its result file atomically; return the result."""
    import torch

    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # one bar for the grid, not one per cell
    warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode")  # frozen parts, on purpose
    if threads:
        torch.set_num_threads(threads)
    key = fingerprint(cell, backbone, config)  # first: a failing import costs nothing, not a whole cell
    evaluate = _change if config.is_change else _classification
    result = evaluate(cell, backbone, config)
    result.update(cell, fingerprint=key, threads=torch.get_num_threads())
    atomic_write_json(cell_path(config.cells_dir, cell), result, indent=1, default=str)
    return result


def _run_job(job: tuple[dict[str, Any], dict[str, Any], GridConfig, int]) -> dict[str, Any]:
    return run_cell(*job)


def run_grid(config: GridConfig, cells: list[dict[str, Any]], manifest: dict[str, dict[str, Any]], *,
             workers: int = 1, dask: str | None = None, log: Callable[[str], None] | None = None) -> int:
    """Run the cells not done yet, with a progress bar; return how many ran.

    Args:
        config: The grid config (:func:`rsmae.experiments.config.load_config`).
        cells: The cells to run if not done (:func:`rsmae.experiments.cells.plan_cells`).
        manifest: The inits' backbones (:func:`rsmae.experiments.inits.grid_manifest`).
        workers: Local processes; each gets cores / workers torch threads.
        dask: A Dask scheduler address to run the cells on (then ``workers`` is not used).
        log: Where the count of done and remaining cells goes (default: this module's logger).
    """
    jobs, done = [], 0
    threads = max(1, (os.cpu_count() or 1) // workers) if workers > 1 and not dask else 0
    for cell in cells:
        backbone = manifest[cell["init"]]
        if is_done(cell_path(config.cells_dir, cell), fingerprint(cell, backbone, config)):
            done += 1
        else:
            jobs.append((cell, backbone, config, threads))
    (log or _logger.info)(f"{len(cells)} cells: {done} done, {len(jobs)} to run")
    bar = tqdm(total=len(cells), initial=done, unit="cell", desc="transfer", disable=None)
    for result in parallel_map(_run_job, jobs, workers=workers, dask=dask):
        where = result.get("fraction") or result.get("dataset")
        score = f"f1 {result['f1']:.3f}" if "f1" in result else f"accuracy {result['accuracy']:.3f}"
        bar.set_postfix_str(f"{result['init']} {result['protocol']} {where} s{result['seed']}: {score}")
        bar.update(1)
    bar.close()
    return len(jobs)
