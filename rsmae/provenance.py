"""Where a table's numbers come from: the commit of the code that made them and the command.

Every table the project writes (benchmarks, the loss-landscape study) names its commit, command and
machine, so a number can be traced to the code that produced it.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["command_line", "git_commit"]

PACKAGE_ROOT = Path(__file__).resolve().parents[1]  # the checkout when rsmae is installed editable


def git_commit(measured: Sequence[str] = (), repo: str | Path | None = None) -> str:
    """Short commit of the checkout, naming those of the ``measured`` paths that have uncommitted changes.

    Args:
        measured: Paths (relative to the repository) whose uncommitted changes would change the
            numbers; empty: only the commit.
        repo: The repository; default the one rsmae is imported from.

    Returns:
        e.g. ``"e0693ff"`` or ``"e0693ff + uncommitted changes in rsmae/data"`` (only the changed ones of
        ``measured``); ``"unknown"`` outside git (an installed wheel).
    """
    cwd = Path(repo) if repo is not None else PACKAGE_ROOT
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=cwd, check=True,
                              capture_output=True, text=True).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "-z", "--", *measured], cwd=cwd, check=True,
                                capture_output=True, text=True).stdout if measured else ""
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    # "XY path" entries separated by NUL; a rename's source follows its entry without a status
    changed = [entry[3:] if entry[2:3] == " " else entry for entry in status.split("\0") if entry]
    dirty = [m for m in measured if any(_within(m, path) for path in changed)]
    return f"{head} + uncommitted changes in {', '.join(dirty)}" if dirty else head


def _within(measured: str, changed: str) -> bool:
    """Whether a changed path (a file, or an untracked folder ending in ``/``) touches a measured path."""
    m, c = measured.rstrip("/"), changed.rstrip("/")
    return m == c or c.startswith(m + "/") or m.startswith(c + "/")


def command_line(argv: Sequence[str] | None = None) -> str:
    """The command that runs this process, quoted for a shell (``python -m rsmae`` for the package)."""
    args = list(sys.argv if argv is None else argv)
    if not args:
        return ""
    first = Path(args[0])
    if first.name == "__main__.py" and first.parent.name == "rsmae":
        head = ["python", "-m", "rsmae"]
    else:
        head = ["python", args[0]] if first.suffix == ".py" else [first.name]
    return shlex.join(head + args[1:])
