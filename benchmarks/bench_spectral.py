"""What the wavelength-generated patch embedding costs (issue 24): a pretraining step and inference.

The same MAE (``vit_tiny``/8, 64 px, 13 Sentinel-2 bands, batch 32) built twice through
``PretrainTask``: the fixed conv patch embedding and ``patch_embed="spectral"`` (kernels and the
decoder's output layer generated from the bands' wavelengths). Timed in interleaved rounds in one
process: a training step (forward, backward, AdamW step) and an eval forward of the encoder (the
spectral kernels cached after the first call). FLOP per step are counted
(``torch.utils.flop_counter``); MFU is against the matmul peak of the step's precision measured here.

Run::

    .venv/bin/python benchmarks/bench_spectral.py --threads 1
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from provenance import git_commit

from rsmae.bands import get_sensor
from rsmae.evaluation.speed import count_flops, cpu_name, matmul_peak
from rsmae.tasks import PretrainTask

ROOT = Path(__file__).resolve().parents[1]
MEASURED = ("rsmae/models", "rsmae/tasks", "benchmarks/bench_spectral.py")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per round and model")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    return parser.parse_args(argv)


def build(embed: str) -> PretrainTask:
    bands = list(get_sensor("s2-l1c").names)
    info = {"bands": bands, "sensor": "s2-l1c", "mean": [1000.0] * 13, "std": [500.0] * 13, "gsd": 10.0,
            "tile_size": 64}
    torch.manual_seed(0)
    return PretrainTask(preset="vit_tiny", patch_size=8, img_size=64, in_chans=13, data_info=info,
                        patch_embed=embed)


Step = Callable[[], None]


def runners(task: PretrainTask, batch: int) -> tuple[Step, Step, Step]:
    """Training step, FLOP-counted step (no optimiser) and an eval forward of the encoder."""
    x = torch.randn(batch, 13, 64, 64, generator=torch.Generator().manual_seed(1))
    noise = task.student.make_noise(batch, generator=torch.Generator().manual_seed(2))
    opt = torch.optim.AdamW(task.parameters(), lr=1e-4)

    def grad() -> None:
        task.model(x, noise=noise).loss.backward()

    def train() -> None:
        opt.zero_grad(set_to_none=True)
        grad()
        opt.step()

    encoder = task.encoder()

    @torch.no_grad()
    def infer() -> None:
        encoder.eval()
        encoder.forward_features(x)

    return train, grad, infer


def timed(fn: Callable[[], None], steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - start) / steps


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    load = os.getloadavg()[0]
    tasks = {name: build(name) for name in ("conv", "spectral")}
    runs = {name: runners(task, args.batch) for name, task in tasks.items()}
    gflop = {name: count_flops(r[1]) / 1e9 for name, r in runs.items()}
    times: dict[tuple[str, str], list[float]] = {}
    for train, _, infer in runs.values():  # warm-up (and the spectral kernel cache)
        train(), infer()
    for _ in range(args.rounds):
        for name, (train, _, infer) in runs.items():
            times.setdefault((name, "train"), []).append(timed(train, args.steps))
            times.setdefault((name, "infer"), []).append(timed(infer, args.steps))
    peak = matmul_peak(torch.float32)
    med = {k: statistics.median(v) for k, v in times.items()}
    lines = ["| embedding | train step (ms) | GFLOP / step | MFU (fp32 peak) | encoder eval forward (ms) |",
             "|---|---:|---:|---:|---:|"]
    for name in runs:
        t = med[(name, "train")]
        lines.append(f"| {name} | {1e3 * t:.0f} | {gflop[name]:.1f} | {100 * gflop[name] / t / peak:.0f} % | "
                     f"{1e3 * med[(name, 'infer')]:.1f} |")
    ratio_t = med[("spectral", "train")] / med[("conv", "train")]
    ratio_i = med[("spectral", "infer")] / med[("conv", "infer")]
    given = sys.argv[1:] if argv is None else argv
    command = " ".join([".venv/bin/python benchmarks/bench_spectral.py", *given])
    text = "\n".join([
        "# The spectral (wavelength-generated) patch embedding against the fixed one", "",
        f"- commit: {git_commit(MEASURED)}",
        f"- command: `{command}`",
        f"- machine: {cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"{args.threads} thread(s), fp32; load average (1 min) at start / end {load:.2f} / "
        f"{os.getloadavg()[0]:.2f}; matmul peak "
        f"{peak:.0f} GFLOP/s measured in this run",
        f"- MAE vit_tiny/8, 64 px, 13 Sentinel-2 L1C bands, batch {args.batch}, 75 % masking; medians of "
        f"{args.rounds} interleaved rounds of {args.steps} steps", "", *lines, "",
        f"Spectral / fixed: training step {ratio_t:.2f}x ({100 * (ratio_t - 1):+.0f} %), encoder eval "
        f"forward {ratio_i:.2f}x ({100 * (ratio_i - 1):+.0f} %), both measured in this run.", ""])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "spectral_embed.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
