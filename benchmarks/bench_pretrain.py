"""Speed of one pretraining step: rsmae's MAE / RC-MAE against the official MAE code path.

One step = forward + backward + AdamW (+ the EMA teacher update for RC-MAE) on the reference
config of METHOD.md: ViT-S/16 encoder, decoder 4 x 256, 13 bands, 128 px, mask ratio 0.75.
Images/s, FLOP per image (``torch.utils.flop_counter.FlopCounterMode``, forward + backward of
each code path, the RC-MAE teacher forward included), a large square matmul peak measured in the
same run and thread count, and MFU = images/s x FLOP per image / peak.

- "official": :mod:`official_mae` (full patch embedding then gather, non-fused attention, loss
  over all patches then masked, default ``AdamW``, per-parameter EMA loop).
- "ours": :class:`rsmae.models.MaskedAutoencoder` / :class:`rsmae.models.RCMAE` (visible patches
  embedded only, attention kernel chosen by device as in training (math on CPUs, where the fused
  SDPA kernel is slower in bf16), fused ``AdamW``, ``foreach`` EMA), eager and, optionally,
  ``torch.compile`` d (compilation takes minutes on a CPU; it is done in the warm-up and not timed).

Steps of all variants are interleaved round by round, so load from other processes hits all of
them alike. Throughput, MFU and ratios use the best step of each variant (other processes can only
add time; on a shared 2-core machine the median mostly measures them); medians are shown too.
Before timing, the two code paths are loaded with the same weights and must give the same loss
(printed).

Without native bf16 (no avx512_bf16 / amx_bf16) bf16 autocast is emulated and ~10x slower, so the
bf16 rows then use a batch of 4 (``--bf16-batch``); compare ours/official within a precision.

Run (a full default run took 6 minutes on a 2-core AMD EPYC, compilation included)::

    cd /work/main && .venv/bin/python benchmarks/bench_pretrain.py
    .venv/bin/python benchmarks/bench_pretrain.py --batch 8 --steps 2 --warmup 1 --compile off

Writes ``benchmarks/results/pretrain.md`` (and ``pretrain.csv``) and prints the table; the Markdown's
header and every CSV row name the commit, command and machine.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from official_mae import OfficialMAE, OfficialRCMAE
from provenance import run_provenance
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from rsmae.evaluation.speed import matmul_peak
from rsmae.models import (
    RCMAE,
    MaskedAutoencoder,
    create_encoder,
    fused_attention_pays,
    mae_decoder_defaults,
    set_fused_attention,
    teacher_momentum,
)
from rsmae.tasks.precision import cpu_flags

RESULTS = Path(__file__).resolve().parent / "results"
MEASURED = ("rsmae/models", "rsmae/tasks", "rsmae/evaluation/speed.py", "rsmae/data", "rsmae/store",
            "rsmae/tiling", "benchmarks/official_mae.py", "benchmarks/bench_pretrain.py")


@dataclass
class Variant:
    """One benchmarked configuration and its measurements."""

    method: str  # "MAE" | "RC-MAE"
    impl: str  # "official" | "ours"
    precision: str  # "fp32" | "bf16"
    compiled: bool
    batch: int
    step: Callable[[], None] = field(repr=False)
    times: list[float] = field(default_factory=list)
    warmup_s: float = 0.0
    gflop_per_img: float = 0.0

    @property
    def name(self) -> str:
        """Row label."""
        return f"{self.method} {self.precision} {self.impl}{' +compile' if self.compiled else ''}"


def cpu_info() -> dict[str, str]:
    flags = cpu_flags()
    native = sorted(flags & {"avx512_bf16", "amx_bf16"})
    return {
        "cpu capability": torch.backends.cpu.get_cpu_capability(),
        "bf16 flags": ", ".join(native) or "none (no avx512_bf16 / amx_bf16)",
        "oneDNN bf16 supported": str(torch.ops.mkldnn._is_mkldnn_bf16_supported()),
        "load average at start (1, 5, 15 min)": ", ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


def build_model(impl: str, method: str, img: int, bands: int) -> nn.Module:
    torch.manual_seed(0)
    if impl == "official":
        mae = OfficialMAE(img_size=img, in_chans=bands)
        return OfficialRCMAE(mae) if method == "RC-MAE" else mae
    enc = create_encoder("vit_small", in_chans=bands, img_size=img, patch_size=16)
    ours = MaskedAutoencoder(enc, **mae_decoder_defaults("vit_small"))
    model = RCMAE(ours) if method == "RC-MAE" else ours
    set_fused_attention(model, fused_attention_pays("cpu"))  # as PretrainTask does on this device
    return model


def loss_fn(model: nn.Module, impl: str) -> Callable[[torch.Tensor], torch.Tensor]:
    if impl == "official":
        return (lambda x: model(x)) if isinstance(model, OfficialRCMAE) else (lambda x: model(x)[0])
    return lambda x: model(x).loss


def param_groups(model: nn.Module) -> list[dict]:
    """MAE-style groups: weight decay on matrices only; trainable parameters only."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in params if p.ndim > 1], "weight_decay": 0.05},
        {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0},
    ]


