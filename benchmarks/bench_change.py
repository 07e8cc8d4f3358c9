"""Speed of change detection on a CPU: whole-city sliding-window inference and training throughput.

1. Inference over one whole OSCD city (pisa, 776 x 718 px, 13 bands on the 10 m grid) by sliding
   windows with overlap and blended logits, batched windows vs one window at a time, for the
   Siamese ViT and the FC-Siam-diff baseline.
2. Training throughput of one optimiser step (forward + backward + AdamW) on random co-located crops,
   in image pairs/s, FLOP per pair (``torch.utils.flop_counter.FlopCounterMode``, forward + backward)
   and MFU = achieved FLOP/s over a large square matmul's peak measured in the same run, threads and
   precision: Siamese ViT frozen / last 2 blocks / full, and FC-Siam-diff. Both parts in fp32 and, where
   the CPU has native bf16, under bf16 autocast (``evaluate_change``'s default there).

Every variant takes the best of its timed repeats (other processes on a shared machine only add
time); medians are shown too. On a machine shared with other jobs, ``--threads 1`` avoids the
OpenMP threads of one process waiting for each other (measured 4-6x slower steps with 2 threads at a
load average of 5-7 on 2 cores). Run from the repository root (1.5 minutes at ``--threads 1``)::

    .venv/bin/python benchmarks/bench_change.py
    .venv/bin/python benchmarks/bench_change.py --threads 1
    .venv/bin/python benchmarks/bench_change.py --preset vit_test --steps 2 --repeats 1 --out /tmp/x

Writes ``change_speed.md`` and ``change_speed.csv`` to ``--out`` (default ``benchmarks/results``); the
Markdown's header and every CSV row name the commit, command and machine.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from provenance import run_provenance
from torch.utils.data import DataLoader

from rsmae.datasets import OSCD, PairCrops
from rsmae.datasets.bitemporal import band_statistics
from rsmae.evaluation.sliding import sliding_window_logits, window_starts
from rsmae.evaluation.speed import count_flops, matmul_peak
from rsmae.models import set_fused_attention
from rsmae.models.change import change_loss
from rsmae.tasks.change import ChangeTask
from rsmae.tasks.precision import cpu_has_native_bf16

ROOT = Path(__file__).resolve().parents[1]
MEASURED = ("rsmae/evaluation/sliding.py", "rsmae/evaluation/speed.py", "rsmae/models", "rsmae/tasks",
            "rsmae/datasets", "benchmarks/bench_change.py")


def timed(fn: Callable[[], object], repeats: int, warmup: int = 1) -> tuple[float, float]:
    """Best and median seconds of ``fn`` over ``repeats`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times), statistics.median(times)


def make_task(model: str, tune: str | int, args: argparse.Namespace, bands: list[str],
              stats: tuple[list[float], list[float]]) -> ChangeTask:
    torch.manual_seed(0)
    return ChangeTask(bands=bands, model=model, preset=args.preset, patch_size=16, img_size=args.window,
                      tune=tune, sensor="s2-l1c", mean=stats[0], std=stats[1])


def autocast(precision: str) -> torch.autocast:
    """bf16 autocast on the CPU for ``"bf16"``, a disabled one for ``"fp32"``."""
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")


def inference_rows(args: argparse.Namespace, city: OSCD, stats: tuple, precision: str) -> list[dict]:
    pair = torch.from_numpy(city.scenes[0].image.astype("float32"))
    rows = []
    for model in ("siamese-vit", "fc-siam-diff"):
        task = make_task(model, "frozen", args, list(city.bands), stats).eval()
        set_fused_attention(task.model, False)  # as evaluate_change does on CPUs
        with autocast(precision):  # warm-up on a few windows, not a whole city
            task.predict_logits(torch.stack([pair[..., :args.window, :args.window]] * 4))
        for batch in (args.window_batch, 1):
            def run(task: ChangeTask = task, batch: int = batch) -> torch.Tensor:
                with autocast(precision):
                    return sliding_window_logits(task.predict_logits, pair, window=args.window,
                                                 overlap=args.overlap, batch_size=batch)
            best, median = timed(run, args.repeats, warmup=0)
            rows.append({"part": "inference, whole city", "precision": precision, "model": model,
                         "variant": f"{batch} window(s)/batch", "best_s": best, "median_s": median,
                         "windows": _n_windows(pair.shape[-2:], args),
                         "pairs_per_s": "", "gflop_per_pair": "", "mfu": ""})
    return rows


def _n_windows(shape: tuple[int, int], args: argparse.Namespace) -> int:
    stride = args.window - args.overlap
    rows, cols = (window_starts(n, args.window, stride) for n in shape)
    return len(rows) * len(cols)


def training_rows(args: argparse.Namespace, city: OSCD, stats: tuple, precision: str) -> list[dict]:
    peak = matmul_peak(torch.bfloat16 if precision == "bf16" else torch.float32)
    crops = PairCrops(city.scenes, args.window, args.train_batch, seed=0)
    batch = next(iter(DataLoader(crops, batch_size=args.train_batch)))
    pair = (batch["image"] - torch.tensor(stats[0])[:, None, None]) / torch.tensor(stats[1])[:, None, None]
    rows = []
    for model, tune in (("siamese-vit", "frozen"), ("siamese-vit", 2), ("siamese-vit", "full"),
                        ("fc-siam-diff", "full")):
        task = make_task(model, tune, args, list(city.bands), stats).train()
        set_fused_attention(task.model, False)
        params = [p for p in task.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=1e-4)

        def step(task: ChangeTask = task, optimizer: torch.optim.Optimizer = optimizer) -> None:
            optimizer.zero_grad(set_to_none=True)
            with autocast(precision):
                loss = change_loss(task.model(pair), batch["mask"], pos_weight=6.0)
            loss.backward()
            optimizer.step()

        def fwd_bwd(task: ChangeTask = task) -> None:
            with autocast(precision):
                loss = change_loss(task.model(pair), batch["mask"], pos_weight=6.0)
            loss.backward()

        flops = count_flops(fwd_bwd) / args.train_batch
        best, median = timed(step, args.steps)
        pairs_s = args.train_batch / best
        name = "fc-siam-diff (from scratch)" if model == "fc-siam-diff" else f"tune {tune}"
        rows.append({"part": "training step", "precision": precision, "model": model, "variant": name,
                     "best_s": best,
                     "median_s": median, "windows": "", "pairs_per_s": pairs_s,
                     "gflop_per_pair": flops / 1e9, "mfu": pairs_s * flops / 1e9 / peak})
    return rows


def provenance(argv: list[str] | None) -> dict[str, str]:
    """Commit (naming the measured files with uncommitted changes), command and machine of this run."""
    return run_provenance("benchmarks/bench_change.py", MEASURED, argv)


def write(rows: list[dict], header: list[str], out: Path, prov: dict[str, str]) -> str:
    """Write ``change_speed.md`` (``prov``, then ``header``) and ``.csv`` (each row with ``prov``)."""
    lines = ["# Change detection speed (CPU)", "", f"- commit: {prov['commit']}",
             f"- command: `{prov['command']}`", f"- machine: {prov['machine']}",
             *[f"- {h}" for h in header], "",
             "| part | precision | model | variant | best s | median s | windows | pairs/s | GFLOP/pair "
             "| MFU |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        cells = [r["part"], r["precision"], r["model"], r["variant"], f"{r['best_s']:.3f}",
                 f"{r['median_s']:.3f}",
                 str(r["windows"]), f"{r['pairs_per_s']:.1f}" if r["pairs_per_s"] != "" else "",
                 f"{r['gflop_per_pair']:.2f}" if r["gflop_per_pair"] != "" else "",
                 f"{r['mfu']:.0%}" if r["mfu"] != "" else ""]
        lines.append("| " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    out.mkdir(parents=True, exist_ok=True)
    (out / "change_speed.md").write_text(text)
    with (out / "change_speed.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=[*rows[0], *prov])
        writer.writeheader()
        writer.writerows({**row, **prov} for row in rows)
    return text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "oscd_subset"))
    p.add_argument("--city", default="pisa")
    p.add_argument("--size", type=int, default=None, help="read only the top-left size x size px (tests)")
    p.add_argument("--preset", default="vit_tiny")
    p.add_argument("--window", type=int, default=64)
    p.add_argument("--overlap", type=int, default=16)
    p.add_argument("--window-batch", type=int, default=32)
    p.add_argument("--train-batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=5, help="timed training steps per variant")
    p.add_argument("--repeats", type=int, default=2, help="timed whole-city inferences per variant")
    p.add_argument("--precisions", default="fp32,bf16" if cpu_has_native_bf16() else "fp32",
                   help="comma-separated: fp32, bf16 (default bf16 too where the CPU has it natively)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads (default: torch's, one per core)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    prov = provenance(argv)
    city = OSCD(args.data, cities=[args.city], window=(0, 0, args.size, args.size) if args.size else None)
    stats = band_statistics(city.scenes)
    rows = []
    for precision in args.precisions.split(","):
        rows += inference_rows(args, city, stats, precision) + training_rows(args, city, stats, precision)
    h, w = city.scenes[0].mask.shape
    header = [f"native bf16: {cpu_has_native_bf16()}",
              *(f"matmul peak {n}: {matmul_peak(d):.1f} GFLOP/s" for n, d in
                (("fp32", torch.float32), ("bf16", torch.bfloat16)) if n in args.precisions),
              f"load average at start (1, 5, 15 min): {load}",
              f"load average at end: {', '.join(f'{x:.2f}' for x in os.getloadavg())}",
              f"city: {args.city} {h} x {w} px, 13 bands; encoder {args.preset}/16 random init, "
              "math attention",
              f"windows {args.window} px, overlap {args.overlap}, cosine blend; training batch "
              f"{args.train_batch} pairs of {args.window} px"]
    print(write(rows, header, Path(args.out), prov))
    return 0


if __name__ == "__main__":
    sys.exit(main())
