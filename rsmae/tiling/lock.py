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
(its pid means nothing here) unless ``break_lock=True``; a live holder on this host never is.

A take-over has one winner even where ``flock`` does not work (NFS without locking, some FUSE
mounts), when every contender finds the same file stale. Each hard-links the stale file to a
claim named by its inode (``link`` fails when the name exists; the inode cannot be reused while
a contender has it open), and only the one whose claim is that file moves it off the path,
renaming it aside and checking that it moved that file; a lock created meanwhile by someone else
is put back with ``link``, which never replaces a file. The winner then creates the lock with
``O_EXCL`` like any run, and the losers look again (finding the new lock, they fail)::

    STORE.zarr.lock.<dev>.<inode>.claim     the stale lock, claimed (for microseconds)
    STORE.zarr.lock.<random>.aside          the stale lock, moved aside (for microseconds)
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rsmae.errors import StoreError, StoreLockedError

try:
    import fcntl
except ImportError:  # Windows: the O_EXCL file alone
    fcntl = None  # type: ignore[assignment]

__all__ = ["lock_path", "read_lock", "store_lock"]

log = logging.getLogger(__name__)
_PATIENCE = 10.0  # seconds to keep looking while other runs take, write and release the lock
_POLL = 0.05  # seconds between looks
_YOUNG = 2.0  # seconds a new lock file may stay without its record (its creator is writing it)


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
            only when that run is known to be gone. A live holder on this host is never
            taken over.

    Yields:
        This process's lock record (host, pid, start time).

    Raises:
        StoreLockedError: another live process holds the lock (naming its host and pid, the
            lock file and the fix), also with ``break_lock`` when it runs on this host.
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
            "started": datetime.fromtimestamp(now, UTC).isoformat(timespec="seconds")}


def _acquire(path: Path, break_lock: bool) -> tuple[int, dict[str, Any]]:
    deadline = time.monotonic() + _PATIENCE
    while time.monotonic() < deadline:
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o644)
        except FileExistsError:
            if not _take_over(path, break_lock):
                time.sleep(_POLL)  # released, being written or taken over by another: look again
            continue  # create it (again)
        _flock(fd, wait=True)  # a contender may hold it for a moment (it then finds it fresh)
        return fd, _write(fd)
    raise StoreLockedError(f"{path}: could not take the store lock within {_PATIENCE:.0f} s "
                           "(other runs keep taking and releasing it); retry")


def _take_over(path: Path, break_lock: bool) -> bool:
    """Remove a stale lock file (or, with ``break_lock``, one of another host) from ``path``.

    Returns:
        Whether this process removed it; ``False`` when it went away, is still being written
        or another contender removed it first.

    Raises:
        StoreLockedError: a live process holds the lock.
    """
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        free = _flock(fd)
        holder = _read_fd(fd)
        if not _same_file(fd, path):  # released or replaced between our open and read
            return False
        if holder is None and time.time() - os.fstat(fd).st_mtime < _YOUNG:
            return False  # its creator has not written the record yet: look again
        reason = _stale_reason(holder, free)
        if reason is None:
            _refuse_live(path, holder, break_lock)
        if not _remove_stale(path, fd):
            return False
    finally:
        os.close(fd)
    log.warning("%s: taking over the store lock of %s (%s)", path, _describe(holder),
                reason or "--break-lock given")
    return True


def _refuse_live(path: Path, holder: dict[str, Any] | None, break_lock: bool) -> None:
    """Raise for a live holder, unless ``break_lock`` is given and it is on another host."""
    if not break_lock:
        raise StoreLockedError(_held_message(path, holder))
    if holder is None or holder.get("host") == socket.gethostname():
        who = "an unknown process" if holder is None else f"pid {holder.get('pid')}"
        raise StoreLockedError(f"{path}: --break-lock refused: the store lock is held by {who} "
                               f"on this host, which is still running; stop that run first "
                               f"(it holds the lock file {path}), then rerun")


def _remove_stale(path: Path, fd: int) -> bool:
    """Move the stale lock file open as ``fd`` off ``path``: ``True`` for one contender only."""
    stale = os.fstat(fd)
    claim = path.with_name(f"{path.name}.{stale.st_dev}.{stale.st_ino}.claim")
    try:
        os.link(path, claim)
    except FileNotFoundError:
        return False  # gone: taken over meanwhile
    except FileExistsError:
        _check_claim(claim, path)
        return False  # another contender claimed it
    try:
        if not os.path.samestat(stale, os.stat(claim)):
            return False  # the path is already someone's new lock
        aside = path.with_name(f"{path.name}.{uuid.uuid4().hex}.aside")
        try:
            os.rename(path, aside)
        except FileNotFoundError:
            return False  # its holder (of another host, with break_lock) released it
        if os.path.samestat(stale, os.stat(aside)):
            os.unlink(aside)
            return True
        try:  # moved a lock made after its holder released ours: put it back, never over one
            os.link(aside, path)
        except FileExistsError:
            log.warning("%s: could not put back a lock file taken over by mistake", path)
        os.unlink(aside)
        return False
    finally:
        os.unlink(claim)


def _check_claim(claim: Path, path: Path) -> None:
    """Raise if the claim on a stale lock is old: its contender died between two calls."""
    try:
        age = time.time() - os.stat(claim).st_ctime  # the link made it: ctime is the claim's
    except FileNotFoundError:
        return
    if age > _YOUNG:
        raise StoreLockedError(f"{claim}: a take-over of the stale store lock {path} was "
                               f"interrupted; if no run uses the store, delete {claim} and "
                               f"{path}, then rerun")


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


def _read_fd(fd: int) -> dict[str, Any] | None:
    """The record in the open lock file ``fd`` (``None`` when empty or unreadable)."""
    try:
        holder = json.loads(os.pread(fd, 1 << 16, 0))
    except (OSError, ValueError):
        return None
    return holder if isinstance(holder, dict) else None


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
