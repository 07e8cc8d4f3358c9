"""The store lock: one writer per store, a clear error naming the holder, stale locks taken over."""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
import signal
import socket

import pytest

from rsmae.errors import StoreError, StoreLockedError
from rsmae.tiling.lock import lock_path, read_lock, store_lock

CTX = mp.get_context("fork")  # the child only takes a file lock: no threads of its own


def _hold(store: str, held: mp.Event, release: mp.Event) -> None:
    with store_lock(store):
        held.set()
        release.wait(30)


def _hold_forever(store: str, held: mp.Event) -> None:
    with store_lock(store):
        held.set()
        signal.pause()


def test_second_holder_fails_naming_the_first(tmp_path):
    store = tmp_path / "s.zarr"
    held, release = CTX.Event(), CTX.Event()
    child = CTX.Process(target=_hold, args=(str(store), held, release))
    child.start()
    try:
        assert held.wait(20)
        with pytest.raises(StoreLockedError) as info:
            with store_lock(store):
                pytest.fail("two holders of one store lock")
        message = str(info.value)
        assert f"pid {child.pid} on host {socket.gethostname()}" in message
        assert str(lock_path(store)) in message and "wait for it to finish" in message
        assert isinstance(info.value, StoreError) and isinstance(info.value, BlockingIOError)
    finally:
        release.set()
        child.join(20)
    assert child.exitcode == 0 and not lock_path(store).exists()  # released on exit
    with store_lock(store) as me:  # free again
        assert read_lock(lock_path(store))["pid"] == os.getpid() == me["pid"]
    assert not lock_path(store).exists()


def test_stale_lock_of_a_killed_run_is_taken_over(tmp_path, caplog):
    store = tmp_path / "s.zarr"
    held = CTX.Event()
    child = CTX.Process(target=_hold_forever, args=(str(store), held))
    child.start()
    assert held.wait(20)
    os.kill(child.pid, signal.SIGKILL)
    child.join(20)
    assert read_lock(lock_path(store))["pid"] == child.pid  # left behind by the killed run
    with caplog.at_level(logging.WARNING, logger="rsmae.tiling.lock"):
        with store_lock(store):
            assert read_lock(lock_path(store))["pid"] == os.getpid()
    assert [r for r in caplog.records
            if f"pid {child.pid} is no longer running" in r.getMessage() and "taking over" in r.getMessage()]
    assert not lock_path(store).exists()


def test_lock_of_another_host_is_not_stolen_unless_asked(tmp_path, caplog):
    store = tmp_path / "s.zarr"
    other = {"host": "node-elsewhere", "pid": 4242, "time": 0.0, "started": "2020-01-01T00:00:00+00:00"}
    lock_path(store).write_text(json.dumps(other))
    with pytest.raises(StoreLockedError, match="pid 4242 on host node-elsewhere.*--break-lock"):
        with store_lock(store):
            pass
    assert read_lock(lock_path(store)) == other  # untouched
    with caplog.at_level(logging.WARNING, logger="rsmae.tiling.lock"), store_lock(store, break_lock=True):
        assert read_lock(lock_path(store))["host"] == socket.gethostname()
    assert any("--break-lock given" in r.getMessage() for r in caplog.records)


def test_lock_released_when_the_run_fails(tmp_path):
    store = tmp_path / "s.zarr"
    with pytest.raises(ValueError, match="boom"), store_lock(store):
        assert lock_path(store).is_file()
        raise ValueError("boom")
    assert not lock_path(store).exists()


def test_lock_in_a_folder_that_denies_writing(tmp_path):
    with pytest.raises(StoreError, match="cannot create the store lock"), store_lock("/proc/rsmae.zarr"):
        pass
