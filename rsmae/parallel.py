"""One map over local processes or a Dask cluster: tiling units, landscape rows and grid cells use it.

:func:`parallel_map` runs ``fn`` on every item in this process (``workers=1``), in spawned local
processes (``workers > 1``; spawned, not forked: GDAL and torch state must not be copied), or on Dask
distributed (``dask="local"``: a ``LocalCluster`` on 127.0.0.1 with ``workers`` single-threaded
worker processes and no dashboard; a scheduler address such as ``tcp://host:8786``; or an open
``distributed.Client``, left open). Results are yielded as they finish (or in item order with
``ordered=True``); the first error cancels the items not started and is raised.
"""

from __future__ import annotations

import logging
import multiprocessing
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from typing import Any, TypeVar

__all__ = ["parallel_map"]

T = TypeVar("T")
R = TypeVar("R")

log = logging.getLogger(__name__)


def parallel_map(fn: Callable[[T], R], items: Iterable[T], *, workers: int = 1, dask: Any = None,
                 on_result: Callable[[R], None] | None = None, ordered: bool = False) -> Iterator[R]:
    """Yield ``fn(item)`` for every item, as each finishes.

    Args:
        fn: A picklable callable of one item (a module-level function or a picklable object).
        items: The items; each is pickled to the worker that runs it.
        workers: Local processes (1 runs in this process). With ``dask="local"``, the number of
            worker processes of the local cluster.
        dask: ``None`` (or ``False``) for no Dask; ``"local"`` (or ``True``) for a ``LocalCluster``;
            a scheduler address; or an open ``distributed.Client``.
        on_result: Called with each result as it finishes (progress), before it is yielded.
        ordered: Yield in the order of ``items`` instead of as they finish.

    Raises:
        Exception: the first error raised by ``fn``, after the items not started were cancelled.
    """
    items = list(items)
    if not items:
        return
    if dask is not None and dask is not False:
        indexed = _dask(fn, items, workers, dask)
    elif workers <= 1:
        indexed = ((i, fn(item)) for i, item in enumerate(items))
    else:
        indexed = _processes(fn, items, workers)
    waiting: dict[int, R] = {}
    following = 0
    try:
        for i, result in indexed:
            if on_result:
                on_result(result)
            if not ordered:
                yield result
                continue
            waiting[i] = result
            while following in waiting:
                yield waiting.pop(following)
                following += 1
    finally:
        indexed.close()  # a consumer that stopped early cancels what has not started


def _processes(fn: Callable[[T], R], items: Sequence[T], workers: int) -> Iterator[tuple[int, R]]:
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        futures = {pool.submit(fn, item): i for i, item in enumerate(items)}
        try:
            for future in as_completed(futures):
                yield futures[future], future.result()
        except BaseException:  # an error (or a consumer that stopped) ends the map now
            pool.shutdown(wait=False, cancel_futures=True)
            raise


def _dask(fn: Callable[[T], R], items: Sequence[T], workers: int, dask: Any) -> Iterator[tuple[int, R]]:
    from distributed import as_completed as dask_completed

    with _client(dask, workers) as client:
        log.info("running %d items on Dask at %s", len(items), client.scheduler.address)
        remote = client.scatter(fn, broadcast=True)  # a heavy callable (model, data) is sent once
        futures = [client.submit(_call, remote, item, pure=False) for item in items]
        index = {future.key: i for i, future in enumerate(futures)}
        try:
            for future in dask_completed(futures):
                yield index[future.key], future.result()
        except BaseException:
            client.cancel(futures)
            raise


@contextmanager
def _client(dask: Any, workers: int) -> Iterator[Any]:
    """A Dask client for ``dask``; what is opened here is closed here."""
    from distributed import Client, LocalCluster

    if not isinstance(dask, str | bool):
        yield dask  # an open client: the caller's to close
        return
    cluster = None
    if dask is True or dask == "local":
        cluster = LocalCluster(n_workers=max(workers, 1), threads_per_worker=1, processes=True,
                               host="127.0.0.1", dashboard_address=None)
    client = Client(cluster if cluster is not None else dask)
    try:
        yield client
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def _call(fn: Callable[[T], R], item: T) -> R:
    return fn(item)
