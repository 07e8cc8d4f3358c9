"""budget_partitions.py: each run's last snapshot, correctness averaged over fold partitions per image."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import load_script

bench = load_script("benchmarks/budget_partitions.py")


def _write(path: Path, correct: dict[tuple[str, int], list[int]]) -> Path:
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["run", "step", "protocol", "fold", "image", "correct", "commit"])
        for (run, step), values in correct.items():
            for protocol in ("linear", "knn"):
                for i, c in enumerate(values):
                    writer.writerow([run, step, protocol, f"fold{i % 2}", i, c, "abc1234"])
    return path


def test_last_snapshots_are_averaged_over_partitions_per_image(tmp_path: Path) -> None:
    n = 60
    base = [1, 0] * (n // 2)
    first = _write(tmp_path / "a.csv", {("random init", 0): base, ("RCF floor", 0): [1] * n,
                                         ("mae", 750): [0] * n, ("mae", 1500): [1] * 50 + [0] * 10,
                                         ("other", 1500): base})
    second = _write(tmp_path / "b.csv", {("random init", 0): base, ("RCF floor", 0): [1] * n,
                                          ("mae", 1500): [0] * 10 + [1] * 50, ("other", 1500): base})
    parts = [bench.last_snapshots(p)[0] for p in (first, second)]
    assert parts[0][("mae", "linear")][0] == 1  # the last snapshot (1500), not step 750
    scores = bench.stack(parts)
    assert scores[("mae", "linear")].shape == (2, n)
    assert np.allclose(scores[("mae", "linear")].mean(0)[:10], 0.5)  # right once in two partitions
    md, rows = bench.tables(scores)
    text = "\n".join(md)
    assert "| mae | 83.3 [" in text  # 100 of 120 image-partitions
    assert "- linear: mae is higher than random init by 33.3 points" in text
    assert "- linear: mae is lower than RCF floor by 16.7 points" in text
    assert "Between the runs (1 pair; Bonferroni: each interval at 95 %" in text
    assert "p =" not in text  # averaged scores: no McNemar
    assert {(r["run"], r["partitions"], r["images"]) for r in rows} >= {("mae", "2", "60")}


def test_bad_input_is_named_and_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    good = _write(tmp_path / "a.csv", {("random init", 0): [1, 0]})
    assert bench.main([str(good), str(bad), "--out", str(tmp_path / "out")]) == 2
    assert f"error: {bad}: not a budget_curve.py CSV" in capsys.readouterr().err
    assert bench.main([str(good), "--out", str(tmp_path / "out")]) == 2
    assert "two or more CSVs" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
