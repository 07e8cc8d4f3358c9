"""Loss surfaces on a grid: ``f(a, b) = L(theta + a d1 + b d2)``, batched, cached, distributable.

A 2D surface is computed row by row (one row = every ``a`` for one ``b``); a 1D curve is one row.
Within a row, points run ``chunk_size`` at a time through ``torch.func.vmap`` over the objective's
``functional_call`` (one batched forward for several weight vectors), falling back to a plain loop
if the model cannot be vmapped. Rows are independent units of work:

- ``map_fn(task, rows)`` runs them: the builtin ``map`` (default, in this process),
  :func:`process_map` (local processes) or :func:`dask_map` (a Dask ``Client``; the engine the
  tiler uses). Results must come back in order; a lazy iterator lets rows be cached as they come.
- With ``cache_dir``, every finished row is written to ``cache_dir/<key>/row_XXXX.npy`` (atomic
  rename), where ``key`` hashes the objective (its weights, data, masks), the directions and the
  grid. An interrupted run started again computes only the missing rows.

Output: :class:`Surface`, saved as ``.npz`` (``values``, ``xs``, ``ys``, ``config`` as JSON).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from rsmae.errors import LandscapeError
from rsmae.files import atomic_path, atomic_write_json
from rsmae.landscape.directions import ParamDict, fingerprint, model_direction, stack_points
from rsmae.landscape.objectives import Objective
from rsmae.parallel import parallel_map

__all__ = [
    "MapFn",
    "PointCache",
    "RowTask",
    "Surface",
    "batched_losses",
    "compute_surface",
    "dask_map",
    "evaluate_points",
    "grid",
    "interpolate_models",
    "process_map",
]

_logger = logging.getLogger(__name__)

MapFn = Callable[[Callable[[Any], np.ndarray], Sequence[Any]], Iterable[np.ndarray]]


@dataclass
class Surface:
    """Loss values on a grid.

    Attributes:
        values: ``(len(ys), len(xs))`` for a 2D surface (row ``j`` is ``b = ys[j]``), ``(len(xs),)``
            for a 1D curve.
        xs: Coefficients along the first direction.
        ys: Coefficients along the second direction (``None`` for 1D).
        config: JSON-able description (objective, directions, grid, cache key, extras).
    """

    values: np.ndarray
    xs: np.ndarray
    ys: np.ndarray | None = None
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def centre(self) -> float:
        """Value at the grid point nearest the origin."""
        i = int(np.abs(self.xs).argmin())
        if self.ys is None:
            return float(self.values[i])
        return float(self.values[int(np.abs(self.ys).argmin()), i])

    def save(self, path: str | Path) -> Path:
        """Write ``values``, ``xs``, ``ys`` and ``config`` (JSON) to an ``.npz``."""
        path = Path(path)
        ys = self.ys if self.ys is not None else np.zeros(0)
        with atomic_path(path) as tmp, tmp.open("wb") as fh:  # a file object: savez adds no suffix
            np.savez(fh, values=self.values, xs=self.xs, ys=ys, config=json.dumps(self.config))
        return path

    @classmethod
    def load(cls, path: str | Path) -> Surface:
        """Read a surface written by :meth:`save`."""
        with np.load(path) as data:
            ys = data["ys"] if data["values"].ndim == 2 else None
            return cls(data["values"], data["xs"], ys, json.loads(str(data["config"])))


def grid(size: int = 21, lo: float = -1.0, hi: float = 1.0) -> np.ndarray:
    """``size`` evenly spaced coefficients from ``lo`` to ``hi`` (default 21 over [-1, 1])."""
    if size < 2 or not hi > lo:
        raise LandscapeError(f"grid size {size} over [{lo}, {hi}]: need size >= 2 and hi > lo")
    return np.linspace(lo, hi, size)


def evaluate_points(
    objective: Objective,
    directions: Sequence[Mapping[str, Tensor]],
    coefs: np.ndarray | Tensor,
    *,
    centre: Mapping[str, Tensor] | None = None,
    chunk_size: int = 8,
    use_vmap: bool = True,
) -> np.ndarray:
    """Losses at ``theta + sum_i coefs[k, i] d_i`` for every row ``k`` of ``coefs (K, m)``.

    Args:
        objective: The loss.
        directions: ``m`` directions.
        coefs: ``(K, m)`` coefficients.
        centre: Weights ``theta`` (default ``objective.params``).
        chunk_size: Points per batched forward (1 = a plain loop).
        use_vmap: Batch points with ``torch.func.vmap``; a model that cannot be vmapped falls
            back to the loop (logged once).

    Returns:
        ``(K,)`` float64 losses.
    """
    centre = objective.params if centre is None else centre
    coefs = torch.as_tensor(np.asarray(coefs, dtype=np.float64))
    out = []
    batched = use_vmap and chunk_size > 1
    for chunk in coefs.split(max(chunk_size, 1)):
        with objective.threads(len(chunk)):
            points = stack_points(centre, directions, chunk)
            losses, batched = batched_losses(objective, points, use_vmap=batched)
        out.append(losses)
    return torch.cat(out).double().cpu().numpy()


def batched_losses(objective: Objective, points: Mapping[str, Tensor], *, use_vmap: bool = True
                   ) -> tuple[Tensor, bool]:
    """Losses of stacked points ``name -> (K, *shape)``, with ``vmap`` if it works for the objective.

    Returns:
        ``(K,)`` losses, and whether ``vmap`` is still usable (``False`` after a failure, logged
        once: pass it back as ``use_vmap`` for the next points).
    """
    if use_vmap:
        try:
            return objective.many(points, use_vmap=True), True
        except (RuntimeError, NotImplementedError) as err:
            _logger.warning("vmap failed for %s (%s); evaluating points one by one",
                            objective.name, str(err).splitlines()[0][:200])
    return objective.many(points, use_vmap=False), False


class RowTask:
    """One row of a surface as a picklable callable: ``task(b) -> losses at (xs, b)``.

    Args:
        objective: The loss.
        directions: One (1D) or two (2D) directions.
        xs: Coefficients along the first direction.
        centre: Weights at the origin (default ``objective.params``).
        chunk_size: Points per batched forward.
        use_vmap: Batch points with ``vmap``.
    """

    def __init__(self, objective: Objective, directions: Sequence[ParamDict], xs: np.ndarray, *,
                 centre: ParamDict | None = None, chunk_size: int = 8, use_vmap: bool = True) -> None:
        self.objective = objective
        self.directions = list(directions)
        self.xs = np.asarray(xs, dtype=np.float64)
        self.centre = centre
        self.chunk_size = chunk_size
        self.use_vmap = use_vmap

    def __call__(self, y: float | None) -> np.ndarray:
        """Losses along the row ``b = y`` (``None`` for a 1D curve)."""
        coefs = self.xs[:, None] if y is None else np.stack([self.xs, np.full_like(self.xs, y)], 1)
        return evaluate_points(self.objective, self.directions, coefs, centre=self.centre,
                               chunk_size=self.chunk_size, use_vmap=self.use_vmap)


class PointCache:
    """Finished rows of one surface on disk: ``folder/<key>/row_XXXX.npy`` plus ``config.json``.

    Args:
        folder: Cache root (shared by many surfaces).
        key: Hash of everything that determines the values.
        config: Written beside the rows, for humans.
    """

    def __init__(self, folder: str | Path, key: str, config: Mapping[str, Any] | None = None) -> None:
        self.path = Path(folder) / key
        self.path.mkdir(parents=True, exist_ok=True)
        if config is not None and not (self.path / "config.json").exists():
            atomic_write_json(self.path / "config.json", config, indent=1, sort_keys=True)

    def _row(self, j: int) -> Path:
        return self.path / f"row_{j:04d}.npy"

    def load(self, n_rows: int, width: int) -> dict[int, np.ndarray]:
        """Rows already on disk (files of the wrong length are ignored)."""
        done = {}
        for j in range(n_rows):
            try:
                values = np.load(self._row(j))
            except (FileNotFoundError, ValueError, OSError):
                continue
            if values.shape == (width,):
                done[j] = values
        return done

    def save(self, j: int, values: np.ndarray) -> None:
        """Write row ``j`` atomically (:func:`rsmae.files.atomic_path`)."""
        with atomic_path(self._row(j)) as tmp, tmp.open("wb") as fh:  # a file object: no ".npy" added
            np.save(fh, np.asarray(values, dtype=np.float64))


def _surface_key(objective: Objective, directions: Sequence[ParamDict], centre: ParamDict | None,
                 xs: np.ndarray, ys: np.ndarray | None) -> tuple[str, dict[str, Any]]:
    ident = {
        "objective": objective.describe(),
        "centre": fingerprint(centre) if centre is not None else "objective",
        "directions": [fingerprint(d) for d in directions],
        "xs": [float(v) for v in xs],
        "ys": None if ys is None else [float(v) for v in ys],
        "dtype": str(objective.dtype),
    }
    key = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:20]
    return key, ident


def compute_surface(
    objective: Objective,
    directions: Sequence[ParamDict],
    xs: np.ndarray,
    ys: np.ndarray | None = None,
    *,
    centre: ParamDict | None = None,
    chunk_size: int = 8,
    use_vmap: bool = True,
    cache_dir: str | Path | None = None,
    map_fn: MapFn | None = None,
    config: Mapping[str, Any] | None = None,
) -> Surface:
    """A 1D (one direction, ``ys=None``) or 2D (two directions) loss surface.

    Args:
        objective: The loss.
        directions: ``[d1]`` or ``[d1, d2]``.
        xs: Coefficients along ``d1`` (e.g. :func:`grid`).
        ys: Coefficients along ``d2``.
        centre: Weights at the origin (default ``objective.params``).
        chunk_size: Points per batched forward.
        use_vmap: Batch points with ``vmap``.
        cache_dir: Resume from and write finished rows to this folder.
        map_fn: Runs the rows: ``map_fn(task, ys) -> iterable of rows in order`` (default the
            builtin ``map``; see :func:`process_map`, :func:`dask_map`).
        config: Extra JSON-able entries for the surface's config (model name, seed...).

    Returns:
        The :class:`Surface`.
    """
    xs = np.asarray(xs, dtype=np.float64)
    ys = None if ys is None else np.asarray(ys, dtype=np.float64)
    if len(directions) != (1 if ys is None else 2):
        raise LandscapeError(f"{len(directions)} directions for a {'1D' if ys is None else '2D'} surface; "
                             "pass one direction without ys, or two with ys")
    key, ident = _surface_key(objective, directions, centre, xs, ys)
    rows: list[float | None] = [None] if ys is None else [float(y) for y in ys]
    cache = PointCache(cache_dir, key, ident) if cache_dir is not None else None
    done = cache.load(len(rows), len(xs)) if cache is not None else {}
    todo = [j for j in range(len(rows)) if j not in done]
    if done:
        _logger.info("surface %s: %d of %d rows from the cache", key, len(done), len(rows))
    task = RowTask(objective, directions, xs, centre=centre, chunk_size=chunk_size, use_vmap=use_vmap)
    start = time.perf_counter()
    results = (map_fn or map)(task, [rows[j] for j in todo])
    for count, (j, values) in enumerate(zip(todo, results, strict=True), 1):
        values = np.asarray(values, dtype=np.float64)
        if cache is not None:
            cache.save(j, values)
        done[j] = values
        _logger.info("surface %s: row %d/%d (%.1f s)", key, count, len(todo), time.perf_counter() - start)
    values = done[0] if ys is None else np.stack([done[j] for j in range(len(rows))])
    meta = {**ident, "key": key, **(dict(config) if config else {})}
    return Surface(values, xs, ys, meta)


def interpolate_models(objective: Objective, params_b: ParamDict, ts: np.ndarray, **kwargs: Any) -> Surface:
    """Loss along the straight line ``theta_a + t (theta_b - theta_a)``; ``theta_a`` = the objective's.

    ``t = 0`` is the objective's model, ``t = 1`` model ``b`` (e.g. MAE -> RC-MAE, init ->
    trained). Keyword arguments go to :func:`compute_surface`.
    """
    direction = model_direction(objective.params, params_b)
    return compute_surface(objective, [direction], ts, **kwargs)


@dataclass(frozen=True)
class _Threaded:
    """``fn`` with torch's threads set first (in each worker process)."""

    fn: Callable[[Any], np.ndarray]
    threads: int

    def __call__(self, item: Any) -> np.ndarray:
        torch.set_num_threads(self.threads)
        return self.fn(item)


def process_map(workers: int, *, threads: int | None = None) -> MapFn:
    """A ``map_fn`` over local processes (:func:`rsmae.parallel.parallel_map`; spawned, the task pickled).

    Args:
        workers: Processes.
        threads: Torch threads per process (default torch's; set cores / workers).
    """

    def run(fn: Callable[[Any], np.ndarray], items: Sequence[Any]) -> Iterator[np.ndarray]:
        task = _Threaded(fn, threads) if threads and workers > 1 else fn
        return parallel_map(task, items, workers=workers, ordered=True)

    return run


def dask_map(client: Any) -> MapFn:
    """A ``map_fn`` over a Dask ``distributed.Client``: rows are submitted at once, yielded in order.

    The task (objective with its model and data) is scattered once and shared by all rows
    (:func:`rsmae.parallel.parallel_map`); the client is left open.
    """

    def run(fn: Callable[[Any], np.ndarray], items: Sequence[Any]) -> Iterator[np.ndarray]:
        return parallel_map(fn, items, dask=client, ordered=True)

    return run
