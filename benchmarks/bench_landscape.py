"""Speed of loss-surface grid points: rsmae's vmap-batched ``functional_call`` against a plain loop.

Both evaluate the same points ``theta + a d1 + b d2`` of a 2D grid (filter-normalised directions,
fixed batch and masks) of the same model in eval mode with the same (math) attention kernel:

- "loop": the usual way (Li et al.'s ``plot_surface.py``): for every point, write the perturbed
  weights into the model (``param.copy_(theta).add_(d1, alpha=a).add_(d2, alpha=b)``), then run a
  forward under ``no_grad``;
- "loop, 1 thread": the same on one torch thread;
- "ours": :func:`rsmae.landscape.evaluate_points`: ``chunk`` points at a time, their weights
  stacked and run through ``torch.func.vmap`` over ``functional_call`` (one batched forward for
  all of them; every linear becomes one batched matmul). As everywhere in rsmae, an evaluation
  whose largest activation (times the points batched) is under 2^20 elements runs on one thread
  (``Objective.auto_threads``), so "vs faster loop" compares against the better of both loops.

Cases: the MAE pretraining loss (fixed mask noise) on real EuroSAT tiles for ``vit_test`` at 32 px
and ``vit_tiny`` at 64 px, and the linear-probe loss (encoder + fixed head) for ``vit_test``.
Points/s use the best of the interleaved rounds (other processes can only add time; the median is
shown too). FLOP per point come from ``torch.utils.flop_counter.FlopCounterMode`` on one forward;
MFU = points/s x FLOP per point / the fp32 peak of a large square matmul measured in this run with
the same threads. Before timing, both paths must give the same losses (max difference printed).

Run (about 3-6 minutes on 2 cores, more when the machine is busy)::

    cd /work/main && .venv/bin/python benchmarks/bench_landscape.py
    .venv/bin/python benchmarks/bench_landscape.py --threads 1          # on a busy machine
    .venv/bin/python benchmarks/bench_landscape.py --points 16 --rounds 2 --cases mae_test   # quick

Writes ``benchmarks/results/landscape.md`` and ``landscape.csv`` and prints the table.
"""

from __future__ import annotations

import argparse
import copy
import csv
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from provenance import git_commit
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from rsmae.datasets import EuroSAT
from rsmae.evaluation.speed import cpu_name, matmul_peak
from rsmae.landscape import MAEObjective, Objective, ProbeObjective, evaluate_points, random_direction
from rsmae.models import MaskedAutoencoder, create_encoder, mae_decoder_defaults, set_fused_attention

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
EUROSAT = ROOT.parent / "shared" / "data" / "eurosat_ms_subset"


@dataclass
class Case:
    """One model x objective benchmarked, with its loop and batched variants."""

    name: str
    objective: Objective
    loop_loss: Callable[[], float]  # forward of the loop's model as it stands
    model: nn.Module  # the loop's model (weights overwritten per point)
    names: list[str]
    samples: int
    times: dict[str, list[float]] = field(default_factory=dict)
    gflop_per_point: float = 0.0
    max_diff: float = 0.0


