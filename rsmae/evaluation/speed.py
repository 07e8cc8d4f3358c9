"""Throughput bookkeeping of trained protocols: FLOP per image and model FLOPs utilisation (MFU).

MFU = achieved FLOP/s over the matmul peak measured on the same machine, in the same process and
precision (a large square ``A @ B^T``, the ``nn.Linear`` layout). The peak is measured once per
process and precision.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["count_flops", "matmul_peak"]


@functools.lru_cache(maxsize=4)
def matmul_peak(dtype: torch.dtype = torch.float32, n: int = 1024, reps: int = 5) -> float:
    """Best GFLOP/s of an ``n x n`` matmul in ``dtype`` over ``reps`` repeats (cached per process)."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=gen).to(dtype)
    b = torch.randn(n, n, generator=gen).to(dtype)
    a @ b.t()
    best = 0.0
    for _ in range(reps):
        start = time.perf_counter()
        a @ b.t()
        best = max(best, 2 * n**3 / (time.perf_counter() - start) / 1e9)
    return best


def count_flops(step: Callable[[], object]) -> int:
    """FLOP of one call of ``step`` (forward and backward when it calls ``backward``)."""
    with FlopCounterMode(display=False) as counter:
        step()
    return int(counter.get_total_flops())
