"""A 20480² px virtual scene is predicted in bounded memory: the scan never holds the scene."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from rsmae.models import BackboneMeta, create_encoder, save_backbone
from tests.predict.predict_helpers import read, read_city, write_stack

RGB = ["B04"]  # one band: reading 20480² px is most of the time
TILE = 512

_RUN = """
import json, resource, sys
from rsmae.predict import PredictConfig, predict_embed
predict_embed([sys.argv[1]], sys.argv[2], sys.argv[3], PredictConfig(overlap=0, pool=True, threads=1))
print(json.dumps({"peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def _mosaic(path: Path, tile: Path, size: int) -> Path:
    """A ``size`` x ``size`` px VRT of ``tile`` repeated (GDAL reads it lazily: nothing is materialised)."""
    import rasterio

    with rasterio.open(tile) as ds:
        t, crs = ds.transform, ds.crs.to_wkt().replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    lines = [f'<VRTDataset rasterXSize="{size}" rasterYSize="{size}"><SRS>{crs}</SRS>',
             f"<GeoTransform>{t.c}, {t.a}, {t.b}, {t.f}, {t.d}, {t.e}</GeoTransform>"]
    for i, band in enumerate(RGB, 1):
        lines.append(f'<VRTRasterBand dataType="UInt16" band="{i}"><Description>{band}</Description>')
        lines += [f'<SimpleSource><SourceFilename relativeToVRT="1">{tile.name}</SourceFilename>'
                  f'<SourceBand>{i}</SourceBand><SrcRect xOff="0" yOff="0" xSize="{TILE}" ySize="{TILE}"/>'
                  f'<DstRect xOff="{c}" yOff="{r}" xSize="{TILE}" ySize="{TILE}"/></SimpleSource>'
                  for r in range(0, size, TILE) for c in range(0, size, TILE)]
        lines.append("</VRTRasterBand>")
    path.write_text("\n".join(lines) + "</VRTDataset>")
    return path


def _peak(scene: Path, backbone: Path, out: Path) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", _RUN, str(scene), str(backbone), str(out)], env=env,
                          capture_output=True, text=True, check=True, timeout=300)
    return json.loads(proc.stdout.strip().splitlines()[-1])["peak_mb"]


@pytest.mark.slow
def test_a_20k_scene_is_predicted_in_the_memory_of_a_small_one(tmp_path: Path) -> None:
    pixels, transform, crs = read_city("cupertino", 1, (0, 0, TILE, TILE))
    names = ["B01", "B02", "B03", "B04"]
    rgb = np.maximum(pixels[[names.index(b) for b in RGB]], 1)  # no nodata: every window is predicted
    tile = write_stack(tmp_path / "scene" / "tile.tif", rgb, transform, crs, bands=RGB)
    torch.manual_seed(0)  # a cheap model: windows of 512 px, 64 tokens each, pooled
    enc = create_encoder("vit_test", in_chans=1, img_size=512, patch_size=64)
    meta = BackboneMeta(preset="vit_test", img_size=512, patch_size=64, in_chans=1, bands=RGB,
                        sensor="s2-l1c", mean=[1500.0], std=[600.0], gsd=10.0)
    backbone = save_backbone(enc, tmp_path / "b.safetensors", meta)
    small = _peak(_mosaic(tmp_path / "scene" / "small.vrt", tile, 1024), backbone, tmp_path / "small")
    big = _peak(_mosaic(tmp_path / "scene" / "big.vrt", tile, 20480), backbone, tmp_path / "big")
    (folder,) = [p for p in (tmp_path / "big").iterdir() if p.is_dir()]
    emb = read(folder / "embedding.tif")
    assert emb.shape[1:] == (40, 40) and np.isfinite(emb).all()  # every window of the 20480² scene
    whole = 20480**2 * 4 / 2**20  # the scene as float32: 1600 MB
    print(f"peak RSS: {small:.0f} MB at 1024², {big:.0f} MB at 20480² (the scene as float32: {whole:.0f} MB)")
    assert big - small < 300, (small, big, whole)
