"""Turn eo-learn's REFERENCE_SCENES.npy into GeoTIFF scenes the tiler reads.

The array is (time, H, W, band) float32 L1C reflectance in the eo-learn band order
B01..B08, B8A, B09..B12 (layout ``eolearn-l1c``); the footprint comes from ``bbox.geojson``.
By default the frames are written as uint16 digital numbers (reflectance x 10000, the L1C
convention of EuroSAT and OSCD), so they share stores and statistics with those; ``--dtype
float32`` keeps reflectance.

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


def prepare(root: Path, out: Path, dtype: str = "uint16") -> list[Path]:
    """Write one 13-band GeoTIFF per time frame (uint16 DN or float32 reflectance)."""
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
                           dtype=dtype, crs=f"EPSG:{crs}", transform=transform) as dst:
            pixels = np.moveaxis(frame.astype(np.float32), -1, 0)
            if dtype == "uint16":
                pixels = np.clip(np.rint(pixels * 10000), 1, 65535).astype(np.uint16)
            dst.write(pixels)
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    """Command line."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("root", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--dtype", choices=("uint16", "float32"), default="uint16")
    args = p.parse_args(argv)
    if not (args.root / "REFERENCE_SCENES.npy").is_file():
        print(f"error: {args.root}: no REFERENCE_SCENES.npy; pass the eo-learn test patch folder",
              file=sys.stderr)
        return 2
    for path in prepare(args.root, args.out, args.dtype):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
