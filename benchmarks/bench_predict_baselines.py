"""The baselines of ``bench_predict.py``: the plain loop a user writes, and TerraTorch's tiled inference.

* :func:`plain_embed` / :func:`plain_change`: the whole scene read first, one window per forward in
  fp32, blended in scene-sized arrays, one GeoTIFF written at the end (the change one is
  :func:`rsmae.evaluation.sliding.sliding_window_logits` with ``batch_size=1``).
* :func:`terratorch_change`: ``terratorch.tasks.tiled_inference`` (TerraTorch 1.2) on the same change
  module over the whole pair held as one tensor (its design), 16 windows per call, its own blending
  and border handling; run by the interpreter of an environment where TerraTorch installs.
"""

from __future__ import annotations

from pathlib import Path

WINDOW, OVERLAP, PATCH = 96, 32, 16


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


def terratorch_change(date1: Path, date2: Path, model: Path, out: Path, threads: int | None,
                      precision: str) -> int:
    """TerraTorch's tiled inference of the change model over the whole pair; returns the model windows."""
    import numpy as np
    import rasterio
    import torch
    from terratorch.tasks.tiled_inference import tiled_inference

    from rsmae.predict.models import load_change_predictor, resolve_precision

    pred = load_change_predictor(model)
    module = pred.module.eval()
    if threads is not None:
        torch.set_num_threads(threads)
    dates = []
    for path in (date1, date2):
        with rasterio.open(path) as ds:
            dates.append(ds.read().astype(np.float32))
            profile = ds.crs, ds.transform, ds.height, ds.width
    pair = torch.from_numpy(np.stack(dates))[None]  # (1, 2, C, H, W): the whole scene in memory
    windows = []
    bf16 = resolve_precision(precision) == "bf16"

    def forward(x: torch.Tensor) -> torch.Tensor:
        windows.append(x.shape[0])
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            return module(x).float()

    with torch.inference_mode():
        prob = tiled_inference(forward, pair, crop=WINDOW, stride=WINDOW - OVERLAP, batch_size=16,
                               device="cpu")
    crs, transform, h, w = profile
    with rasterio.open(out, "w", driver="GTiff", width=w, height=h, count=1, dtype="float32", crs=crs,
                       transform=transform) as ds:
        ds.write(prob[0].float().numpy())
    return sum(windows)
