"""The benchmarks run end to end on tiny settings and write their tables (so they do not rot)."""

from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import DATA, ROOT

pytestmark = pytest.mark.slow  # end to end, several seconds each (make quick leaves them out)

# The two MAE code paths sum in different orders: equal to the bit on an AVX-512 CPU, 1.2e-07 apart on
# an AVX2-only one (the loss is ~1.15). Any CPU must stay within float32 rounding of a few ops.
LOSS_TOL = 1e-5
EQUIVALENCE = """
import argparse
import torch
from bench_pretrain import check_equivalence
torch.manual_seed(0)
print(torch.backends.cpu.get_cpu_capability(), check_equivalence(argparse.Namespace(img=32, bands=13)))
"""


def _run(*args: str, env: dict[str, str] | None = None, cwd: Path = ROOT) -> str:
    """Run python with ``args`` in ``cwd`` (``-c`` code run in ``benchmarks/`` imports its scripts)."""
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=600, cwd=cwd,
                          env=None if env is None else {**os.environ, **env})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def _loss_diff(text: str) -> float:
    match = re.search(r"\|loss\(ours\) - loss\(official\)\| with shared weights and noise: (\S+)", text)
    assert match, text[-2000:]
    return float(match.group(1))


def test_equivalence_within_tolerance_without_avx512() -> None:
    """The AVX2 kernels (as on a CPU without AVX-512) give a non-zero difference, within LOSS_TOL."""
    out = _run("-c", EQUIVALENCE, env={"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
               cwd=ROOT / "benchmarks")
    capability, diff = out.split()[-2:]
    if platform.machine().lower() in ("x86_64", "amd64"):
        assert capability == "AVX2"
    assert float(diff) <= LOSS_TOL


def test_bench_pretrain_writes_table(tmp_path: Path) -> None:
    out = tmp_path / "pretrain.md"
    _run("benchmarks/bench_pretrain.py", "--batch", "2", "--steps", "1", "--warmup", "0", "--img", "32",
         "--compile", "off", "--precisions", "fp32", "--methods", "MAE,RC-MAE", "--peak-size", "256",
         "--loader-samples", "64", "--data", str(DATA), "--out", str(out))
    text = out.read_text()
    assert _loss_diff(text) <= LOSS_TOL  # exactly 0 only on some CPUs
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


def test_transfer_results_flag_is_a_deprecated_out(tmp_path: Path) -> None:
    """``--results`` still works (as ``--out``) and warns; the scripts import rsmae.experiments only."""
    proc = subprocess.run([sys.executable, "benchmarks/transfer.py", "--config",
                           "configs/bench/cpu-small.yaml", "--count", "--results", str(tmp_path)],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "210", proc.stderr[-2000:]
    assert "FutureWarning: --results is deprecated; use --out" in proc.stderr
    changed = subprocess.run([sys.executable, "benchmarks/change_tables.py", "--config",
                              "configs/bench/cd-oscd-loco.yaml", "--count"], capture_output=True, text=True,
                             cwd=ROOT, timeout=300)
    assert changed.returncode == 0 and changed.stdout.strip() == "42", changed.stderr[-2000:]
