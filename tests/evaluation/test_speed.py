"""Machine facts of the benchmarks: the CPU's name, the matmul peak, FLOP counts."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from rsmae.evaluation.speed import count_flops, cpu_name, matmul_peak


def test_cpu_name_reads_the_model_line_and_falls_back(tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 9B14\nflags\t: avx2\n")
    assert cpu_name(str(info)) == "AMD EPYC 9B14"
    assert cpu_name(str(tmp_path / "missing"))  # platform's answer, never empty


def test_matmul_peak_is_positive_and_flops_of_a_linear_layer_are_exact() -> None:
    assert matmul_peak(torch.float32, n=128, reps=2) > 0
    layer = nn.Linear(16, 8, bias=False)
    flops = count_flops(lambda: layer(torch.zeros(4, 16)))
    assert flops == 2 * 4 * 16 * 8
