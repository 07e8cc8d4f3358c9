"""A whole landscape study: models x objectives -> surfaces, curvature, noise, figures and tables.

For every model file (a model's training seeds are files sharing its name) and every objective that
applies to it: one 2D surface per direction seed (the same seeds, grid and samples for every model),
the top Hessian eigenvalues and trace, the Gaussian-noise flatness; then per objective a side-by-side
comparison with a shared colour scale, 1D slices, convergence and noise plots; straight lines between
model pairs; ``flatness.md`` / ``flatness.csv`` with a generated summary, and ``results.json`` with every
number.

Resuming: surface rows are cached under ``out/cache`` (see :mod:`~rsmae.landscape.surface`), and
eigenvalues, traces and noise results as JSON keyed by the objective's identity and settings, so
a killed study started again recomputes only what is missing.

Progress: one bar on a terminal (else INFO lines of ``rsmae.progress`` every 10 % or minute) counts
the steps of the whole study: each surface row (cached rows at once), each Hessian measure (top
eigenvalues, trace), each noise measure and each straight line of a model pair and objective.

Output layout (``out/``)::

    config.yaml  results.json  flatness.md  flatness.csv
    comparison_<objective>.png  slices_<objective>.png  hessian_<objective>.png  noise_<objective>.png
    surfaces/<model>[_s<training seed>]__<objective>__seed<s>.npz (+ .png contour, _3d.png of seed 1)
    lines/<a>__<b>__<objective>.npz  lines/<a>__<b>.png
    cache/...
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from rsmae.files import atomic_write_json, read_json
from rsmae.landscape.config import LandscapeConfig, ModelSpec
from rsmae.landscape.directions import random_direction
from rsmae.landscape.hessian import (
    EigenResult,
    HessianOperator,
    TraceResult,
    hutchinson_trace,
    top_eigenvalues,
)
from rsmae.landscape.inputs import LoadedModel, build_objective, load_model, objective_images
from rsmae.landscape.noise import NoiseResult, noise_flatness
from rsmae.landscape.objectives import Objective
from rsmae.landscape.plots import (
    plot_comparison,
    plot_contour,
    plot_convergence,
    plot_lines,
    plot_noise,
    plot_slices,
    plot_surface_3d,
)
from rsmae.landscape.report import Measures, sharpness, write_tables
from rsmae.landscape.surface import MapFn, compute_surface, dask_map, grid, interpolate_models, process_map
from rsmae.progress import Progress
from rsmae.provenance import command_line, git_commit

__all__ = ["StudyResult", "run_study"]

_logger = logging.getLogger(__name__)


@dataclass
class StudyResult:
    """What a study wrote.

    Attributes:
        out: Output folder.
        measures: One entry per model x objective.
        table: ``flatness.md``.
        csv: ``flatness.csv``.
        figures: Every PNG written.
        summary: Generated sentences.
    """

    out: Path
    measures: list[Measures]
    table: Path
    csv: Path
    figures: list[Path] = field(default_factory=list)
    summary: list[str] = field(default_factory=list)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-")


def _cached(path: Path, compute: Callable[[], Any], load: Callable[[dict[str, Any]], Any]) -> Any:
    """``load(json)`` if ``path`` holds valid JSON, else ``compute()`` written there atomically.

    The temporary file is unique to the process (:func:`rsmae.files.atomic_path`): processes sharing
    the cache never write through the same name.
    """
    cached = read_json(path)
    if isinstance(cached, dict):
        return load(cached)
    value = compute()
    atomic_write_json(path, value.to_dict())
    return value


def _key(obj: Objective, settings: Any) -> str:
    text = json.dumps({"objective": obj.describe(), "settings": settings}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def _noise_from(d: dict[str, Any]) -> NoiseResult:
    return NoiseResult(d["base"], d["sigmas"], np.asarray(d["increases"]), d["seed"], d["include_1d"])


def _steps(cfg: LandscapeConfig) -> int:
    """Progress steps of one model and objective: surface rows, Hessian and noise measures."""
    return len(cfg.directions.seeds) * cfg.grid.size + 2 * cfg.hessian.enabled + cfg.noise.enabled


def _counted(map_fn: MapFn | None, progress: Progress) -> MapFn:
    """``map_fn`` (default ``map``) that counts each row it yields in ``progress``."""
    inner = map_fn or map

    def counted(task: Callable[[Any], np.ndarray], rows: Any) -> Any:
        for row in inner(task, rows):
            progress.update()
            yield row

    return counted


def _measure(obj: Objective, spec: ModelSpec, objective: str, cfg: LandscapeConfig, out: Path,
             map_fn: MapFn | None, progress: Progress) -> Measures:
    """Surfaces over the direction seeds, Hessian and noise measures of one model file and objective."""
    model = spec.label
    xs = grid(cfg.grid.size, cfg.grid.lo, cfg.grid.hi)
    cache = out / "cache"
    surfaces = []
    for seed in cfg.directions.seeds:
        dirs = [random_direction(obj.params, 2 * seed + i, include_1d=cfg.directions.include_1d)
                for i in (0, 1)]
        extra = {"model": model, "objective_name": objective, "direction_seed": seed,
                 "include_1d": cfg.directions.include_1d}
        before = progress.n
        surface = compute_surface(obj, dirs, xs, xs, chunk_size=cfg.chunk_size, cache_dir=cache,
                                  map_fn=_counted(map_fn, progress), config=extra)
        progress.update(len(xs) - (progress.n - before))  # the rows read from the cache
        surface.save(out / "surfaces" / f"{_slug(model)}__{objective}__seed{seed}.npz")
        surfaces.append(surface)
    hs, ns = cfg.hessian, cfg.noise
    eigen = trace = noise = None
    if hs.enabled:
        ops: list[HessianOperator] = []  # built once, only if something is not cached

        def op() -> HessianOperator:
            if not ops:
                ops.append(HessianOperator(obj))
            return ops[0]

        eigen = _cached(cache / f"eigen_{_key(obj, [hs.top_k, hs.iters, hs.tol, hs.seed, 'subspace'])}.json",
                        lambda: top_eigenvalues(obj, hs.top_k, iters=hs.iters, tol=hs.tol, seed=hs.seed,
                                                operator=op()),
                        lambda d: EigenResult(**d))
        progress.update()
        trace = _cached(cache / f"trace_{_key(obj, [hs.trace_samples, hs.seed])}.json",
                        lambda: hutchinson_trace(obj, hs.trace_samples, seed=hs.seed, operator=op()),
                        lambda d: TraceResult(**d))
        progress.update()
    if ns.enabled:
        settings = [ns.sigmas, ns.draws, ns.seed, ns.include_1d]
        noise = _cached(cache / f"noise_{_key(obj, settings)}.json",
                        lambda: noise_flatness(obj, ns.sigmas, draws=ns.draws, seed=ns.seed,
                                               include_1d=ns.include_1d, chunk_size=cfg.chunk_size),
                        lambda d: _noise_from({k: v for k, v in d.items() if k not in ("mean", "std")}))
        progress.update()
    return Measures(spec.name, objective, float(obj(obj.params).detach()), surfaces, eigen, trace, noise,
                    spec.seed)


def _figures(measures: list[Measures], cfg: LandscapeConfig, out: Path) -> list[Path]:
    paths = []
    seed = cfg.directions.seeds[0]
    for m in measures:
        if not cfg.plots_per_model:
            break
        label = m.model if m.seed is None else f"{m.model}_s{m.seed}"
        stem = out / "surfaces" / f"{_slug(label)}__{m.objective}__seed{seed}"
        title = f"{label} / {m.objective}"
        paths.append(plot_contour(m.surfaces[0], f"{stem}.png", title=f"{title} / seed {seed}"))
        if cfg.plots_3d:
            paths.append(plot_surface_3d(m.surfaces[0], f"{stem}_3d.png", title=title))
    for objective in dict.fromkeys(m.objective for m in measures):
        group: list[Measures] = []  # the first training seed of each model
        for m in measures:
            if m.objective == objective and all(g.model != m.model for g in group):
                group.append(m)
        first = {m.model: m.surfaces[0] for m in group if m.surfaces}
        if first:
            title = f"{objective} loss, direction seed {seed}, shared colour scale"
            if any(m.seed is not None for m in group):
                title += " (first training seed)"
            paths.append(plot_comparison(first, out / f"comparison_{objective}.png", title=title))
            paths.append(plot_slices(first, out / f"slices_{objective}.png",
                                     title=f"{objective} loss through the centre (seed {seed})"))
        eigen = {m.model: m.eigen for m in group if m.eigen}
        trace = {m.model: m.trace for m in group if m.trace}
        if eigen or trace:
            paths.append(plot_convergence(eigen, trace, out / f"hessian_{objective}.png",
                                          title=f"Hessian of the {objective} loss: convergence"))
        noise = {m.model: m.noise for m in group if m.noise}
        if noise:
            paths.append(plot_noise(noise, out / f"noise_{objective}.png",
                                    title=f"{objective} loss under filter-normalised Gaussian weight noise"))
    return paths


def _lines(models: dict[str, LoadedModel], cfg: LandscapeConfig, out: Path,
           map_fn: MapFn | None, progress: Progress) -> tuple[list[Path], dict[str, Any]]:
    """Loss along the straight line between each pair of models, for every shared objective."""
    paths, record = [], {}
    ts = np.linspace(-0.25, 1.25, 13)
    for a, b in cfg.interpolate:
        curves = {}
        for objective in cfg.objectives:
            obj_a = build_objective(objective, models[a], cfg.data)
            obj_b = build_objective(objective, models[b], cfg.data)
            if obj_a is None or obj_b is None:
                progress.update()
                continue
            line = interpolate_models(obj_a, obj_b.params, ts, chunk_size=cfg.chunk_size,
                                      cache_dir=out / "cache", map_fn=map_fn,
                                      config={"from": a, "to": b, "objective_name": objective})
            line.save(out / "lines" / f"{_slug(a)}__{_slug(b)}__{objective}.npz")
            curves[objective] = line
            progress.update()
            record[f"{a} -> {b} / {objective}"] = {"t": ts.tolist(), "loss": line.values.tolist()}
        if curves:
            paths.append(plot_lines(curves, out / "lines" / f"{_slug(a)}__{_slug(b)}.png",
                                    title=f"straight line {a} (t=0) -> {b} (t=1)"))
    return paths, record


def _map_fn(cfg: LandscapeConfig) -> tuple[MapFn | None, Callable[[], None]]:
    if cfg.dask:
        from distributed import Client, LocalCluster

        cluster = None if isinstance(cfg.dask, str) else LocalCluster(
            n_workers=max(cfg.workers, 1), threads_per_worker=1, processes=True, dashboard_address=None)
        client = Client(cfg.dask if isinstance(cfg.dask, str) else cluster)

        def close() -> None:
            client.close()
            if cluster is not None:
                cluster.close()

        return dask_map(client), close
    if cfg.workers > 1:
        return process_map(cfg.workers, threads=max(1, torch.get_num_threads() // cfg.workers)), lambda: None
    return None, lambda: None


def _header(cfg: LandscapeConfig, seconds: float, threads: int) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    models = "; ".join(f"{m.label} = {m.kind} `{m.path}`" for m in cfg.models)
    seeds = {m.name: sum(n.name == m.name for n in cfg.models) for m in cfg.models}
    d, g = cfg.data, cfg.grid
    images = objective_images(d)
    return "\n".join([
        f"- models: {models}",
        "- training seeds per model: " + ", ".join(f"{k} {v}" for k, v in seeds.items())
        + f"; each row aggregates training seeds x {len(cfg.directions.seeds)} direction seeds",
        "- images per objective: " + "; ".join(f"{o}: {images[o]}" for o in cfg.objectives)
        + f"; mask seed {d.mask_seed}",
        f"- grid {g.size} x {g.size} over [{g.lo}, {g.hi}]^2, filter-normalised directions, seeds "
        f"{cfg.directions.seeds}, 1-D parameters {'perturbed' if cfg.directions.include_1d else 'fixed'}",
        f"- Hessian: top {cfg.hessian.top_k} by block power iteration with Rayleigh-Ritz (<= "
        f"{cfg.hessian.iters} iterations, tol "
        f"{cfg.hessian.tol}), trace from {cfg.hessian.trace_samples} Rademacher vectors; noise: sigmas "
        f"{cfg.noise.sigmas}, {cfg.noise.draws} draws",
        f"- machine: {cpu}, torch threads: {threads}, torch {torch.__version__}; "
        f"wall time {seconds / 60:.1f} min",
        f"- command: `{command_line()}`; commit {git_commit(('rsmae',))}",
    ])


def run_study(cfg: LandscapeConfig, *, map_fn: MapFn | None = None, progress: bool = True) -> StudyResult:
    """Run every measure of ``cfg`` and write the outputs to ``cfg.out``.

    Args:
        cfg: The study.
        map_fn: Runs surface rows (default from ``cfg.workers`` / ``cfg.dask``).
        progress: Show the study's progress (a bar on a terminal, else INFO lines).
    """
    start = time.perf_counter()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    close = lambda: None  # noqa: E731
    if map_fn is None:
        map_fn, close = _map_fn(cfg)
    threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    used_threads = torch.get_num_threads()
    pairs = len(cfg.models) * len(cfg.objectives)
    bar = Progress(pairs * _steps(cfg) + len(cfg.interpolate) * len(cfg.objectives), "landscape",
                   unit="step", enabled=progress)
    try:
        models: dict[str, LoadedModel] = {}  # the first training seed of each name, for the lines
        measures = []
        for spec in cfg.models:
            model = load_model(spec)
            models.setdefault(spec.name, model)
            for objective in cfg.objectives:
                obj = build_objective(objective, model, cfg.data)
                if obj is None:  # not expected after all
                    pairs -= 1
                    bar.set_total(pairs * _steps(cfg) + len(cfg.interpolate) * len(cfg.objectives))
                    continue
                _logger.info("measuring %s / %s", spec.label, objective)
                measures.append(_measure(obj, spec, objective, cfg, out, map_fn, bar))
        figures = _figures(measures, cfg, out)
        line_figures, lines = _lines(models, cfg, out, map_fn, bar)
    finally:
        bar.close()
        close()
        torch.set_num_threads(threads)
    md, csv_path, summary = write_tables(measures, out, threshold=cfg.threshold, lines=lines,
                                         header=_header(cfg, time.perf_counter() - start, used_threads))
    results = {"measures": [_record(m, cfg) for m in measures], "lines": lines, "summary": summary}
    atomic_write_json(out / "results.json", results, indent=1)
    return StudyResult(out, measures, md, csv_path, figures + line_figures, summary)


def _record(m: Measures, cfg: LandscapeConfig) -> dict[str, Any]:
    return {"model": m.model, "training_seed": m.seed, "objective": m.objective, "loss": m.loss,
            "sharpness": [sharpness(s, cfg.threshold) for s in m.surfaces],
            "eigen": m.eigen.to_dict() if m.eigen else None, "trace": m.trace.to_dict() if m.trace else None,
            "noise": m.noise.to_dict() if m.noise else None}

