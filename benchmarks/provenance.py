"""Where a benchmark's numbers come from: :func:`rsmae.provenance.git_commit` of this checkout."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from rsmae.provenance import git_commit as _git_commit

REPO = Path(__file__).resolve().parents[1]


def git_commit(measured: Sequence[str] = ()) -> str:
    """Short commit of this checkout, with the ``measured`` paths that have uncommitted changes."""
    return _git_commit(measured, REPO)
