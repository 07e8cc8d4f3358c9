"""Where a benchmark's numbers come from: the commit of the checkout, flagged when measured code changed."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def git_commit(measured: Sequence[str] = ()) -> str:
    """Short commit of the checkout, with the ``measured`` paths that have uncommitted changes.

    Args:
        measured: Paths (relative to the repository) whose uncommitted changes would change the
            numbers; empty: only the commit.

    Returns:
        e.g. ``"e0693ff"`` or ``"e0693ff + uncommitted changes in rsmae/data"``; ``"unknown"`` outside git.
    """
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, check=True,
                              capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", *measured], cwd=REPO, check=True,
                               capture_output=True, text=True).stdout.strip() if measured else ""
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{head} + uncommitted changes in {', '.join(measured)}" if dirty else head
