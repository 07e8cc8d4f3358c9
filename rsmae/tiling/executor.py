"""Run units of work in this process, in local worker processes, or on Dask distributed."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from rsmae.parallel import parallel_map
from rsmae.tiling.units import UnitResult, UnitTask, run_unit

__all__ = ["execute"]


def execute(
    tasks: Sequence[UnitTask],
    *,
    workers: int = 1,
    dask: str | bool | None = None,
    on_result: Callable[[UnitResult], None] | None = None,
) -> list[UnitResult]:
    """Run every task (with :func:`rsmae.parallel.parallel_map`); results are returned in task order.

    Args:
        tasks: Units to run.
        workers: Local worker processes (1 runs in this process). With ``dask``, the number of
            workers of the local cluster.
        dask: ``True`` for a Dask ``LocalCluster`` (127.0.0.1, no dashboard, one thread per
            worker); a scheduler address (``tcp://host:8786``) to run on an existing cluster;
            ``None``/``False`` for no Dask.
        on_result: Called as each unit finishes (progress).

    Raises:
        Exception: the first error raised by a unit, after the others were stopped.
    """
    if not dask and len(tasks) < 2 * workers:  # starting processes would cost more
        workers = 1
    where = "local" if dask is True else dask or None
    results = parallel_map(run_unit, tasks, workers=workers, dask=where, on_result=on_result)
    return sorted(results, key=lambda r: r.unit)
