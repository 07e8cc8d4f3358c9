"""The report of ``bench_predict.py``: bf16/fp32 agreement on the real scene, predict.{csv,md,png}."""

from __future__ import annotations

import argparse
import csv
import os
import platform
import sys
from pathlib import Path

import numpy as np
from bench_predict import CITY, MEASURED, RESULTS, _measure
from bench_predict_baselines import OVERLAP, PATCH, WINDOW
from provenance import git_commit


def _read(path: Path) -> np.ndarray:
    import rasterio

    with rasterio.open(path) as ds:
        return ds.read()


def agreement(args: argparse.Namespace, info: dict, root: Path) -> dict:
    """The real scene at fp32 and bf16: embeddings (the bench's backbone), change (a trained model)."""
    inputs, out = info["inputs"], {}
    change_model = args.agreement_model if args.agreement_model.exists() else info["models"]["change"]
    for task, model in (("embed", info["models"]["embed"]), ("change", change_model)):
        folders = {}
        for precision in ("32", "bf16"):
            case = {"task": task, "method": "stream", "date1": str(inputs["date1"][0]),
                    "date2": str(inputs["date2"][0]), "model": str(model), "threads": args.threads,
                    "out": str(root / f"{task}{precision}"), "precision": precision}
            result = _measure(case, sys.executable)
            if "error" in result:
                return {"error": result["error"]}
            folders[precision] = next(p for p in Path(case["out"]).iterdir() if p.is_dir())
        if task == "embed":
            a, b = (_read(folders[p] / "embedding.tif") for p in ("32", "bf16"))
            ok = np.isfinite(a).all(axis=0)
            va, vb = a[:, ok], b[:, ok]
            cos = (va * vb).sum(0) / np.linalg.norm(va, axis=0) / np.linalg.norm(vb, axis=0)
            out["embed"] = {"max_abs": float(np.abs(va - vb).max()), "cells": int(ok.sum()),
                            "max_value": float(np.abs(va).max()), "cos_min": float(cos.min()),
                            "rel_l2": float(np.linalg.norm(va - vb) / np.linalg.norm(va))}
        else:
            pa, pb = (_read(folders[p] / "change_prob.tif")[0] for p in ("32", "bf16"))
            ma, mb = (_read(folders[p] / "change_mask.tif")[0] for p in ("32", "bf16"))
            ok = (ma != 255) & (mb != 255)
            out["change"] = {"model": str(Path(change_model).relative_to(Path(change_model).parents[2])),
                             "max_abs": float(np.nanmax(np.abs(pa - pb))),
                             "mean_abs": float(np.nanmean(np.abs(pa - pb))), "pixels": int(ok.sum()),
                             "change_32": int((ma[ok] == 1).sum()), "flips": int((ma[ok] != mb[ok]).sum())}
    return out


def _ratio(rows: list[dict], row: dict, method: str) -> str:
    base = [r for r in rows if (r["task"], r["scene"], r["method"]) == (row["task"], row["scene"], method)
            and r["km2_per_s"] != ""]
    if row["method"] == method or not base or row["km2_per_s"] == "":
        return ""
    return f"{row['km2_per_s'] / base[0]['km2_per_s']:.2f}x"


def _agreement_lines(agree: dict) -> list[str]:
    if "error" in agree:
        return [f"- bf16 vs fp32 agreement: not measured ({agree['error']})"]
    e, c = agree["embed"], agree["change"]
    return [f"- bf16 vs fp32 agreement on the real scene ({CITY}): embeddings (bench backbone, "
            f"{e['cells']} cells): max |diff| {e['max_abs']:.3g} (values up to {e['max_value']:.3g}), "
            f"relative L2 {e['rel_l2']:.2g}, smallest cosine similarity of a cell {e['cos_min']:.4f}; "
            f"change probabilities (trained model `{c['model']}`): max |diff| {c['max_abs']:.3g}, mean "
            f"{c['mean_abs']:.2g}; mask pixels flipped at the model's threshold: {c['flips']} of "
            f"{c['pixels']} ({100 * c['flips'] / max(c['pixels'], 1):.3f} %; {c['change_32']} change "
            "pixels in fp32)"]


