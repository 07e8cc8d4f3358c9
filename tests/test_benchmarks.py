"""The benchmarks run end to end on tiny settings and write their tables (so they do not rot)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import DATA, ROOT


def _run(*args: str) -> str:
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_bench_pretrain_writes_table(tmp_path: Path) -> None:
    out = tmp_path / "pretrain.md"
    _run("benchmarks/bench_pretrain.py", "--batch", "2", "--steps", "1", "--warmup", "0", "--img", "32",
         "--compile", "off", "--precisions", "fp32", "--methods", "MAE,RC-MAE", "--peak-size", "256",
         "--loader-samples", "64", "--data", str(DATA), "--out", str(out))
    text = out.read_text()
    assert "|loss(ours) - loss(official)| with shared weights and noise: 0.0e+00" in text
    rows = [line for line in text.splitlines() if line.startswith("| MAE") or line.startswith("| RC-MAE")]
    assert len(rows) == 4 and all("%" in row for row in rows)  # official + ours per method, with MFU
    assert "loader alone:" in text and out.with_suffix(".csv").is_file()


def test_bench_loader_writes_table(tmp_path: Path) -> None:
    _run("benchmarks/bench_loader.py", "--repeats", "1", "--seconds", "0.5", "--samples", "200",
         "--data", str(DATA), "--out", str(tmp_path))
    text = (tmp_path / "loader.md").read_text()
    assert "## 1. Tiling vs reading" in text and "| landsat8 | 1 |" in text
    for kind in ("rsmae", "rsmae-native"):
        assert f"**{kind} / torchgeo**" in text
    assert (tmp_path / "loader.csv").read_text().count("\n") > 10
