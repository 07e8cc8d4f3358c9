"""Where a benchmark's numbers come from: :func:`rsmae.provenance.git_commit` of this checkout."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from rsmae.provenance import git_commit as _git_commit

REPO = Path(__file__).resolve().parents[1]


def git_commit(measured: Sequence[str] = ()) -> str:
    """Short commit of this checkout, with the ``measured`` paths that have uncommitted changes."""
    return _git_commit(measured, REPO)


def run_provenance(script: str, measured: Sequence[str], argv: Sequence[str] | None) -> dict[str, str]:
    """Commit (naming the ``measured`` paths with uncommitted changes), command and machine of a run.

    Args:
        script: The benchmark's path from the repository root, e.g. ``"benchmarks/bench_change.py"``.
        measured: Paths whose code makes the numbers.
        argv: The run's arguments (``None``: this process's).
    """
    import os
    import sys

    import torch

    from rsmae.evaluation.speed import cpu_name

    given = sys.argv[1:] if argv is None else list(argv)
    return {"commit": git_commit(measured), "command": " ".join([".venv/bin/python", script, *given]),
            "machine": f"{cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}, "
                       f"{torch.get_num_threads()} torch thread(s)"}
