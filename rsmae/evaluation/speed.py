"""Throughput bookkeeping of trained protocols: FLOP per image and model FLOPs utilisation (MFU).

MFU = achieved FLOP/s over the matmul peak measured on the same machine, in the same process and
precision (a large square ``A @ B^T``, the ``nn.Linear`` layout). The peak is measured once per
process and precision.
"""

from __future__ import annotations

import functools
import platform
import time
from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode


def cpu_name(cpuinfo: str = "/proc/cpuinfo") -> str:
    """The CPU's model name from ``cpuinfo`` (else ``platform.processor()``), to name benchmark machines."""
    try:
        with open(cpuinfo) as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"

__all__ = ["count_flops", "cpu_name", "matmul_peak"]


@functools.lru_cache(maxsize=4)
def matmul_peak(dtype: torch.dtype = torch.float32, device: str = "cpu", n: int = 1024, reps: int = 5
                ) -> float:
    """Best GFLOP/s of an ``n x n`` matmul in ``dtype`` on ``device`` over ``reps`` repeats (cached)."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=gen).to(device, dtype)
    b = torch.randn(n, n, generator=gen).to(device, dtype)
    n = n if device == "cpu" else 4 * n  # a GPU needs a larger problem to reach its peak
    if device != "cpu":
        a, b = a.repeat(4, 4), b.repeat(4, 4)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    a @ b.t()
    best = 0.0
    for _ in range(reps):
        sync()
        start = time.perf_counter()
        a @ b.t()
        sync()
        best = max(best, 2 * n**3 / (time.perf_counter() - start) / 1e9)
    return best


def count_flops(step: Callable[[], object]) -> int:
    """FLOP of one call of ``step`` (forward and backward when it calls ``backward``)."""
    with FlopCounterMode(display=False) as counter:
        step()
    return int(counter.get_total_flops())