def write_results(rows: list[dict], info: dict, agree: dict, args: argparse.Namespace, command: str,
                  seconds: float) -> None:
    """benchmarks/results/predict.{csv,md,png}."""
    from rsmae.evaluation.speed import cpu_name

    RESULTS.mkdir(parents=True, exist_ok=True)
    with (RESULTS / "predict.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    peaks, flops = info["peaks"], info["flops"]
    lines = ["# Whole-scene prediction: km²/s, MFU and peak memory against scene size (issue 23)", "",
             f"- command: `{command}` ({seconds / 60:.1f} min)", f"- commit: {git_commit(MEASURED)}",
             f"- machine: {cpu_name()}, {os.cpu_count()} cores (shared with other jobs), "
             f"{platform.system()} {platform.release()}, Python {platform.python_version()}",
             f"- models: ViT-Tiny backbone (patch {PATCH}) and Siamese ViT-Tiny change model, window "
             f"{WINDOW}, overlap {OVERLAP}, 13 bands, random weights; stream and TerraTorch: 16 windows per "
             f"call; plain: 1; model threads: {args.threads} for every method",
             f"- MFU: model GFLOP ({flops['embed'] / 1e9:.3f} per embed window, {flops['change'] / 1e9:.3f} "
             f"per change window) per second over the matmul peak of the row's precision measured in this "
             f"run: fp32 {peaks['32']:.0f} GFLOP/s, bf16 {peaks['bf16']:.0f} GFLOP/s (1024² matmul, same "
             "threads)",
             "- km² at 100 m² per pixel (10 m); peak RSS of a fresh process per case (imports and model "
             "included)",
             "- load: the 1-minute load average of the machine before and after each case (2 cores: above 2, "
             "other jobs took CPU from the case and its time is an upper bound)",
             *_agreement_lines(agree), "",
             "| task | method | engine | precision | scene | px | windows | s | km²/s | vs plain | "
             "vs TerraTorch | GFLOP/s | MFU % | peak RSS MB | load | note |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['task']} | {r['method']} | {r['engine']} | {r['precision']} | {r['scene']} | "
                     f"{r['height_px']}x{r['width_px']} | {r['windows']} | {r['seconds']} | "
                     f"{r['km2_per_s']} | {_ratio(rows, r, 'plain')} | {_ratio(rows, r, 'terratorch')} | "
                     f"{r['gflop_per_s']} | {r['mfu_pct']} | {r['peak_rss_mb']} | "
                     f"{r['load_before']}-{r['load_after']} | {r['note']} |")
    (RESULTS / "predict.md").write_text("\n".join(lines) + "\n")
    _plot(rows)


def _plot(rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    styles = {("stream", "torch"): "o-", ("stream", "onnx"): "s--", ("plain", "torch"): "x:",
              ("terratorch", "torch"): "d-."}
    for task, ax in zip(("embed", "change"), axes, strict=True):
        keys = sorted({(r["method"], r["engine"], r["precision"]) for r in rows if r["task"] == task})
        for method, engine, precision in keys:
            key = (task, method, engine, precision)
            pts = sorted((r["height_px"] * r["width_px"] / 1e6, r["peak_rss_mb"]) for r in rows
                         if (r["task"], r["method"], r["engine"], r["precision"]) == key
                         and r["peak_rss_mb"] != "")
            if pts:
                ax.plot(*zip(*pts, strict=True), styles.get((method, engine), "+-"),
                        label=f"{method} ({engine}, {precision})")
        ax.set(xscale="log", xlabel="scene size (Mpx, log)", ylabel="peak RSS (MB)", title=f"predict {task}")
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)
    fig.tight_layout()
    fig.savefig(RESULTS / "predict.png", dpi=120)
