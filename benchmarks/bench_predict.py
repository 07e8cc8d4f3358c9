"""Whole-scene prediction speed and memory: km²/s, MFU and peak RSS against scene size (issue 23).

Scenes: a real 10 m Sentinel-2 L1C city of OSCD (cupertino, 1015 x 788 px, both dates put on one
13-band stack each) and larger virtual scenes: VRT mosaics of that stack repeated to 2 k² ... 20 k² px.
Models: a ViT-Tiny backbone (patch 16, window 96, 13 bands) and a Siamese ViT-Tiny change model
(window 96); random weights (speed does not depend on them).

Methods, each case in a fresh subprocess (peak RSS from ``resource.getrusage``, imports included):

* ``stream``: ``rsmae predict`` (strips read in pieces as the scan goes, the next piece in a thread,
  16 windows per model call, cosine blending, rows written as finished, COGs with overviews, PCA
  preview / polygons), PyTorch in fp32 or at ``precision auto`` (bf16 autocast where the CPU computes
  bf16 natively), or onnxruntime (fp32, the model exported to a file first);
* ``plain``: the loop a user writes, fp32 (:mod:`bench_predict_baselines`);
* ``terratorch``: TerraTorch's ``tiled_inference`` on the same change module over the whole pair in
  memory, run by ``--terratorch-python`` (an environment where TerraTorch installs).

All use window 96, overlap 32 and the same model threads (``--threads``, 1 by default: on 2 cores
shared with other jobs, PyTorch with 2 threads ran a batch 4-14x slower than with 1). km² counts
100 m² per pixel. MFU: the model's FLOP (``count_flops`` of one window times the windows run) per
second over the best matmul GFLOP/s of the case's precision measured in the same run
(``matmul_peak``, 1024², same threads).

Example:
    python benchmarks/bench_predict.py --terratorch-python runs/venv-terratorch/bin/python  # ~30 min

    python benchmarks/bench_predict.py --sizes 2048 --change-max 2048
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_predict_baselines import OVERLAP, PATCH, WINDOW, plain_change, plain_embed, terratorch_change

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
MEASURED = ("rsmae/predict", "rsmae/tiling", "rsmae/evaluation/sliding.py", "benchmarks/bench_predict.py",
            "benchmarks/bench_predict_baselines.py")
CITY = "cupertino"


def _city_folder(data: Path, date: int) -> Path:
    return data / "oscd_subset" / "Onera Satellite Change Detection dataset - Images" / CITY / f"imgs_{date}"


def make_inputs(data: Path, root: Path, sizes: list[int]) -> dict[str, dict[int, Path]]:
    """13-band stacks of both dates (date 2 on date 1's grid) and VRT mosaics of them."""
    import numpy as np
    import rasterio

    from rsmae.bands import get_sensor
    from rsmae.predict.scene import OnGridReader, find_scenes, open_scene
    from rsmae.tiling.grid import SceneReader

    sensor = get_sensor("s2-l1c")
    bands = list(sensor.names)
    first = open_scene(find_scenes([str(_city_folder(data, 1))], sensor, bands)[0], sensor)
    second = open_scene(find_scenes([str(_city_folder(data, 2))], sensor, bands)[0], sensor)
    g = first.grid
    out: dict[str, dict[int, Path]] = {"date1": {}, "date2": {}}
    for key, scene, cls in (("date1", first, SceneReader), ("date2", second, OnGridReader)):
        folder = root / key
        folder.mkdir(parents=True, exist_ok=True)
        stack = folder / "city.tif"
        with cls(scene.scene, g, scene.dtype, nodata=scene.nodata) as reader:
            pixels = reader.read(0, 0, g.height, g.width)
        pixels[pixels == 0] = 1  # the mosaic has no nodata (0 is the fill value)
        with rasterio.open(stack, "w", driver="GTiff", width=g.width, height=g.height, count=13,
                           dtype="uint16", crs=g.crs, transform=g.affine, tiled=True) as ds:
            ds.write(pixels.astype(np.uint16))
            for i, b in enumerate(bands, 1):
                ds.set_band_description(i, b)
        out[key][0] = stack
        for size in sizes:
            out[key][size] = _mosaic(folder / f"mosaic_{size}.vrt", stack, g, bands, size)
    return out


def _mosaic(path: Path, stack: Path, grid: object, bands: list[str], size: int) -> Path:
    """A ``size`` x ``size`` px VRT of ``stack`` repeated (same folder, so the tiler accepts it)."""
    w, h = grid.width, grid.height
    t = grid.affine
    srcs = [(r, c) for r in range(0, size, h) for c in range(0, size, w)]
    lines = [f'<VRTDataset rasterXSize="{size}" rasterYSize="{size}">',
             f"<SRS>{_escape(grid.crs)}</SRS>",
             f"<GeoTransform>{t.c}, {t.a}, {t.b}, {t.f}, {t.d}, {t.e}</GeoTransform>"]
    for i, band in enumerate(bands, 1):
        lines.append(f'<VRTRasterBand dataType="UInt16" band="{i}"><Description>{band}</Description>')
        for r, c in srcs:
            lines.append(f'<SimpleSource><SourceFilename relativeToVRT="1">{stack.name}</SourceFilename>'
                         f"<SourceBand>{i}</SourceBand>"
                         f'<SrcRect xOff="0" yOff="0" xSize="{w}" ySize="{h}"/>'
                         f'<DstRect xOff="{c}" yOff="{r}" xSize="{w}" ySize="{h}"/></SimpleSource>')
        lines.append("</VRTRasterBand>")
    lines.append("</VRTDataset>")
    path.write_text("\n".join(lines))
    return path


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def make_models(root: Path) -> dict[str, Path]:
    """A ViT-Tiny backbone and a Siamese ViT-Tiny change model, with ONNX exports."""
    import torch

    from rsmae.bands import get_sensor
    from rsmae.models import BackboneMeta, create_encoder, save_backbone
    from rsmae.predict.export import export_any_onnx
    from rsmae.tasks.change import ChangeTask, save_change_model

    bands = list(get_sensor("s2-l1c").names)
    torch.manual_seed(0)
    enc = create_encoder("vit_tiny", in_chans=13, img_size=WINDOW, patch_size=PATCH)
    meta = BackboneMeta(preset="vit_tiny", img_size=WINDOW, patch_size=PATCH, in_chans=13, bands=bands,
                        sensor="s2-l1c", mean=[1500.0] * 13, std=[600.0] * 13, gsd=10.0)
    models = {"embed": save_backbone(enc, root / "backbone.safetensors", meta)}
    task = ChangeTask(bands=bands, preset="vit_tiny", patch_size=PATCH, img_size=WINDOW, sensor="s2-l1c")
    task.set_statistics([1500.0] * 13, [600.0] * 13)
    models["change"] = save_change_model(task, root / "change.safetensors", extra={"threshold": 0.5})
    for kind in ("embed", "change"):
        models[f"{kind}-onnx"] = export_any_onnx(models[kind], root / f"{kind}.onnx")[0]
    return models


def _with_precision(config_cls: type, precision: str) -> dict:
    """``precision`` for :class:`PredictConfig`, or (a run.py without it) as Predictor.use's default."""
    if "precision" in getattr(config_cls, "__dataclass_fields__", {}):
        return {"precision": precision}
    from rsmae.predict.models import Predictor

    use = Predictor.use

    def use_at(self: Predictor, engine: str = "torch", threads: int | None = None,
               precision_: str = precision, device: str = "cpu") -> Predictor:
        return use(self, engine, threads, precision_, device)

    Predictor.use = use_at
    return {}


def run_case(case: dict) -> dict:
    """One measurement (in a subprocess): seconds of the prediction call and peak RSS."""
    import resource

    from rsmae.predict.models import resolve_precision

    out = Path(case["out"])
    out.mkdir(parents=True, exist_ok=True)
    windows = []
    task, method, threads = case["task"], case["method"], case["threads"]
    args = (Path(case["date1"]), Path(case["date2"])) if task == "change" else (Path(case["date1"]),)
    start = time.perf_counter()
    if method == "plain":
        run = plain_embed if task == "embed" else plain_change
        windows.append(run(*args, Path(case["model"]), out / "plain.tif", threads))
    elif method == "terratorch":
        windows.append(terratorch_change(*args, Path(case["model"]), out / "tt.tif", threads,
                                         case["precision"]))
    else:
        from rsmae.predict import PredictConfig, predict_change, predict_embed

        extra = _with_precision(PredictConfig, case["precision"])
        cfg = PredictConfig(overlap=OVERLAP, batch=16, threads=threads, **extra)
        if task == "embed":
            predict_embed([case["date1"]], case["model"], out, cfg, progress=windows.append)
        else:
            predict_change(case["date1"], case["date2"], case["model"], out, cfg, progress=windows.append)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    engine = "onnx" if case["model"].endswith(".onnx") else "cpu"
    return {"seconds": seconds, "peak_mb": peak, "windows": sum(windows),
            "precision": resolve_precision(case["precision"], engine)}


def _cases(args: argparse.Namespace, sizes: list[int]) -> list[tuple[str, str, str, str, int]]:
    """(task, method, engine, precision, size) of the run."""
    cases = []  # small scenes first: the largest, memory-only in effect, may be stopped
    for size in [0, *sizes]:
        for task in ("embed", "change"):
            if task == "change" and size > args.change_max:
                continue
            cases.append((task, "stream", "torch", "auto", size))
            if size <= args.fp32_max:
                cases.append((task, "stream", "torch", "32", size))
            if size <= args.onnx_max:
                cases.append((task, "stream", "onnx", "32", size))
            if size <= args.plain_max:
                cases.append((task, "plain", "torch", "32", size))
            if task == "change" and size <= args.terratorch_max:
                cases.append((task, "terratorch", "torch", "32", size))
    return cases


def _measure(case: dict, python: str) -> dict:
    proc = subprocess.run([python, __file__, "--case", json.dumps(case)], capture_output=True, text=True,
                          cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1][:200] if proc.stderr.strip() else "failed"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _scene_px(inputs: dict[str, dict[int, Path]], size: int) -> tuple[int, int]:
    import rasterio

    with rasterio.open(inputs["date1"][size]) as ds:
        return ds.height, ds.width


def model_flops(models: dict[str, Path]) -> dict[str, float]:
    """FLOP of one window of each model (the same in fp32 and bf16)."""
    import torch

    from rsmae.evaluation.speed import count_flops
    from rsmae.predict.models import load_change_predictor, load_embed_predictor

    embed = load_embed_predictor(models["embed"]).module.eval()
    change = load_change_predictor(models["change"]).module.eval()
    with torch.inference_mode():
        return {"embed": count_flops(lambda: embed(torch.rand(1, 13, WINDOW, WINDOW))),
                "change": count_flops(lambda: change(torch.rand(1, 2, 13, WINDOW, WINDOW)))}


def matmul_peaks(threads: int | None) -> dict[str, float]:
    """Best matmul GFLOP/s in fp32 and bf16 at the cases' threads."""
    import torch

    from rsmae.evaluation.speed import matmul_peak

    if threads is not None:
        torch.set_num_threads(threads)
    return {"32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}


def measure_all(args: argparse.Namespace, root: Path) -> tuple[list[dict], dict]:
    """Every case of the run, one subprocess each; the peaks and FLOP used for MFU."""
    sizes = [int(s) for s in args.sizes.split(",") if s]
    inputs = make_inputs(args.data, root / "inputs", sizes)
    models = make_models(root / "models")
    flops, peaks = model_flops(models), matmul_peaks(args.threads)
    print(json.dumps({"flops": flops, "peaks": peaks}), flush=True)
    rows = []
    for i, (task, method, engine, precision, size) in enumerate(_cases(args, sizes)):
        if method == "terratorch" and not args.terratorch_python:
            continue
        model = models[f"{task}-onnx" if engine == "onnx" else task]
        case = {"task": task, "method": method, "date1": str(inputs["date1"][size]),
                "date2": str(inputs["date2"][size]), "model": str(model), "out": str(root / f"out{i}"),
                "threads": args.threads, "precision": precision}
        h, w = _scene_px(inputs, size)
        load = os.getloadavg()[0]
        result = _measure(case, args.terratorch_python if method == "terratorch" else sys.executable)
        km2 = h * w * 1e-4
        row = {"task": task, "method": method, "engine": engine, "precision": result.get("precision", ""),
               "scene": f"{CITY} (real)" if size == 0 else f"mosaic {size}²", "height_px": h, "width_px": w,
               "km2": round(km2, 2), "windows": result.get("windows", ""), "seconds": "", "km2_per_s": "",
               "gflop_per_s": "", "mfu_pct": "", "peak_rss_mb": "", "load_before": round(load, 1),
               "load_after": round(os.getloadavg()[0], 1), "note": result.get("error", "")}
        if "seconds" in result:
            rate = flops[task] * result["windows"] / result["seconds"] / 1e9
            row.update(seconds=round(result["seconds"], 2), km2_per_s=round(km2 / result["seconds"], 2),
                       gflop_per_s=round(rate, 1), mfu_pct=round(100 * rate / peaks[result["precision"]], 1),
                       peak_rss_mb=round(result["peak_mb"]))
        print(json.dumps(row), flush=True)
        rows.append(row)
    info = {"flops": flops, "peaks": peaks, "inputs": inputs, "models": models}
    return rows, info


def main() -> None:
    """Run the benchmark (or, with --case, one measurement)."""
    from bench_predict_report import agreement, write_results

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    p.add_argument("--sizes", default="2048,4096,8192,20480",
                   help="mosaic sides in px (the real city is always run)")
    p.add_argument("--plain-max", type=int, default=2048,
                   help="largest mosaic of the plain loop (it reads the scene whole)")
    p.add_argument("--onnx-max", type=int, default=2048, help="largest mosaic of onnxruntime")
    p.add_argument("--fp32-max", type=int, default=2048, help="largest mosaic of the fp32 stream")
    p.add_argument("--change-max", type=int, default=4096, help="largest mosaic of change prediction")
    p.add_argument("--terratorch-python", help="python of an environment with TerraTorch (else no such rows)")
    p.add_argument("--terratorch-max", type=int, default=2048, help="largest mosaic of TerraTorch")
    p.add_argument("--agreement-model", type=Path,
                   default=REPO / "runs" / "cd_readme" / "change_model.safetensors",
                   help="a trained change model for the bf16/fp32 agreement (else the bench's)")
    p.add_argument("--threads", type=int, default=1,
                   help="model threads of every method (1: stable on a machine shared with other jobs)")
    p.add_argument("--case", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.case:
        print(json.dumps(run_case(json.loads(args.case))))
        return
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_predict_") as tmp:
        rows, info = measure_all(args, Path(tmp))
        agree = agreement(args, info, Path(tmp) / "agreement")
    command = "python benchmarks/bench_predict.py " + " ".join(sys.argv[1:])
    write_results(rows, info, agree, args, command.strip(), time.perf_counter() - start)


if __name__ == "__main__":
    main()
