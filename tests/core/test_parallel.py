"""rsmae.parallel.parallel_map: in this process, on 2 local processes, on a Dask LocalCluster."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

from rsmae.parallel import parallel_map


def _square(x: int) -> int:
    time.sleep(0.05 * (x % 3))  # finish out of order
    return x * x


def _pid(_: int) -> int:
    time.sleep(0.2)
    return os.getpid()


def _row(i: int) -> np.ndarray:
    import torch

    time.sleep(0.05 * ((4 - i) % 4))  # later rows finish first
    return np.array([i, torch.get_num_threads()], dtype=np.float64)


def _fails_on_three(x: int) -> int:
    if x == 3:
        raise ValueError(f"item {x} failed")
    time.sleep(0.5)
    return x


def test_in_this_process_in_order_and_progress() -> None:
    seen = []
    assert list(parallel_map(_square, range(6), workers=1, on_result=seen.append)) == [0, 1, 4, 9, 16, 25]
    assert seen == [0, 1, 4, 9, 16, 25]
    assert list(parallel_map(_square, [], workers=2)) == []


@pytest.mark.slow
def test_two_local_processes() -> None:
    items = list(range(8))
    seen: list[int] = []
    got = list(parallel_map(_square, items, workers=2, on_result=seen.append))
    assert sorted(got) == [x * x for x in items] and sorted(seen) == sorted(got)
    assert list(parallel_map(_square, items, workers=2, ordered=True)) == [x * x for x in items]
    pids = set(parallel_map(_pid, range(4), workers=2))
    assert os.getpid() not in pids and len(pids) == 2


def test_local_error_cancels_the_rest_and_is_raised() -> None:
    seen: list[int] = []
    with pytest.raises(ValueError, match="item 3 failed"):
        list(parallel_map(_fails_on_three, [3, *range(10, 30)], workers=2, on_result=seen.append))
    assert len(seen) < 10  # the items not started were cancelled


@pytest.mark.slow
def test_dask_local_cluster() -> None:
    items = list(range(6))
    assert list(parallel_map(_square, items, workers=2, dask="local", ordered=True)) == [x * x for x in items]
    seen: list[int] = []
    with pytest.raises(ValueError, match="item 3 failed"):
        list(parallel_map(_fails_on_three, [3, *range(10, 30)], workers=2, dask="local",
                          on_result=seen.append))
    assert len(seen) < 20


def test_dask_open_client_is_left_open() -> None:
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster, Client(cluster) as client:
        assert list(parallel_map(_square, [2, 3], dask=client, ordered=True)) == [4, 9]
        assert client.submit(_square, 4).result() == 16  # still usable


@pytest.mark.slow
def test_landscape_process_map_keeps_row_order_and_sets_threads() -> None:
    from rsmae.landscape.surface import process_map  # not at the top: spawned workers import this file

    rows = list(process_map(2, threads=1)(_row, range(6)))
    assert [int(r[0]) for r in rows] == list(range(6)) and {int(r[1]) for r in rows} == {1}
