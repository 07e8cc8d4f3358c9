"""An exclusive write lock on a tile store, so two tiling runs never write one ``--out``.

The lock is a file beside the store, ``<store>.lock`` (beside, not inside: ``--overwrite``
removes the store folder, and the lock must outlive that)::

    STORE.zarr/            the store
    STORE.zarr.lock        {"host": "node17", "pid": 4242, "started": "2025-...Z", "time": 1.7e9}

It is created atomically (``O_CREAT | O_EXCL``) and, where the file system supports it, also held
with ``fcntl.flock``, which the kernel releases when the holder dies. A second process finds the
file and fails with :class:`~rsmae.errors.StoreLockedError` naming the holder. A lock left by a
killed run is *stale* when it was made on this host and its process is gone (no such pid, or
the pid now belongs to a process started after the lock, or no one holds the flock while the
pid is gone): it is logged and taken over. A lock made on another host is never taken over
(its pid means nothing here) unless ``break_lock=True``.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from rsmae.errors import StoreError, StoreLockedError

try:
    import fcntl
except ImportError:  # Windows: the O_EXCL file alone
    fcntl = None  # type: ignore[assignment]

__all__ = ["lock_path", "read_lock", "store_lock"]

log = logging.getLogger(__name__)
_ATTEMPTS = 5


def lock_path(store: str | Path) -> Path:
    """The lock file of ``store``: ``<store>.lock`` beside it."""
    store = Path(os.path.abspath(store))
    return store.with_name(store.name + ".lock")


def read_lock(path: str | Path) -> dict[str, Any] | None:
    """The holder recorded in a lock file, or ``None`` when it is missing, empty or unreadable."""
    try:
        text = Path(path).read_text()
        holder = json.loads(text)
    except (OSError, ValueError):
        return None
    return holder if isinstance(holder, dict) else None


@contextlib.contextmanager
def store_lock(store: str | Path, *, break_lock: bool = False) -> Iterator[dict[str, Any]]:
    """Hold the exclusive write lock of ``store`` for the ``with`` block.

    Args:
        store: The store path (``--out``); it need not exist yet.
        break_lock: Take the lock over even when another host holds it (``--break-lock``):
            only when that run is known to be gone.

    Yields:
        This process's lock record (host, pid, start time).

    Raises:
        StoreLockedError: another live process holds the lock (naming its host and pid, the
            lock file and the fix).
        StoreError: the lock file cannot be created (folder not writable).
    """
    path = lock_path(store)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, me = _acquire(path, break_lock)
    except StoreError:
        raise
    except OSError as err:
        raise StoreError(f"{path}: cannot create the store lock ({err.strerror}); choose a "
                         "writable --out") from err
    try:
        yield me
    finally:
        _release(path, fd)


def _record() -> dict[str, Any]:
    now = time.time()
    return {"host": socket.gethostname(), "pid": os.getpid(), "time": now,
            "started": datetime.fromtimestamp(now, timezone.utc).isoformat(timespec="seconds")}


def _acquire(path: Path, break_lock: bool) -> tuple[int, dict[str, Any]]:
    for _ in range(_ATTEMPTS):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o644)
        except FileExistsError:
            taken = _take_over(path, break_lock)
            if taken is not None:
                return taken
            continue  # the holder released it meanwhile: try to create it again
        _flock(fd, wait=True)  # a contender may hold it for a moment (it then finds it fresh)
        return fd, _write(fd)
    raise StoreLockedError(f"{path}: could not take the store lock after {_ATTEMPTS} attempts "
                           "(other runs keep taking and releasing it); retry")


def _take_over(path: Path, break_lock: bool) -> tuple[int, dict[str, Any]] | None:
    """Take over a stale (or, with ``break_lock``, any) lock; ``None`` if the file went away."""
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return None
    free = _flock(fd)
    if not _same_file(fd, path):  # released or replaced between our open and flock
        os.close(fd)
        return None
    holder = read_lock(path)
    if holder is None and free and time.time() - os.fstat(fd).st_mtime < 2.0:
        os.close(fd)  # the creator has not written its record yet
        time.sleep(0.1)
        return None
    reason = _stale_reason(holder, free)
    if reason is None and not break_lock:
        os.close(fd)
        raise StoreLockedError(_held_message(path, holder))
    log.warning("%s: taking over the store lock of %s (%s)", path, _describe(holder),
                reason or "--break-lock given")
    try:  # a new file replaces the old one: its old holder, if alive, will not unlink ours
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        new = os.open(tmp, os.O_CREAT | os.O_TRUNC | os.O_RDWR, 0o644)
        _flock(new, wait=True)
        me = _write(new)
        os.replace(tmp, path)
    finally:
        os.close(fd)
    return new, me


def _stale_reason(holder: dict[str, Any] | None, flock_free: bool) -> str | None:
    """Why the lock is stale, or ``None`` when its holder may still be running."""
    if not flock_free:  # a live process holds the flock (the kernel drops it when one dies)
        return None
    if holder is None:
        return "unreadable lock file, no process holds it"
    if holder.get("host") != socket.gethostname():
        return None
    pid = int(holder.get("pid", -1))
    if flock_free and pid == os.getpid():
        return "left by this process"
    if not _pid_alive(pid):
        return f"pid {pid} is no longer running"
    if _started_after(pid, float(holder.get("time", 0.0))):
        return f"pid {pid} now belongs to a newer process"
    return None


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _started_after(pid: int, when: float) -> bool:
    """Whether process ``pid`` started after ``when`` (Linux ``/proc``; ``False`` if unknown)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime"))
        start = boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return False
    return start > when + 1.0


def _flock(fd: int, *, wait: bool = False) -> bool:
    """Take the flock; ``True`` when taken or unsupported, ``False`` if another process has it."""
    if fcntl is None:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except OSError as err:
        if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        return True  # file system without flock (some network mounts): the O_EXCL file alone
    return True


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False


def _write(fd: int) -> dict[str, Any]:
    me = _record()
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(me).encode(), 0)
    os.fsync(fd)
    return me


def _release(path: Path, fd: int) -> None:
    try:
        if _same_file(fd, path):
            path.unlink()
    finally:
        os.close(fd)  # releases the flock


def _describe(holder: dict[str, Any] | None) -> str:
    if holder is None:
        return "an unknown process"
    return f"pid {holder.get('pid')} on host {holder.get('host')} (since {holder.get('started')})"


def _held_message(path: Path, holder: dict[str, Any] | None) -> str:
    store = path.with_name(path.name.removesuffix(".lock"))
    other_host = holder is not None and holder.get("host") != socket.gethostname()
    fix = ("if that run is gone (the host was shut down or the job killed), rerun with "
           "--break-lock or delete the lock file" if other_host else
           "wait for it to finish, or stop it; a lock left by a killed run here is taken over "
           "by itself")
    return (f"{store}: another tiling run holds the store lock: {_describe(holder)} "
            f"(lock file {path}); {fix}")
