"""Turn eo-learn's REFERENCE_SCENES.npy into GeoTIFF scenes the tiler reads.

The array is (time, H, W, band) float32 L1C reflectance in the eo-learn band order
B01..B08, B8A, B09..B12 (layout ``eolearn-l1c``); the footprint comes from ``bbox.geojson``.

Example:
    python datasets/eolearn_s2l1c/prepare.py ../shared/data/eolearn_s2l1c_testpatch --out work/eolearn
    python pipelines/tile.py work/eolearn --sensor s2-l1c --band-order eolearn-l1c --tile-size 32 \
        --out stores/eolearn.zarr
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_bounds


def prepare(root: Path, out: Path) -> list[Path]:
    """Write one 13-band float32 GeoTIFF per time frame; return their paths."""
    scenes = np.load(root / "REFERENCE_SCENES.npy")
    bbox = json.loads((root / "bbox.geojson").read_text())
    xs, ys = zip(*bbox["coordinates"][0], strict=True)
    crs = bbox["crs"]["properties"]["name"].split("EPSG::")[-1]
    _, height, width, bands = scenes.shape
    transform = from_bounds(min(xs), min(ys), max(xs), max(ys), width, height)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for t, frame in enumerate(scenes):
        path = out / f"eolearn_reference_{t}.tif"
        with rasterio.open(path, "w", driver="GTiff", width=width, height=height, count=bands,
                           dtype="float32", crs=f"EPSG:{crs}", transform=transform) as dst:
            dst.write(np.moveaxis(frame.astype(np.float32), -1, 0))
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    """Command line."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("root", type=Path)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    if not (args.root / "REFERENCE_SCENES.npy").is_file():
        print(f"error: {args.root}: no REFERENCE_SCENES.npy; pass the eo-learn test patch folder",
              file=sys.stderr)
        return 2
    for path in prepare(args.root, args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