def make_variant(impl: str, method: str, precision: str, compiled: bool, args: argparse.Namespace) -> Variant:
    batch = args.batch if precision == "fp32" else args.bf16_batch
    model = build_model(impl, method, args.img, args.bands).train()
    fast = {"fused": True} if impl == "ours" else {}
    opt = torch.optim.AdamW(param_groups(model), lr=1.5e-4, betas=(0.9, 0.95), **fast)
    fwd = loss_fn(torch.compile(model) if compiled else model, impl)
    x = torch.randn(batch, args.bands, args.img, args.img)
    state = {"step": 0}

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = fwd(x)
        loss.backward()
        opt.step()
        if method == "RC-MAE":
            model.update_teacher(teacher_momentum(state["step"], 100_000))
        state["step"] += 1

    v = Variant(method, impl, precision, compiled, batch, step)
    v.gflop_per_img = count_gflop(model, impl, args)
    return v


def count_gflop(model: nn.Module, impl: str, args: argparse.Namespace) -> float:
    """GFLOP per image of one forward + backward (FlopCounterMode, batch 2)."""
    x = torch.randn(2, args.bands, args.img, args.img)
    with FlopCounterMode(display=False) as counter:
        loss_fn(model, impl)(x).backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / 2 / 1e9


def check_equivalence(args: argparse.Namespace) -> float:
    """|loss(ours) - loss(official)| with shared weights and noise (must be ~0)."""
    ours = build_model("ours", "MAE", args.img, args.bands)
    official = build_model("official", "MAE", args.img, args.bands)
    state = {k.removeprefix("encoder."): v for k, v in ours.state_dict().items()}
    missing = official.load_state_dict(state, strict=False).missing_keys
    assert missing == ["decoder_pos_embed"], missing
    x = torch.randn(4, args.bands, args.img, args.img)
    noise = ours.make_noise(4, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return abs(ours(x, noise=noise).loss.item() - official(x, 0.75, noise)[0].item())


def loader_rate(args: argparse.Namespace, tmp: Path) -> tuple[float, str]:
    """Samples/s of the training loader on real 13-band tiles at ``--img`` px (alone, no training).

    The OSCD Sentinel-2 L1C scenes of ``--data`` are tiled into a temporary store; batches of
    ``--batch`` come from ``ShardDataset`` + ``ShardSampler`` + ``DataLoader`` with
    ``--loader-workers`` processes, as in :class:`~rsmae.data.TileDataModule`, over several epochs.
    """
    from torch.utils.data import DataLoader

    from rsmae.data import ShardDataset, ShardSampler, collate_tiles
    from rsmae.tiling.run import TileConfig, tile_scenes

    scenes = args.data / "oscd_subset" / "Onera Satellite Change Detection dataset - Images"
    store = tmp / "oscd.zarr"
    tile_scenes([str(scenes)], store, TileConfig(tile_size=args.img, sensor="s2-l1c"), workers=1)
    dataset = ShardDataset(store)
    sampler = ShardSampler(dataset, shuffle=True, seed=0)
    loader = DataLoader(dataset, batch_size=args.batch, sampler=sampler, num_workers=args.loader_workers,
                        collate_fn=collate_tiles, persistent_workers=args.loader_workers > 0)
    seen, start, epoch = 0, 0.0, 0
    while seen < args.loader_samples:
        sampler.set_epoch(epoch)
        for batch in loader:
            if not start:  # the first batch pays for starting the workers
                start = time.perf_counter()
                continue
            seen += len(batch["image"])
        epoch += 1
    rate = seen / (time.perf_counter() - start)
    what = f"{len(dataset)} real OSCD tiles of {len(dataset.bands)} x {args.img} px"
    what += f", {args.loader_workers} workers"
    return rate, what


def run(variants: list[Variant], args: argparse.Namespace) -> None:
    for v in variants:
        t = time.perf_counter()
        for _ in range(args.warmup + (1 if v.compiled else 0)):
            v.step()
        v.warmup_s = time.perf_counter() - t
        print(f"  warmed up {v.name} in {v.warmup_s:.1f} s", flush=True)
    for r in range(args.steps):
        for v in variants:
            t = time.perf_counter()
            v.step()
            v.times.append(time.perf_counter() - t)
        print(f"  round {r + 1}/{args.steps} done", flush=True)


def _row(v: Variant, base: Variant | None, peaks: dict[str, float]) -> dict[str, str]:
    best, med = min(v.times), statistics.median(v.times)
    ips = v.batch / best
    ratio = "1.00x" if base is None else f"{ips / (base.batch / min(base.times)):.2f}x"
    ratio_med = (
        "1.00x" if base is None else f"{(v.batch / med) / (base.batch / statistics.median(base.times)):.2f}x"
    )
    return {
        "method": v.method,
        "precision": v.precision,
        "code path": v.impl + (" + torch.compile" if v.compiled else ""),
        "batch": str(v.batch),
        "step ms best / median": f"{best * 1e3:.0f} / {med * 1e3:.0f}",
        "img/s (best)": f"{ips:.2f}",
        "GFLOP/img": f"{v.gflop_per_img:.2f}",
        "MFU (best)": f"{100 * ips * v.gflop_per_img / peaks[v.precision]:.0f} %",
        "ours/official best (median)": f"{ratio} ({ratio_med})",
    }


def table(variants: list[Variant], peaks: dict[str, float]) -> list[dict[str, str]]:
    """One row per variant; ratios against the official path of the same method and precision."""
    rows = []
    for v in variants:
        key = (v.method, v.precision, "official", False)
        base = next(b for b in variants if (b.method, b.precision, b.impl, b.compiled) == key)
        rows.append(_row(v, None if base is v else base, peaks))
    return rows


def ceilings(variants: list[Variant], peaks: dict[str, float]) -> list[str]:
    """Largest possible ours/official ratio: ours at 100 % of the matmul peak."""
    out = []
    for v in variants:
        if v.impl != "ours" or v.compiled:
            continue
        key = (v.method, v.precision, "official", False)
        base = next(b for b in variants if (b.method, b.precision, b.impl, b.compiled) == key)
        limit = peaks[v.precision] / v.gflop_per_img / (base.batch / min(base.times))
        out.append(f"ceiling {v.method} {v.precision}: ours at 100 % MFU would be {limit:.2f}x official")
    return out


def provenance(argv: list[str] | None) -> dict[str, str]:
    """Commit (naming the measured files with uncommitted changes), command and machine of this run."""
    return run_provenance("benchmarks/bench_pretrain.py", MEASURED, argv)


def markdown(rows: list[dict[str, str]], info: dict[str, str], peaks: dict[str, float], notes: list[str],
             prov: dict[str, str]) -> str:
    """The table under its header: commit, command, machine, CPU features, matmul peaks and ``notes``."""
    head = list(rows[0])
    lines = ["# Pretraining step speed (CPU)", "", f"- commit: {prov['commit']}",
             f"- command: `{prov['command']}`", f"- machine: {prov['machine']}"]
    lines += [f"- {k}: {v}" for k, v in info.items()]
    lines += [f"- matmul peak {p}: {g:.1f} GFLOP/s" for p, g in peaks.items()]
    lines += [f"- {n}" for n in notes]
    lines += ["", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r[h] for h in head) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def write(out: Path, rows: list[dict[str, str]], info: dict[str, str], peaks: dict[str, float],
          notes: list[str], prov: dict[str, str]) -> str:
    """Write ``out`` (Markdown) and its ``.csv`` (one row per variant, with ``prov``); return the Markdown."""
    text = markdown(rows, info, peaks, notes, prov)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    with out.with_suffix(".csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[*rows[0], *prov])
        writer.writeheader()
        writer.writerows({**row, **prov} for row in rows)
    return text


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=32, help="fp32 batch size")
    p.add_argument(
        "--bf16-batch",
        type=int,
        default=None,
        help="bf16 batch (default: --batch with native bf16, else 4: emulated bf16 is ~10x slower)",
    )
    p.add_argument("--steps", type=int, default=6, help="timed steps (rounds) per variant")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps per variant (+1 if compiled)")
    p.add_argument("--img", type=int, default=128)
    p.add_argument("--bands", type=int, default=13)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--precisions", default="fp32,bf16")
    p.add_argument("--methods", default="MAE,RC-MAE")
    p.add_argument(
        "--compile",
        choices=["off", "fp32", "all"],
        default="fp32",
        help="which precisions also get a torch.compile'd variant of ours",
    )
    p.add_argument("--peak-size", type=int, default=2048)
    data = Path(__file__).resolve().parents[1].parent / "shared" / "data"
    p.add_argument("--data", type=Path, default=data,
                   help="real data for the loader measurement (OSCD subset)")
    p.add_argument("--loader-workers", type=int, default=2)
    p.add_argument("--loader-samples", type=int, default=2000, help="0 skips the loader measurement")
    p.add_argument("--out", type=Path, default=RESULTS / "pretrain.md")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    prov, info = provenance(argv), cpu_info()
    native = not info["bf16 flags"].startswith("none")
    args.bf16_batch = args.bf16_batch or (args.batch if native else min(4, args.batch))
    print("\n".join(f"{k}: {v}" for k, v in {**prov, **info}.items()), flush=True)
    precisions = args.precisions.split(",")
    peaks = {
        p: matmul_peak({"fp32": torch.float32, "bf16": torch.bfloat16}[p], n=args.peak_size, reps=10)
        for p in precisions
    }
    print("matmul peaks (GFLOP/s):", {k: round(v, 1) for k, v in peaks.items()}, flush=True)
    diff = check_equivalence(args)
    print(f"|loss(ours) - loss(official)| with shared weights and noise: {diff:.2e}", flush=True)
    variants = []
    for method in args.methods.split(","):
        for prec in precisions:
            compile_too = args.compile == "all" or args.compile == prec
            for impl, compiled in [("official", False), ("ours", False)] + [("ours", True)] * compile_too:
                variants.append(make_variant(impl, method, prec, compiled, args))
    run(variants, args)
    rows = table(variants, peaks)
    notes = [
        f"config: ViT-S/16 encoder, decoder 4 x 256, {args.bands} bands, {args.img} px, mask 0.75; "
        f"{args.warmup} warm-up + {args.steps} timed steps per variant, interleaved",
        f"|loss(ours) - loss(official)| with shared weights and noise: {diff:.1e}",
        "compile warm-up (s): " + ", ".join(f"{v.name}: {v.warmup_s:.0f}" for v in variants if v.compiled),
    ]
    notes.append("load average at end (1, 5, 15 min): " + ", ".join(f"{x:.2f}" for x in os.getloadavg()))
    notes += ceilings(variants, peaks)
    if args.loader_samples:
        with tempfile.TemporaryDirectory() as tmp:
            rate, what = loader_rate(args, Path(tmp))
        fastest = max(v.batch / min(v.times) for v in variants)
        notes.append(f"loader alone: {rate:.0f} samples/s ({what}); the fastest training step above "
                     f"consumes {fastest:.1f} img/s: the loader delivers {rate / fastest:.0f}x what it needs")
    print(write(args.out, rows, info, peaks, notes, prov))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