def eurosat(n: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` real EuroSAT images (standardised per band, every class in turn) cropped to ``size``."""
    ds = EuroSAT(EUROSAT, "train")
    images, labels = ds.tensors()
    order = torch.argsort(torch.arange(len(labels)) % 10 * 1000 + labels, stable=True)[:n]
    x = images[order][..., :size, :size]
    mean, std = x.mean(dim=(0, 2, 3), keepdim=True), x.std(dim=(0, 2, 3), keepdim=True)
    return (x - mean) / std, labels[order]


def _loop_model(module: nn.Module) -> nn.Module:
    model = copy.deepcopy(module).eval().requires_grad_(False)
    set_fused_attention(model, False)  # math attention on CPUs, as PretrainTask picks there
    return model


def build_case(name: str, batch: int) -> Case:
    """The model, data and objective of a case."""
    torch.manual_seed(0)
    preset, size, kind = {"mae_test": ("vit_test", 32, "mae"), "mae_tiny": ("vit_tiny", 64, "mae"),
                          "probe_test": ("vit_test", 32, "probe")}[name]
    images, labels = eurosat(batch, size)
    enc = create_encoder(preset, in_chans=13, img_size=size, patch_size=8)
    if kind == "mae":
        mae = MaskedAutoencoder(enc, **mae_decoder_defaults(preset))
        objective: Objective = MAEObjective(mae, images, seed=0)
        model = _loop_model(mae)
        noise = objective.noise[0]

        def loop_loss() -> float:
            return float(model(images, noise=noise).loss)
    else:
        objective = ProbeObjective(enc, images, labels, steps=100)
        model = _loop_model(objective.module)
        head = objective.head

        def loop_loss() -> float:
            return float(nn.functional.cross_entropy(head(model(images)), objective.labels))
    _ = objective.work  # measured once now, not inside the FLOP count
    return Case(f"{kind} {preset} {size}px", objective, loop_loss, model, list(objective.params), batch)


def run_loop(case: Case, dirs: list[dict[str, torch.Tensor]], coefs: np.ndarray) -> np.ndarray:
    """The plain loop: copy each point's weights into the model, evaluate."""
    params = dict(case.model.named_parameters())
    theta = case.objective.params
    out = []
    with torch.no_grad():
        for a, b in coefs:
            for n in case.names:
                params[n].copy_(theta[n]).add_(dirs[0][n], alpha=float(a)).add_(dirs[1][n], alpha=float(b))
            out.append(case.loop_loss())
    return np.asarray(out)


def run_ours(case: Case, dirs: list[dict[str, torch.Tensor]], coefs: np.ndarray, chunk: int) -> np.ndarray:
    """rsmae: vmap-batched functional_call, ``chunk`` points per forward."""
    return evaluate_points(case.objective, dirs, coefs, chunk_size=chunk)


def one_thread(fn: Callable[..., np.ndarray], *args: object) -> np.ndarray:
    """``fn(*args)`` on one torch thread (what rsmae's objectives do for small evaluations)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return fn(*args)
    finally:
        torch.set_num_threads(before)


def flops_per_point(case: Case, dirs: list[dict[str, torch.Tensor]], chunk: int) -> tuple[float, float]:
    """GFLOP of one point: one loop forward, and one vmap chunk divided by its points."""
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        case.loop_loss()
    loop = counter.get_total_flops() / 1e9
    with FlopCounterMode(display=False) as counter:
        run_ours(case, dirs, np.zeros((chunk, 2)), chunk)
    return loop, counter.get_total_flops() / 1e9 / chunk




def measure(case: Case, points: int, chunks: list[int], rounds: int) -> None:
    """Check both paths agree, count FLOP, then time the variants round by round (interleaved)."""
    dirs = [random_direction(case.objective.params, s) for s in (0, 1)]
    side = int(np.ceil(np.sqrt(points)))
    grid = np.linspace(-1, 1, side)
    coefs = np.stack(np.meshgrid(grid, grid), -1).reshape(-1, 2)[:points]
    ref = run_loop(case, dirs, coefs)
    case.max_diff = max(float(np.abs(run_ours(case, dirs, coefs, c) - ref).max()) for c in chunks)
    loop_gf, ours_gf = flops_per_point(case, dirs, chunks[0])
    case.gflop_per_point = loop_gf
    if abs(ours_gf - loop_gf) > 0.01 * loop_gf:
        print(f"note: {case.name}: vmap counts {ours_gf:.4f} GFLOP/point, the loop {loop_gf:.4f}")
    variants: dict[str, Callable[[], object]] = {
        "loop": lambda: run_loop(case, dirs, coefs),
        "loop, 1 thread": lambda: one_thread(run_loop, case, dirs, coefs),
    }
    for c in chunks:
        variants[f"ours chunk {c}"] = lambda c=c: run_ours(case, dirs, coefs, c)
    case.times = {k: [] for k in variants}
    for _ in range(rounds):
        for key, fn in variants.items():
            start = time.perf_counter()
            fn()
            case.times[key].append((time.perf_counter() - start) / len(coefs))


def table(cases: list[Case], peak: float) -> tuple[list[str], list[dict[str, object]]]:
    """Markdown lines and CSV rows."""
    lines = ["| case | samples | variant | ms/point best / median | points/s (best) | GFLOP/point "
             "| MFU (best) | vs loop best (median) | vs faster loop (best) |",
             "|---|---|---|---|---|---|---|---|---|"]
    rows = []
    for case in cases:
        base_best, base_med = min(case.times["loop"]), statistics.median(case.times["loop"])
        fastest_loop = min(min(case.times["loop"]), min(case.times["loop, 1 thread"]))
        for key, ts in case.times.items():
            best, med = min(ts), statistics.median(ts)
            pps = 1.0 / best
            mfu = pps * case.gflop_per_point / peak
            row = {"case": case.name, "samples": case.samples, "variant": key, "ms_best": 1e3 * best,
                   "ms_median": 1e3 * med, "points_per_s": pps, "gflop_per_point": case.gflop_per_point,
                   "mfu": mfu, "speedup_best": base_best / best, "speedup_median": base_med / med,
                   "speedup_vs_faster_loop": fastest_loop / best, "max_abs_diff": case.max_diff}
            rows.append(row)
            lines.append(f"| {case.name} | {case.samples} | {key} | {1e3 * best:.2f} / {1e3 * med:.2f} | "
                         f"{pps:.1f} | {case.gflop_per_point:.4f} | {100 * mfu:.1f} % | "
                         f"{base_best / best:.2f}x ({base_med / med:.2f}x) | {fastest_loop / best:.2f}x |")
    return lines, rows


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print and write the table."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", default="mae_test,probe_test,mae_tiny", help="comma-separated case names")
    p.add_argument("--points", type=int, default=64, help="grid points per timed round")
    p.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds (best is reported)")
    p.add_argument("--chunks", default="4,16,64", help="points per batched forward")
    p.add_argument("--batch", type=int, default=8, help="images per objective")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads for everything, the peak included (default torch's); 1 is far less "
                        "sensitive to other processes on a busy machine")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    load_start = os.getloadavg()
    peak = matmul_peak(torch.float32, n=2048)
    chunks = [int(c) for c in args.chunks.split(",")]
    cases = []
    for name in args.cases.split(","):
        case = build_case(name, args.batch)
        measure(case, args.points, chunks, args.rounds)
        cases.append(case)
        print(f"{case.name}: done (max |ours - loop| = {case.max_diff:.1e})", flush=True)
    lines, rows = table(cases, peak)
    cmd = " ".join(["python", "benchmarks/bench_landscape.py", *(argv if argv is not None else sys.argv[1:])])
    head = [
        "# Loss-surface grid points: vmap-batched functional_call vs a plain loop (CPU)", "",
        f"- cpu: {cpu_name()}", f"- threads: {torch.get_num_threads()}", f"- torch: {torch.__version__}",
        f"- rsmae commit: {git_commit()}",
        f"- matmul peak fp32 (2048^2, this run): {peak:.1f} GFLOP/s",
        f"- load average at start / end (1, 5, 15 min): {', '.join(f'{v:.2f}' for v in load_start)} / "
        f"{', '.join(f'{v:.2f}' for v in os.getloadavg())}",
        f"- {args.points} grid points per round, {args.rounds} interleaved rounds, real EuroSAT images, "
        "fixed masks, math attention in both paths; max |ours - loop| per case: "
        + ", ".join(f"{c.name} {c.max_diff:.1e}" for c in cases),
        f"- command: `{cmd}`", "",
    ]
    for case in cases:
        loop = min(min(case.times["loop"]), min(case.times["loop, 1 thread"]))
        mfu = case.gflop_per_point / loop / peak
        head.insert(-2, f"- ceiling {case.name}: the faster loop runs at {100 * mfu:.0f} % MFU, so a batched "
                        f"evaluation at 100 % MFU would be {1 / mfu:.1f}x it")
    text = "\n".join(head + lines) + "\n"
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "landscape.md").write_text(text)
    with (args.out / "landscape.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
