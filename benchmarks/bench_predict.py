"""Whole-scene prediction speed and memory: km²/s and peak RSS against scene size (issue 23).

Scenes: a real 10 m Sentinel-2 L1C city of OSCD (cupertino, 1015 x 788 px, both dates put on one
13-band stack each) and larger virtual scenes: VRT mosaics of that stack repeated to 2 k², 4 k² and
8 k² px. Models: a ViT-Tiny backbone (patch 16, window 96, 13 bands) and a Siamese ViT-Tiny change
model (window 96); random weights (speed does not depend on them).

Methods, each case in a fresh subprocess (peak RSS from ``resource.getrusage``, imports included):

* ``stream``: ``rsmae predict`` (strips read as the scan goes, 16 windows per model call, cosine
  blending, rows written as finished, COGs with overviews, PCA preview / polygons), PyTorch or
  onnxruntime (the model exported to a file first);
* ``plain``: the usual loop: the whole scene read first, one window per forward, blended in
  scene-sized arrays, one GeoTIFF written at the end (the change one is
  :func:`rsmae.evaluation.sliding.sliding_window_logits` with ``batch_size=1``, as
  ``predict_scene`` does today with both dates in memory).

Both use the same windows (window 96, overlap 32) and the same model threads (``--threads``, 1 by
default: on 2 cores shared with other jobs, PyTorch with 2 threads ran a batch 4-14x slower than with
1, as OpenMP threads wait for each other when one is descheduled). km² counts 100 m² per pixel. The
plain loop is not run beyond ``--plain-max`` (it holds the scene in memory: 13 bands x float32).

Example:
    python benchmarks/bench_predict.py --sizes 2048,4096 --plain-max 2048   # ~6 min on 2 cores
    python benchmarks/bench_predict.py --sizes 1024,2048 --quick
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from provenance import git_commit

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
MEASURED = ("rsmae/predict", "rsmae/tiling", "rsmae/evaluation/sliding.py", "benchmarks/bench_predict.py")
CITY = "cupertino"
WINDOW, OVERLAP, PATCH = 96, 32, 16


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


def plain_embed(scene: Path, backbone: Path, out: Path, threads: int | None) -> int:
    """The plain loop for embeddings: whole scene read, one window per forward, one write."""
    import numpy as np
    import rasterio
    from rasterio.transform import Affine

    from rsmae.evaluation.sliding import blend_window, window_starts
    from rsmae.predict.models import load_embed_predictor
    from rsmae.predict.scene import find_scenes, open_scene, read_float
    from rsmae.tiling.grid import SceneReader

    pred = load_embed_predictor(backbone).use("torch", threads)
    from rsmae.bands import get_sensor

    sensor = get_sensor("s2-l1c")
    s = open_scene(find_scenes([str(scene)], sensor, pred.bands)[0], sensor)
    g = s.grid
    with SceneReader(s.scene, g, s.dtype, nodata=s.nodata) as reader:
        image = read_float(reader, s.nodata, 0, 0, g.height, g.width)
    hc, wc, win = g.height // PATCH, g.width // PATCH, WINDOW // PATCH
    total = np.zeros((pred.channels, hc, wc), np.float32)
    norm = np.zeros((hc, wc), np.float32)
    weight = blend_window(win).numpy()
    n = 0
    for r in window_starts(hc * PATCH, WINDOW, WINDOW - OVERLAP):
        for c in window_starts(wc * PATCH, WINDOW, WINDOW - OVERLAP):
            feats = pred(image[None, None, :, r:r + WINDOW, c:c + WINDOW])[0]
            total[:, r // PATCH:r // PATCH + win, c // PATCH:c // PATCH + win] += feats * weight
            norm[r // PATCH:r // PATCH + win, c // PATCH:c // PATCH + win] += weight
            n += 1
    with rasterio.open(out, "w", driver="GTiff", width=wc, height=hc, count=pred.channels, dtype="float32",
                       crs=g.crs, transform=g.affine * Affine.scale(PATCH)) as ds:
        ds.write(total / norm)
    return n


def plain_change(date1: Path, date2: Path, model: Path, out: Path, threads: int | None) -> int:
    """The plain loop for change: both dates read whole, ``sliding_window_logits`` one window a call."""
    import numpy as np
    import rasterio
    import torch

    from rsmae.bands import get_sensor
    from rsmae.evaluation.sliding import sliding_window_logits
    from rsmae.predict.models import load_change_predictor
    from rsmae.predict.scene import find_scenes, open_scene, read_float
    from rsmae.tiling.grid import SceneReader

    pred = load_change_predictor(model).use("torch", threads)
    sensor = get_sensor("s2-l1c")
    dates = []
    for path in (date1, date2):
        s = open_scene(find_scenes([str(path)], sensor, pred.bands)[0], sensor)
        with SceneReader(s.scene, s.grid, s.dtype, nodata=s.nodata) as reader:
            dates.append(read_float(reader, s.nodata, 0, 0, s.grid.height, s.grid.width))
    pair = torch.from_numpy(np.stack(dates))
    calls = []

    def predict(batch: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        return torch.from_numpy(pred(batch.numpy()))[:, 0]

    prob = sliding_window_logits(predict, pair, window=WINDOW, overlap=OVERLAP, batch_size=1).numpy()
    g = s.grid
    with rasterio.open(out, "w", driver="GTiff", width=g.width, height=g.height, count=1, dtype="float32",
                       crs=g.crs, transform=g.affine) as ds:
        ds.write(prob[None])
    return len(calls)


def run_case(case: dict) -> dict:
    """One measurement (in a subprocess): seconds of the prediction call and peak RSS."""
    import resource

    from rsmae.predict import PredictConfig, predict_change, predict_embed

    out = Path(case["out"])
    out.mkdir(parents=True, exist_ok=True)
    windows = []
    start = time.perf_counter()
    if case["method"] == "plain":
        if case["task"] == "embed":
            windows.append(plain_embed(Path(case["date1"]), Path(case["model"]), out / "plain.tif",
                                       case["threads"]))
        else:
            windows.append(plain_change(Path(case["date1"]), Path(case["date2"]), Path(case["model"]),
                                        out / "plain.tif", case["threads"]))
    else:
        cfg = PredictConfig(overlap=OVERLAP, batch=16, threads=case["threads"])
        if case["task"] == "embed":
            predict_embed([case["date1"]], case["model"], out, cfg, progress=windows.append)
        else:
            predict_change(case["date1"], case["date2"], case["model"], out, cfg, progress=windows.append)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"seconds": seconds, "peak_mb": peak, "windows": sum(windows)}


def _cases(sizes: list[int], plain_max: int, onnx_max: int) -> list[tuple[str, str, str, int]]:
    cases = []
    for task in ("embed", "change"):
        for size in [0, *sizes]:
            cases.append((task, "stream", "torch", size))
            if size <= onnx_max:
                cases.append((task, "stream", "onnx", size))
            if size <= plain_max:
                cases.append((task, "plain", "torch", size))
    return cases


def _measure(case: dict) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--case", json.dumps(case)], capture_output=True,
                          text=True, cwd=REPO)
    if proc.returncode != 0:
        raise SystemExit(f"error: case {case} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _scene_px(inputs: dict[str, dict[int, Path]], size: int) -> tuple[int, int]:
    import rasterio

    with rasterio.open(inputs["date1"][size]) as ds:
        return ds.height, ds.width


def measure_all(args: argparse.Namespace, root: Path) -> list[dict]:
    """Every case of the run, one subprocess each."""
    sizes = [int(s) for s in args.sizes.split(",") if s]
    inputs = make_inputs(args.data, root / "inputs", sizes)
    models = make_models(root / "models")
    rows = []
    for i, (task, method, engine, size) in enumerate(_cases(sizes, args.plain_max, args.onnx_max)):
        model = models[f"{task}-onnx" if engine == "onnx" else task]
        case = {"task": task, "method": method, "date1": str(inputs["date1"][size]),
                "date2": str(inputs["date2"][size]), "model": str(model), "out": str(root / f"out{i}"),
                "threads": args.threads}
        h, w = _scene_px(inputs, size)
        load = os.getloadavg()[0]
        result = _measure(case)
        km2 = h * w * 1e-4
        row = {"task": task, "method": method, "engine": engine,
               "scene": f"{CITY} (real)" if size == 0 else f"mosaic {size}²", "height_px": h, "width_px": w,
               "km2": round(km2, 2), "windows": result["windows"], "seconds": round(result["seconds"], 2),
               "km2_per_s": round(km2 / result["seconds"], 2), "peak_rss_mb": round(result["peak_mb"]),
               "load_before": round(load, 1), "load_after": round(os.getloadavg()[0], 1)}
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def _ratio(rows: list[dict], row: dict) -> str:
    plain = [r for r in rows
             if r["task"] == row["task"] and r["scene"] == row["scene"] and r["method"] == "plain"]
    if row["method"] == "plain" or not plain:
        return ""
    return f"{row['km2_per_s'] / plain[0]['km2_per_s']:.2f}x"


def write_results(rows: list[dict], command: str, seconds: float, threads: int | None) -> None:
    """benchmarks/results/predict.{csv,md,png}."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    with (RESULTS / "predict.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    from rsmae.evaluation.speed import cpu_name

    lines = ["# Whole-scene prediction: km²/s and peak memory against scene size (issue 23)", "",
             f"- command: `{command}` ({seconds / 60:.1f} min)", f"- commit: {git_commit(MEASURED)}",
             f"- machine: {cpu_name()}, {os.cpu_count()} cores (shared with other jobs), "
             f"{platform.system()} {platform.release()}, Python {platform.python_version()}",
             f"- models: ViT-Tiny backbone (patch {PATCH}) and Siamese ViT-Tiny change model, "
             f"window {WINDOW}, overlap {OVERLAP}, 13 bands; stream: 16 windows per call; model threads: "
             f"{threads} for every method",
             "- km² at 100 m² per pixel (10 m); peak RSS of a fresh process per case (imports, model "
             "included)",
             "- load: the 1-minute load average of the machine before and after each case (2 cores: above 2, "
             "other jobs took CPU from the case and its time is an upper bound)", "",
             "| task | method | engine | scene | px | km² | windows | s | km²/s | vs plain | peak RSS MB "
             "| load |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['task']} | {r['method']} | {r['engine']} | {r['scene']} | {r['height_px']}x"
                     f"{r['width_px']} | {r['km2']} | {r['windows']} | {r['seconds']} | {r['km2_per_s']} | "
                     f"{_ratio(rows, r)} | {r['peak_rss_mb']} | {r['load_before']}-{r['load_after']} |")
    (RESULTS / "predict.md").write_text("\n".join(lines) + "\n")
    _plot(rows)


