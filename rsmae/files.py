"""Writes that survive a kill: one atomic write and one removal for every file rsmae keeps.

A process killed at any moment leaves either the old file or the new one, never half of one:
:func:`atomic_path` hands out a temporary name unique to the process and the call, beside the
target (same file system), and renames it onto the target only when the block ends without an
error. :func:`remove_tree` renames a folder aside before deleting it, so a kill during a long
``rmtree`` never leaves a half-deleted store under its real name.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["atomic_path", "atomic_write_bytes", "atomic_write_json", "atomic_write_text",
           "read_json", "remove_tree"]

_ASIDE = ".removing-"


def _temporary(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")


def _discard(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        path.unlink(missing_ok=True)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path to write ``path`` through; renamed onto it when the block succeeds.

    The writer may make a file or a folder there (``torch.save``, ``savefig``, a Zarr group). On
    an error, or when the writer made nothing, the target keeps its old content and the temporary
    is removed.

    Args:
        path: The file (or folder) to write.

    Yields:
        A name in the same folder, unique to this process and call.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary(path)
    try:
        yield tmp
        if os.path.lexists(tmp):
            if path.is_dir() and not path.is_symlink():  # a folder cannot be replaced in one step
                remove_tree(path)
            os.replace(tmp, path)
    finally:
        _discard(tmp)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns the path."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns the path."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, value: Any, **dumps: Any) -> Path:  # noqa: ANN401
    """Write ``value`` as JSON to ``path`` atomically (``dumps`` go to :func:`json.dumps`)."""
    return atomic_write_text(path, json.dumps(value, **dumps))


def read_json(path: str | Path) -> Any | None:  # noqa: ANN401
    """The JSON value in ``path``, or ``None`` when it is missing or not valid JSON.

    For caches and resume records: an unreadable record means "not done", never a traceback.
    """
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def remove_tree(path: str | Path) -> None:
    """Delete a folder: rename it aside first (one step), then delete the renamed copy.

    Copies left aside by an earlier removal that was killed half-way are deleted too. A missing
    ``path`` is not an error.
    """
    path = Path(path)
    for stale in path.parent.glob(f".{path.name}{_ASIDE}*") if path.parent.is_dir() else ():
        shutil.rmtree(stale, ignore_errors=True)
    if not os.path.lexists(path):
        return
    if path.is_symlink() or not path.is_dir():
        path.unlink()
        return
    aside = path.with_name(f".{path.name}{_ASIDE}{os.getpid()}-{uuid.uuid4().hex[:8]}")
    os.replace(path, aside)
    shutil.rmtree(aside, ignore_errors=True)
