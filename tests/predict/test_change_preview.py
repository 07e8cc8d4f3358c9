"""predict change on real OSCD crops: the preview (date 1 in true colour, change over it), date matching."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from PIL import Image

from rsmae.predict import PredictConfig, predict_change
from rsmae.predict.products import NODATA_RGB, change_preview, true_colour
from tests.predict.predict_helpers import city_stack, read, read_city, tiny_change_model, write_stack

WINDOW = (300, 200, 96, 128)  # pisa: city and fields


@pytest.fixture(scope="module")
def change(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A pair with a nodata border on date 1, predicted at the median probability (so both classes occur)."""
    root = tmp_path_factory.mktemp("preview")
    model = tiny_change_model(root / "change.safetensors")
    pixels, transform, crs = read_city("pisa", 1, WINDOW)
    pixels[:, :, 120:] = 0  # the Sentinel-2 fill value: nodata
    d1 = write_stack(root / "d1" / "d1.tif", pixels, transform, crs)
    d2 = city_stack(root / "d2" / "d2.tif", "pisa", 2, WINDOW)
    median = float(np.nanmedian(read(predict_change(str(d1), str(d2), model, root / "first")
                                     / "change_prob.tif")))
    folder = predict_change(str(d1), str(d2), model, root / "cd", PredictConfig(threshold=median))
    return {"d1": d1, "folder": folder}


def _rgb_reader(path: Path) -> object:
    """Date 1's B04, B03, B02 by band description, float32 with NaN where any is 0."""
    with rasterio.open(path) as ds:
        picks = [ds.descriptions.index(name) + 1 for name in ("B04", "B03", "B02")]

    def read_rgb(row: int, col: int, height: int, width: int) -> np.ndarray:
        with rasterio.open(path) as ds:
            block = ds.read(picks, window=rasterio.windows.Window(col, row, width, height)).astype(np.float32)
        block[:, (block == 0).any(axis=0)] = np.nan
        return block

    return read_rgb


def test_change_preview_draws_the_mask_over_true_colour_and_nodata_as_such(change: dict[str, Path]) -> None:
    folder = change["folder"]
    assert sorted(p.name for p in folder.iterdir()) == [
        "change_mask.tif", "change_prob.tif", "changes.gpkg", "info.json", "preview.png"]
    mask = read(folder / "change_mask.tif")[0]
    assert (mask == 1).any() and (mask == 0).any() and (mask[:, 120:] == 255).all()
    png = np.asarray(Image.open(folder / "preview.png").convert("RGB"))
    info = json.loads((folder / "info.json").read_text())
    assert info["preview"] == [96, 128] and png.shape[1] == 128 and png.shape[0] > 96  # the caption below
    plain, _ = true_colour(_rgb_reader(change["d1"]), 96, 128)
    shown = png[:96, :128]
    differs = (shown != plain).any(axis=-1)
    assert differs[mask == 1].all()  # every changed pixel is drawn
    assert not differs[mask == 0].any()  # and nothing else is touched
    assert (shown[mask == 255] == NODATA_RGB).all()
    assert (png[96:] == 255).mean() > 0.5  # a white caption strip with text and swatches
    assert (png[96:] != 255).any()


def test_change_preview_is_downsampled_to_max_side_keeping_small_changes(change: dict[str, Path],
                                                                         tmp_path: Path) -> None:
    read_rgb, mask_path = _rgb_reader(change["d1"]), change["folder"] / "change_mask.tif"
    shape = change_preview(read_rgb, mask_path, tmp_path / "small.png", title="pisa", threshold=0.5,
                           max_side=50, rows=7)  # blocks of 6 rows: a multiple of the step (3)
    assert shape == (32, 43)  # every 3rd pixel of 96 x 128
    png = np.asarray(Image.open(tmp_path / "small.png").convert("RGB"))
    assert png.shape[1] == 43 and max(shape) <= 50
    plain, _ = true_colour(read_rgb, 96, 128, max_side=50)
    mask = np.pad(read(mask_path)[0], ((0, 0), (0, 1)), constant_values=0)  # 129 = 43 cells of 3
    cells = mask.reshape(32, 3, 43, 3).transpose(0, 2, 1, 3).reshape(32, 43, 9)
    differs = (png[:32] != plain).any(axis=-1)
    changed = (cells == 1).any(axis=-1)
    assert changed.any() and differs[changed].all()  # a cell with any changed pixel is drawn
    quiet = (cells == 0).all(axis=-1)
    assert quiet.any() and not differs[quiet].any()


def test_a_model_trained_on_matched_dates_gets_date_2_matched_to_date_1(tmp_path: Path) -> None:
    """A global darkening of date 2 is undone for a model saved with ``match_dates`` (as evaluate saves)."""
    import torch

    from rsmae.tasks.change import ChangeTask, save_change_model
    from tests.predict.predict_helpers import S2

    torch.manual_seed(0)
    task = ChangeTask(bands=S2, preset="vit_test", patch_size=8, img_size=32, sensor="s2-l1c")
    task.set_statistics([1500.0] * 13, [600.0] * 13)
    matched = save_change_model(task, tmp_path / "matched.safetensors", extra={"match_dates": True})
    raw = save_change_model(task, tmp_path / "raw.safetensors", extra={})
    pixels, transform, crs = read_city("pisa", 1, (300, 200, 64, 64))
    d1 = write_stack(tmp_path / "d1" / "d1.tif", pixels, transform, crs)
    dark = write_stack(tmp_path / "d2" / "d2.tif", np.rint(pixels * 0.7).astype(pixels.dtype), transform, crs)

    def prob(model: Path, date2: Path, out: str) -> np.ndarray:
        folder = predict_change(str(d1), str(date2), model, tmp_path / out)
        return read(folder / "change_prob.tif")[0]

    same = prob(raw, d1, "same")  # no change: the (untrained) model's output for identical dates
    unmatched = np.abs(prob(raw, dark, "raw") - same).max()  # the darkening shows
    assert unmatched > 1e-4 and np.abs(prob(matched, dark, "matched") - same).max() < unmatched / 20
    (info,) = (tmp_path / "matched").glob("*/info.json")
    assert json.loads(info.read_text())["match_dates"] is True
    from rsmae.predict.models import load_change_predictor
    from rsmae.predict.onnx import export_onnx

    exported = export_onnx(load_change_predictor(matched), tmp_path / "matched.onnx")  # carries it too
    assert np.abs(prob(exported, dark, "onnx") - same).max() < unmatched / 20


def test_true_colour_keeps_no_full_resolution_block_once_sampled() -> None:
    import weakref

    blocks: list[weakref.ref] = []
    alive: list[int] = []

    def read(row: int, col: int, height: int, width: int) -> np.ndarray:
        alive.append(sum(ref() is not None for ref in blocks))  # earlier blocks still held
        block = np.full((3, height, width), float(row), np.float32)
        blocks.append(weakref.ref(block))
        return block

    rgb, blank = true_colour(read, 64, 40, max_side=8, rows=8)
    assert len(blocks) == 8 and max(alive) == 0
    assert rgb.shape == (8, 5, 3) and not blank.any()