def _plot(rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for task, ax in zip(("embed", "change"), axes, strict=True):
        lines = (("stream", "torch", "o-"), ("stream", "onnx", "s--"), ("plain", "torch", "x:"))
        for method, engine, style in lines:
            pts = sorted((r["height_px"] * r["width_px"] / 1e6, r["peak_rss_mb"]) for r in rows
                         if r["task"] == task and r["method"] == method and r["engine"] == engine)
            if pts:
                ax.plot(*zip(*pts, strict=True), style, label=f"{method} ({engine})")
        ax.set(xscale="log", xlabel="scene size (Mpx)", ylabel="peak RSS (MB)", title=f"predict {task}")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "predict.png", dpi=120)


def main() -> None:
    """Run the benchmark (or, with --case, one measurement)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    p.add_argument("--sizes", default="2048,4096,8192",
                   help="mosaic sides in px (the real city is always run)")
    p.add_argument("--plain-max", type=int, default=4096, help="largest mosaic of the plain loop")
    p.add_argument("--onnx-max", type=int, default=2048, help="largest mosaic of onnxruntime")
    p.add_argument("--threads", type=int, default=1,
                   help="model threads of every method (1: stable on a machine shared with other jobs)")
    p.add_argument("--case", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.case:
        print(json.dumps(run_case(json.loads(args.case))))
        return
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_predict_") as tmp:
        rows = measure_all(args, Path(tmp))
    command = "python benchmarks/bench_predict.py " + " ".join(sys.argv[1:])
    write_results(rows, command.strip(), time.perf_counter() - start, args.threads)


if __name__ == "__main__":
    main()
