"""The store lock: one writer per store, a clear error naming the holder, stale locks taken over."""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import multiprocessing as mp
import os
import signal
import socket
from pathlib import Path
from types import SimpleNamespace

import pytest

import rsmae.tiling.lock as lock_module
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


def _no_flock(fd: int, operation: int) -> None:
    raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))


def _without_flock(monkeypatch: pytest.MonkeyPatch) -> None:
    """A file system without flock (NFS without locking): every flock fails with ENOLCK."""
    fake = SimpleNamespace(flock=_no_flock, LOCK_EX=fcntl.LOCK_EX, LOCK_NB=fcntl.LOCK_NB)
    monkeypatch.setattr(lock_module, "fcntl", fake)


def _leave_stale_lock(store: Path) -> int:
    """A lock record of this host whose process has exited; returns its pid."""
    dead = CTX.Process(target=int)
    dead.start()
    dead.join(20)
    record = {"host": socket.gethostname(), "pid": dead.pid, "time": 0.0, "started": "1970-01-01"}
    lock_path(store).write_text(json.dumps(record))
    return dead.pid


def _contend(store: str, barrier: mp.Barrier, results: mp.Queue, release: mp.Event) -> None:
    barrier.wait(30)
    try:
        with store_lock(store):
            results.put(("held", os.getpid(), ""))
            release.wait(60)  # hold it until every contender has answered
    except Exception as err:  # noqa: BLE001  (any other error is reported, and fails the test)
        results.put(("locked" if isinstance(err, StoreLockedError) else repr(err), os.getpid(), str(err)))


@pytest.mark.parametrize("flock", [True, False], ids=["flock", "no-flock"])
def test_one_winner_when_contenders_take_over_one_stale_lock(tmp_path, monkeypatch, flock):
    """Six runs find one stale lock at once: one holds the store, the five others fail."""
    if not flock:
        _without_flock(monkeypatch)  # before the fork: the contenders inherit it
    store, n = tmp_path / "s.zarr", 6
    dead = _leave_stale_lock(store)
    barrier, results, release = CTX.Barrier(n), CTX.Queue(), CTX.Event()
    runs = [CTX.Process(target=_contend, args=(str(store), barrier, results, release)) for _ in range(n)]
    for run in runs:
        run.start()
    try:
        answers = [results.get(timeout=60) for _ in range(n)]
    finally:
        release.set()
        for run in runs:
            run.join(30)
    held = [pid for kind, pid, _ in answers if kind == "held"]
    assert len(held) == 1, f"{len(held)} runs hold the store lock at once"
    failed = [message for kind, _, message in answers if kind == "locked"]
    assert len(failed) == n - 1, answers
    here = socket.gethostname()
    # without flock a loser always looks again and finds the winner; with flock it may fail on
    # the stale file itself while the winner holds its flock (as before: it names the dead pid)
    named = [f"pid {held[0]} on host {here}"] + ([f"pid {dead} on host {here}"] if flock else [])
    assert all(any(name in message for name in named) for message in failed), failed
    assert [run.exitcode for run in runs] == [0] * n
    assert list(tmp_path.iterdir()) == []  # released; no claim or aside file left


@pytest.mark.parametrize("flock", [True, False], ids=["flock", "no-flock"])
def test_break_lock_refused_for_a_live_holder_on_this_host(tmp_path, monkeypatch, flock):
    if not flock:
        _without_flock(monkeypatch)
    store = tmp_path / "s.zarr"
    held, release = CTX.Event(), CTX.Event()
    child = CTX.Process(target=_hold, args=(str(store), held, release))
    child.start()
    try:
        assert held.wait(20)
        with pytest.raises(StoreLockedError) as info, store_lock(store, break_lock=True):
            pytest.fail("--break-lock took the lock of a live run on this host")
        message = str(info.value)
        assert f"pid {child.pid}" in message and str(lock_path(store)) in message
        assert "stop that run first" in message
        assert read_lock(lock_path(store))["pid"] == child.pid  # untouched
    finally:
        release.set()
        child.join(20)
    assert child.exitcode == 0 and not lock_path(store).exists()


def test_break_lock_takes_over_a_stale_lock_of_this_host(tmp_path, caplog):
    store = tmp_path / "s.zarr"
    dead = _leave_stale_lock(store)
    with caplog.at_level(logging.WARNING, logger="rsmae.tiling.lock"), store_lock(store, break_lock=True):
        assert read_lock(lock_path(store))["pid"] == os.getpid()
    assert any(f"pid {dead} is no longer running" in r.getMessage() for r in caplog.records)
    assert list(tmp_path.iterdir()) == []


def test_lock_made_during_a_take_over_is_put_back(tmp_path, monkeypatch):
    """The stale lock's file is replaced by a new run's lock just before it is moved aside."""
    store = tmp_path / "s.zarr"
    path = lock_path(store)
    _leave_stale_lock(store)
    live = {"host": socket.gethostname(), "pid": os.getppid(), "time": 1e12, "started": "later"}
    rename = os.rename

    def released_and_relocked(src: str, dst: str) -> None:
        monkeypatch.setattr(os, "rename", rename)  # once
        path.unlink()
        path.write_text(json.dumps(live))
        rename(src, dst)

    monkeypatch.setattr(os, "rename", released_and_relocked)
    with pytest.raises(StoreLockedError, match=f"pid {os.getppid()} on host"), store_lock(store):
        pytest.fail("took over a lock made during the take-over")
    assert os.rename is rename  # the race did happen
    assert read_lock(path) == live and [p.name for p in tmp_path.iterdir()] == [path.name]


def test_interrupted_take_over_names_its_claim(tmp_path, monkeypatch):
    store = tmp_path / "s.zarr"
    path = lock_path(store)
    _leave_stale_lock(store)
    stat = path.stat()
    claim = path.with_name(f"{path.name}.{stat.st_dev}.{stat.st_ino}.claim")
    os.link(path, claim)  # as left by a run killed while claiming the stale lock
    monkeypatch.setattr(lock_module, "_YOUNG", -1.0)  # that claim is old
    with pytest.raises(StoreLockedError, match="take-over of the stale store lock .* interrupted"), \
            store_lock(store):
        pass
    assert claim.exists() and path.exists()
