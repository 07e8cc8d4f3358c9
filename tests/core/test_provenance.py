"""Provenance of tables: the commit of the code (flagged when measured code changed) and the command."""

from __future__ import annotations

import subprocess
from pathlib import Path

from rsmae.provenance import command_line, git_commit
from tests.conftest import ROOT


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout.strip()


def test_the_commit_of_this_checkout() -> None:
    assert git_commit() == _git(ROOT, "rev-parse", "--short", "HEAD")


def test_uncommitted_changes_in_measured_paths_are_named(tmp_path: Path) -> None:
    _git(tmp_path, "init", "-q")
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "a.py").write_text("x = 1\n")
    (tmp_path / "notes.md").write_text("n\n")
    _git(tmp_path, "add", ".")
    _git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "c")
    head = _git(tmp_path, "rev-parse", "--short", "HEAD")
    (tmp_path / "notes.md").write_text("changed\n")  # not measured code
    assert git_commit(["code"], tmp_path) == head
    (tmp_path / "code" / "a.py").write_text("x = 2\n")
    assert git_commit(["code"], tmp_path) == f"{head} + uncommitted changes in code"
    both = git_commit(["code", "notes.md", "docs"], tmp_path)  # only the changed ones are named
    assert both == f"{head} + uncommitted changes in code, notes.md"
    (tmp_path / "new").mkdir()
    (tmp_path / "new" / "b.py").write_text("y = 1\n")  # untracked: git shows only "new/"
    assert git_commit(["docs", "new/b.py"], tmp_path) == f"{head} + uncommitted changes in new/b.py"


def test_outside_git_the_commit_is_unknown(tmp_path: Path) -> None:
    assert git_commit(repo=tmp_path) == "unknown"


def test_command_line_is_quoted_for_a_shell() -> None:
    main = str(ROOT / "rsmae" / "__main__.py")
    got = command_line([main, "landscape", "--config", "a b.yaml"])
    assert got == "python -m rsmae landscape --config 'a b.yaml'"
    assert command_line(["benchmarks/x.py", "--n", "2"]) == "python benchmarks/x.py --n 2"
    assert command_line(["/venv/bin/rsmae", "predict"]) == "rsmae predict"
