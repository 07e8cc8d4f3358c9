"""The PCA preview of an embedding raster: blocks of a byte budget, one sampling grid whatever the block."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from PIL import Image
from rasterio.transform import from_origin

from rsmae.predict import products
from rsmae.predict.products import CovarianceSum, pca_preview


def _raster(path: Path, features: np.ndarray) -> Path:
    k, h, w = features.shape
    with rasterio.open(path, "w", driver="GTiff", height=h, width=w, count=k, dtype="float32",
                       crs="EPSG:32632", transform=from_origin(500000, 5000000, 160, 160),
                       nodata=np.nan) as ds:
        ds.write(features)
    return path


@pytest.mark.parametrize("block_bytes", [1, 5 * 13 * 8 * 4, 1 << 30])
def test_preview_is_the_same_for_any_block_size(tmp_path: Path, block_bytes: int,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(0)
    features = rng.normal(size=(8, 37, 13)).astype(np.float32)  # synthetic: shapes and blocking only
    features[:, 5, 2] = np.nan
    raster = _raster(tmp_path / "emb.tif", features)
    pca = CovarianceSum(8)
    pca.add(features)
    reads: list[int] = []
    real_read = rasterio.io.DatasetReader.read

    def read(ds, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        out = real_read(ds, *args, **kwargs)
        reads.append(out.nbytes)
        return out

    monkeypatch.setattr(rasterio.io.DatasetReader, "read", read)
    pca_preview(raster, tmp_path / "p.png", pca, max_side=10, block_bytes=block_bytes)
    got = np.asarray(Image.open(tmp_path / "p.png"))
    step = -(-37 // 10)  # 4: every 4th cell of the 37 x 13 raster
    mean, axes = pca.components(3)
    projected = np.einsum("kc,chw->khw", axes, features[:, ::step, ::step] - mean[:, None, None])
    want = products._stretch(projected)[0]
    np.testing.assert_array_equal(got, want)
    row_bytes = 13 * 8 * 4
    assert max(reads) <= max(block_bytes, step * row_bytes) or block_bytes >= 37 * row_bytes
