"""Whole-scene prediction: ``embed`` and ``classify`` over scenes, ``change`` over a pair of dates.

Everything a run needs is checked before anything is written (the model file, the scenes, their
bands, grids and overlap), so bad input leaves no output. Each scene's outputs are made in a
temporary folder and renamed to ``OUT/<scene>`` when complete (:mod:`rsmae.predict.sink`): a rerun
skips finished scenes and redoes a killed one. Many scenes run one per task on local processes or Dask
(``workers``, ``dask``: :func:`rsmae.parallel.parallel_map`), or over GPUs and nodes through Lightning's
predict loop (:mod:`rsmae.predict.lightning_loop`); each worker or rank loads the model once from its file.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from functools import cached_property, partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rsmae.bands import get_sensor, rgb_indices
from rsmae.parallel import parallel_map
from rsmae.predict.errors import PredictError
from rsmae.predict.matching import BandStatistics, matched_reader
from rsmae.predict.models import (
    Predictor,
    load_change_predictor,
    load_classify_predictor,
    load_embed_predictor,
)
from rsmae.predict.products import CovarianceSum, change_polygons, change_preview, pca_preview
from rsmae.predict.scene import (
    OnGridReader,
    PredictScene,
    check_overlap,
    find_scenes,
    open_scene,
    read_float,
)
from rsmae.predict.sink import RUN_CACHE_MB, RasterSink, cell_grid, gdal_cache, scene_output
from rsmae.predict.windows import ScanSpec, scan
from rsmae.tiling.grid import SceneReader

__all__ = ["PredictConfig", "predict_change", "predict_classify", "predict_embed"]

_logger = logging.getLogger(__name__)
Progress = Callable[[int], None]


@dataclass(frozen=True)
class PredictConfig:
    """Options shared by the prediction commands.

    Attributes:
        overlap: Pixels shared by neighbouring windows; ``None``: a quarter window (rounded to the
            cell size); ignored with ``pool`` (windows tile the scene).
        batch: Windows per model call.
        engine: ``"torch"`` or ``"onnx"``.
        nodata: Value marking nodata in files that declare none (NaN: none).
        min_area: Smallest change polygon kept, in square metres.
        band_order: Band order of multi-band files without band descriptions (a layout name).
        pool: ``embed``: one vector per window instead of one per patch.
        threshold: ``change``: probability threshold of the mask; ``None``: the model's.
        threads: Intra-op threads of the model (``None``: the engine's default).
        precision: ``"32"`` (outputs equal to the module's), ``"bf16"`` or ``"auto"`` (:meth:`Predictor.use`).
        accelerator: ``"cpu"``, ``"gpu"`` or ``"auto"``: ``change`` runs on the first device; ``embed``
            and ``classify`` run through Lightning's predict loop (also when ``devices`` or ``num_nodes``).
        devices: Devices per node (``None``: 1), one process each; the scenes are dealt over them.
        num_nodes: Nodes (their processes started by a cluster launcher: SLURM, torchrun).
    """

    overlap: int | None = None
    batch: int = 16
    engine: str = "torch"
    nodata: float | None = 0.0
    min_area: float = 0.0
    band_order: str | None = None
    pool: bool = False
    threshold: float | None = None
    threads: int | None = None
    precision: str = "32"
    accelerator: str | None = None
    devices: int | None = None
    num_nodes: int = 1


def _spec(pred: Predictor, cfg: PredictConfig) -> ScanSpec:
    if cfg.pool and pred.kind == "embed":
        return ScanSpec(pred.window, pred.window, pred.scale, cfg.batch)
    overlap = cfg.overlap if cfg.overlap is not None else pred.window // 4 // pred.scale * pred.scale
    return ScanSpec(pred.window, pred.window - overlap, pred.scale, cfg.batch)


def _sensor(pred: Predictor) -> object:
    if pred.sensor is None:
        raise PredictError(f"{pred.path}: the model names no sensor for its bands {pred.bands}; save it "
                           "again from a run that knew its sensor")
    return get_sensor(pred.sensor)


def _scenes(inputs: Sequence[str], pred: Predictor, cfg: PredictConfig) -> list[PredictScene]:
    sensor = _sensor(pred)
    found = find_scenes(inputs, sensor, pred.bands, band_order=cfg.band_order)
    return [open_scene(s, sensor, cfg.nodata) for s in found]


def _info(folder: Path, pred: Predictor, cfg: PredictConfig, spec: ScanSpec, inputs: list[str],
          seconds: float, **more: object) -> None:
    info = {"task": pred.kind, "model": str(pred.path), "inputs": inputs, "bands": pred.bands,
            "window": spec.window, "stride": spec.stride, "cell": spec.scale, "config": asdict(cfg),
            "seconds": round(seconds, 3), **more}
    (folder / "info.json").write_text(json.dumps(info, indent=2), encoding="utf-8")


def predict_embed(inputs: Sequence[str], backbone: str | Path, out: str | Path,
                  config: PredictConfig = PredictConfig(), progress: Progress | None = None, *,
                  workers: int = 1, dask: Any = None) -> list[Path]:
    """Patch features of every scene in ``inputs`` as georeferenced COGs with a PCA preview.

    Args:
        inputs: Scene files, folders or globs.
        backbone: A backbone file (or its ONNX export).
        out: Output folder (one subfolder per scene).
        config: Prediction options.
        progress: Called with the windows of each model call (scenes run in this process only).
        workers: Local processes, one scene per task (1: this process); with ``dask="local"`` the
            workers of the local cluster.
        dask: ``None``; ``"local"``/``True`` (a Dask ``LocalCluster``); a scheduler address; or an open
            ``distributed.Client`` (:func:`rsmae.parallel.parallel_map`).

    Returns:
        The output folders, one per scene (finished ones of an earlier run are skipped); over devices,
        rank 0 returns them when all ranks are done, the other ranks an empty list.

    Raises:
        WeightsError: ``backbone`` is not a backbone file.
        BandError: a scene lacks a band of the backbone.
        RasterReadError, GridError: a scene's file is unreadable or its bands disagree.
    """
    job = _SceneJob("embed", str(backbone), str(out), _worker_config(config, workers, dask))
    pred = job.load()
    scenes = _scenes(inputs, pred, config)
    spec = _spec(pred, config)
    for s in scenes:
        if min(spec.cells(s.grid.height, s.grid.width)) == 0:
            raise PredictError(f"{s.scene.files[0]}: {s.grid.width}x{s.grid.height} px is smaller than one "
                               f"output cell ({spec.scale} px); use a larger scene")
    return _each_scene(scenes, job, pred, progress, workers=workers, dask=dask)


def _worker_config(config: PredictConfig, workers: int, dask: Any) -> PredictConfig:
    """``config`` for the workers: local processes share the cores unless ``threads`` says otherwise."""
    if config.threads is not None or workers <= 1 or (dask is not None and dask is not False):
        return config  # Dask workers run one thread each (its nanny sets OMP_NUM_THREADS)
    return replace(config, threads=max(1, (os.cpu_count() or 1) // workers))


@dataclass(frozen=True)
class _SceneJob:
    """One scene's outputs as a picklable task: the model is loaded from its file once per job object.

    Attributes:
        kind: ``"embed"`` or ``"classify"``.
        model: The model file.
        out: The output folder.
        config: Prediction options.
    """

    kind: str
    model: str
    out: str
    config: PredictConfig

    @cached_property
    def predictor(self) -> Predictor:
        """The model, loaded where the job runs (a Dask worker keeps it for all its scenes)."""
        return self.load()

    def load(self, device: str = "cpu") -> Predictor:
        """The model from its file, on ``device``."""
        if self.kind == "embed":
            pred = load_embed_predictor(self.model, pool=self.config.pool)
        else:
            pred = load_classify_predictor(self.model)
        cfg = self.config
        return pred.use(cfg.engine, cfg.threads, precision=cfg.precision, device=device)

    def write(self, pred: Predictor, s: PredictScene, progress: Progress | None = None) -> Path:
        """Write ``s``'s folder with ``pred``; the folder."""
        folder = Path(self.out) / s.name
        write = _embed_scene if self.kind == "embed" else _classify_scene
        with gdal_cache(RUN_CACHE_MB):
            write(pred, s, folder, self.config, _spec(pred, self.config), progress)
        return folder

    def __call__(self, s: PredictScene) -> Path:
        """Write ``s``'s folder (in a worker); the folder."""
        return self.write(self.predictor, s)


def _each_scene(scenes: Sequence[PredictScene], job: _SceneJob, pred: Predictor, progress: Progress | None,
                *, workers: int = 1, dask: Any = None) -> list[Path]:
    """Write each scene's folder ``out/<scene>`` unless an earlier run finished it; all the folders.

    In this process with ``pred``, one scene per task over ``workers`` processes or ``dask``, or over
    Lightning's devices (:func:`rsmae.predict.lightning_loop.predict_scenes`).
    """
    if job.config.accelerator is not None or job.config.devices is not None or job.config.num_nodes != 1:
        if workers > 1 or (dask is not None and dask is not False):
            raise PredictError("devices (accelerator, devices, num_nodes) and workers or dask both given: "
                               "run the scenes on Lightning's devices or on local processes/Dask")
        from rsmae.predict.lightning_loop import predict_scenes

        return predict_scenes(job, scenes, progress)
    folders = [Path(job.out) / s.name for s in scenes]
    todo = [s for s, folder in zip(scenes, folders, strict=True) if not folder.is_dir()]
    for folder in (f for f in folders if f.is_dir()):
        _logger.info("%s: done by an earlier run, skipped", folder)
    if workers <= 1 and (dask is None or dask is False):
        for s in todo:
            job.write(pred, s, progress)
        return folders
    for folder in parallel_map(job, todo, workers=workers, dask=dask):
        _logger.info("%s: done", folder)
    return folders


def _embed_scene(pred: Predictor, s: PredictScene, target: Path, cfg: PredictConfig, spec: ScanSpec,
                 progress: Progress | None) -> None:
    start = time.perf_counter()
    g = s.grid
    rows, cols = spec.cells(g.height, g.width)
    pca = CovarianceSum(pred.channels)
    with scene_output(target.parent, target.name) as folder:
        raster = folder / "embedding.tif"
        sink = RasterSink(raster, cell_grid(g, spec.scale, rows, cols), count=pred.channels,
                          dtype="float32", nodata=float("nan"),
                          descriptions=[f"feature_{i}" for i in range(pred.channels)])
        with SceneReader(s.scene, g, s.dtype, nodata=s.nodata) as reader, sink:
            def emit(row: int, block: np.ndarray) -> None:
                sink.write(row, block)
                pca.add(block)

            scan([partial(read_float, reader, s.nodata)], pred, spec, height=g.height, width=g.width,
                 channels=pred.channels, emit=emit, on_batch=progress)
        pca_preview(raster, folder / "preview.png", pca)
        _info(folder, pred, cfg, spec, s.scene.files, time.perf_counter() - start,
              pixels=[g.height, g.width], cells=[rows, cols])


def predict_classify(inputs: Sequence[str], model: str | Path, out: str | Path,
                     config: PredictConfig = PredictConfig(), progress: Progress | None = None, *,
                     workers: int = 1, dask: Any = None) -> list[Path]:
    """Class index and class probability COGs of every scene in ``inputs``, on the scene's grid.

    Each window's class probabilities are spread over its pixels and overlapping windows blended with
    cosine weights, as ``change`` blends its probabilities: one value per pixel of the scene's finest
    band grid (its CRS and transform). The class index is the argmax of the blended probabilities.
    Arguments as :func:`predict_embed`'s (``model``: a classifier saved by ``rsmae evaluate --out``).

    Returns:
        The output folders, one per scene (finished ones of an earlier run are skipped).

    Raises:
        WeightsError: ``model`` is not a scene classifier.
        BandError: a scene lacks a band of the classifier.
        RasterReadError, GridError: a scene's file is unreadable or its bands disagree.
    """
    job = _SceneJob("classify", str(model), str(out), _worker_config(config, workers, dask))
    pred = job.load()
    scenes = _scenes(inputs, pred, config)
    return _each_scene(scenes, job, pred, progress, workers=workers, dask=dask)


def _classify_scene(pred: Predictor, s: PredictScene, target: Path, cfg: PredictConfig, spec: ScanSpec,
                    progress: Progress | None) -> None:
    start = time.perf_counter()
    g, k = s.grid, pred.channels
    classes = pred.classes or [f"class_{i}" for i in range(k)]
    dtype, nodata = ("uint8", 255) if k <= 255 else ("uint16", 65535)
    with scene_output(target.parent, target.name) as folder:
        prob = RasterSink(folder / "class_prob.tif", g, count=k, dtype="float32", nodata=float("nan"),
                          descriptions=classes)
        index = RasterSink(folder / "class_index.tif", g, count=1, dtype=dtype, nodata=nodata,
                           descriptions=["class"], resampling="nearest",
                           tags={"CLASSES": json.dumps(classes)})
        with SceneReader(s.scene, g, s.dtype, nodata=s.nodata) as reader, prob, index:
            def emit(row: int, block: np.ndarray) -> None:
                prob.write(row, block)
                bad = np.isnan(block).any(axis=0)
                best = np.where(bad, nodata, np.where(np.isnan(block), -1.0, block).argmax(axis=0))
                index.write(row, best[None])

            scan([partial(read_float, reader, s.nodata)], pred, spec, height=g.height, width=g.width,
                 channels=k, emit=emit, on_batch=progress)
        _info(folder, pred, cfg, spec, s.scene.files, time.perf_counter() - start, classes=classes,
              pixels=[g.height, g.width])


def _one(inputs: str, pred: Predictor, cfg: PredictConfig) -> PredictScene:
    found = _scenes([inputs], pred, cfg)
    if len(found) != 1:
        names = ", ".join(s.scene.scene_id for s in found)
        raise PredictError(f"{inputs}: holds {len(found)} scenes ({names}); pass one scene per date")
    return found[0]


def predict_change(date1: str, date2: str, model: str | Path, out: str | Path,
                   config: PredictConfig = PredictConfig(), progress: Progress | None = None) -> Path:
    """Change probability, mask and polygons of a pair of dates, on date 1's grid, on one device.

    Returns:
        The output folder (skipped when an earlier run finished it).

    Raises:
        WeightsError: ``model`` is not a change model.
        BandError: a date lacks a band of the model.
        PredictError: the dates do not overlap, a path holds many scenes, or many devices are asked.
    """
    acc = config.accelerator
    if config.devices not in (None, 1) or config.num_nodes != 1 or acc not in (None, "auto", "cpu", "gpu"):
        raise PredictError(f"devices {config.devices}, nodes {config.num_nodes}, accelerator {acc}: change "
                           "runs one pair on one device; choose an accelerator (auto, cpu, gpu), not devices")
    gpu = acc == "gpu" or (acc == "auto" and torch.cuda.is_available())
    pred = load_change_predictor(model).use(config.engine, config.threads, precision=config.precision,
                                            device="cuda" if gpu else "cpu")
    first, second = _one(date1, pred, config), _one(date2, pred, config)
    check_overlap(first, second)
    target = Path(out) / first.name
    if target.is_dir():
        _logger.info("%s: done by an earlier run, skipped", target)
        return target
    spec = _spec(pred, config)
    threshold = pred.threshold if config.threshold is None else config.threshold
    match = pred.match_dates
    start = time.perf_counter()
    with scene_output(target.parent, target.name) as folder, gdal_cache(RUN_CACHE_MB):
        _change_rasters(pred, (first, second), folder, spec, threshold, progress, match=match)
        changed = folder / "changed.part.tif"
        polygons = change_polygons(changed, folder / "changes.gpkg", min_area=config.min_area)
        changed.unlink()
        shown = _change_preview(pred, first, f"Change {first.name} -> {second.name}", folder, threshold)
        _info(folder, pred, config, spec, [*first.scene.files, *second.scene.files],
              time.perf_counter() - start, threshold=threshold, polygons=polygons,
              pixels=[first.grid.height, first.grid.width], preview=list(shown), match_dates=match)
    return target


def _change_rasters(pred: Predictor, pair: tuple[PredictScene, PredictScene], folder: Path, spec: ScanSpec,
                    threshold: float, progress: Progress | None, *, match: bool = False) -> None:
    """Scan the pair: probability and mask COGs, and ``changed.part.tif`` (1 = change) for polygons.

    With ``match`` date 2 is first rescaled per band to date 1's statistics (:mod:`rsmae.predict.matching`).
    """
    first, second = pair
    g = first.grid
    prob = RasterSink(folder / "change_prob.tif", g, count=1, dtype="float32", nodata=float("nan"),
                      descriptions=["change_probability"])
    mask = RasterSink(folder / "change_mask.tif", g, count=1, dtype="uint8", nodata=255,
                      descriptions=["change"], resampling="nearest")
    flag = RasterSink(folder / "changed.part.tif", g, count=1, dtype="uint8", nodata=0, resampling="nearest")
    with SceneReader(first.scene, g, first.dtype, nodata=first.nodata) as r1, \
            OnGridReader(second.scene, g, second.dtype, nodata=second.nodata) as r2, prob, mask, flag:
        def emit(row: int, block: np.ndarray) -> None:
            p = block[:1]
            m = np.where(np.isnan(p), 255, p >= threshold).astype(np.uint8)
            prob.write(row, p)
            mask.write(row, m)
            flag.write(row, (m == 1).astype(np.uint8))

        readers = [partial(read_float, r1, first.nodata), partial(read_float, r2, second.nodata)]
        if match:
            stats = [BandStatistics(read, g.height, g.width) for read in readers]
            readers[1] = matched_reader(readers[1], stats[1], stats[0], second.dtype)
        scan(readers, pred, spec, height=g.height, width=g.width, channels=1, emit=emit, on_batch=progress)


def _change_preview(pred: Predictor, first: PredictScene, title: str, folder: Path,
                    threshold: float) -> tuple[int, int]:
    """Write ``preview.png``: date 1 in true colour with the change of ``change_mask.tif`` over it.

    The sensor's red, green and blue bands are picked by name (a model without them: its first band in
    grey). Returns the map's size in the PNG.
    """
    picks = rgb_indices(pred.bands, pred.sensor) or (0, 0, 0)
    if picks == (0, 0, 0):
        _logger.info("%s: no red, green and blue bands; preview in %s", pred.path, pred.bands[0])
    scene = replace(first.scene, sources=tuple(first.scene.sources[i] for i in picks))
    with SceneReader(scene, first.grid, first.dtype, nodata=first.nodata) as reader:
        return change_preview(partial(read_float, reader, first.nodata), folder / "change_mask.tif",
                              folder / "preview.png", title=title, threshold=threshold)
