"""Run units of work in this process, in local worker processes, or on Dask distributed."""

from __future__ import annotations

import logging
import multiprocessing
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from concurrent.futures import as_completed as futures_as_completed

from rsmae.tiling.units import UnitResult, UnitTask, run_unit

__all__ = ["execute"]

log = logging.getLogger(__name__)


def execute(
    tasks: Sequence[UnitTask],
    *,
    workers: int = 1,
    dask: str | bool | None = None,
    on_result: Callable[[UnitResult], None] | None = None,
) -> list[UnitResult]:
    """Run every task; results are returned in task order.

    Args:
        tasks: Units to run.
        workers: Local worker processes (1 runs in this process). With ``dask``, the number of
            workers of the local cluster.
        dask: ``True`` for a Dask ``LocalCluster``; a scheduler address (``tcp://host:8786``)
            to run on an existing cluster; ``None``/``False`` for no Dask.
        on_result: Called as each unit finishes (progress).

    Raises:
        Exception: the first error raised by a unit, after the others were stopped.
    """
    if dask:
        results = _run_dask(tasks, workers, None if dask is True else str(dask), on_result)
    elif workers <= 1 or len(tasks) < 2 * workers:  # starting processes would cost more
        results = []
        for task in tasks:
            results.append(run_unit(task))
            if on_result:
                on_result(results[-1])
    else:
        results = list(_run_processes(tasks, workers, on_result))
    return sorted(results, key=lambda r: r.unit)


def _run_processes(
    tasks: Sequence[UnitTask], workers: int, on_result: Callable[[UnitResult], None] | None
) -> Iterator[UnitResult]:
    context = multiprocessing.get_context("spawn")  # GDAL state must not be forked
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        futures = [pool.submit(run_unit, t) for t in tasks]
        try:
            for future in futures_as_completed(futures):
                result = future.result()
                if on_result:
                    on_result(result)
                yield result
        except BaseException:
            for f in futures:
                f.cancel()
            wait(futures, return_when=FIRST_EXCEPTION)
            raise


def _run_dask(
    tasks: Sequence[UnitTask],
    workers: int,
    address: str | None,
    on_result: Callable[[UnitResult], None] | None,
) -> list[UnitResult]:
    from distributed import Client, LocalCluster, as_completed

    cluster = None
    if address is None:
        cluster = LocalCluster(n_workers=max(workers, 1), threads_per_worker=1, processes=True,
                               host="127.0.0.1", dashboard_address=None)
        client = Client(cluster)
    else:
        client = Client(address)
    log.info("running %d units on Dask at %s", len(tasks), client.scheduler.address)
    try:
        futures = client.map(run_unit, tasks, pure=False)
        results = []
        try:
            for future in as_completed(futures):
                results.append(future.result())
                if on_result:
                    on_result(results[-1])
        except BaseException:
            client.cancel(futures)
            raise
        return results
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
