"""``rsmae predict classify`` on real EuroSAT and OSCD pixels: georeferencing, argmax agreement,
nodata, models of other tasks, missing bands, reruns, the ONNX engine."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from rio_cogeo.cogeo import cog_validate

from rsmae.cli import main as rsmae_main
from rsmae.models import BackboneMeta, create_encoder
from rsmae.predict import PredictConfig, predict_classify
from rsmae.tasks.finetune import FinetuneTask, save_classifier
from tests.conftest import EUROSAT, load_script
from tests.predict.predict_helpers import S2, city_stack, read, tiny_backbone, tiny_change_model, write_stack

TILE = EUROSAT / "train" / "Forest" / "Forest_1031.tif"  # 13 x 64 x 64, EuroSAT band order, no nodata
CLASSES = sorted(p.name for p in (EUROSAT / "train").iterdir() if p.is_dir())
EUROSAT_ORDER = PredictConfig(band_order="eurosat")


def tiny_classifier(path: Path) -> Path:
    """An untrained vit_test classifier (window 32, patch 8) of EuroSAT's classes, saved as evaluate does."""
    torch.manual_seed(0)
    encoder = create_encoder("vit_test", in_chans=13, img_size=32, patch_size=8)
    meta = BackboneMeta(preset="vit_test", img_size=32, patch_size=8, in_chans=13, bands=S2, sensor="s2-l1c",
                        mean=[1500.0] * 13, std=[600.0] * 13, gsd=10.0)
    task = FinetuneTask(encoder, len(CLASSES), tune="full", seed=0)
    with torch.no_grad():  # a head far from uniform, so classes differ across the scene
        task.head.fc.weight.normal_(0.0, 0.2, generator=torch.Generator().manual_seed(1))
    return save_classifier(task, path, meta, CLASSES)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("classify")
    pixels = read(TILE)
    holes = pixels.copy()
    holes[4, 10:20, 40:50] = 0  # B05 of EuroSAT's order: nodata in one band only
    holes[11, 50, 5] = 0  # one pixel of B12
    with rasterio.open(TILE) as src:
        transform, crs = src.transform, src.crs
    order = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B09", "B10", "B11", "B12", "B8A"]
    return {
        "classifier": tiny_classifier(root / "classifier.safetensors"),
        "backbone": tiny_backbone(root / "backbone.safetensors"),
        "change": tiny_change_model(root / "change.safetensors"),
        "holes": write_stack(root / "holes" / "holes.tif", holes, transform, crs, bands=order),
        "twelve": write_stack(root / "twelve" / "twelve.tif", pixels[[i for i in range(13) if i != 9]],
                              transform, crs, bands=[b for i, b in enumerate(order) if i != 9]),
        "city": city_stack(root / "city" / "pisa.tif", "pisa", 1, (300, 200, 72, 100)),
    }


def _outputs(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    return read(folder / "class_index.tif")[0], read(folder / "class_prob.tif")


@pytest.mark.parametrize("scene", ["eurosat", "city"])
def test_class_and_probability_cogs_are_on_the_input_grid_and_agree(tmp_path: Path, files: dict[str, Path],
                                                                    scene: str) -> None:
    path, cfg = (TILE, EUROSAT_ORDER) if scene == "eurosat" else (files["city"], PredictConfig())
    (folder,) = predict_classify([str(path)], files["classifier"], tmp_path / "out", cfg)
    assert sorted(p.name for p in folder.iterdir()) == ["class_index.tif", "class_prob.tif", "info.json"]
    with rasterio.open(path) as src, rasterio.open(folder / "class_index.tif") as index, \
            rasterio.open(folder / "class_prob.tif") as prob:
        for out in (index, prob):
            assert out.crs == src.crs and out.transform == src.transform and out.shape == src.shape
        assert index.dtypes == ("uint8",) and index.nodata == 255
        assert json.loads(index.tags()["CLASSES"]) == CLASSES
        assert prob.count == 10 and prob.dtypes[0] == "float32" and np.isnan(prob.nodata)
        assert list(prob.descriptions) == CLASSES
    classes, probs = _outputs(folder)
    assert np.isfinite(probs).all() and np.allclose(probs.sum(axis=0), 1.0, atol=1e-5)
    assert (probs.argmax(axis=0) == classes).all()
    assert np.ptp(probs, axis=(1, 2)).max() > 1e-3  # windows differ, blended per pixel: not one value
    assert all(cog_validate(str(folder / name))[0] for name in ("class_index.tif", "class_prob.tif"))
    info = json.loads((folder / "info.json").read_text())
    assert info["task"] == "classify" and info["classes"] == CLASSES and info["cell"] == 1
    assert (info["window"], info["stride"]) == (32, 24)  # overlapping windows, blended


def test_nodata_in_any_band_is_nodata_in_both_outputs(tmp_path: Path, files: dict[str, Path]) -> None:
    (folder,) = predict_classify([str(files["holes"])], files["classifier"], tmp_path / "out")
    classes, probs = _outputs(folder)
    hole = np.zeros((64, 64), bool)
    hole[10:20, 40:50] = True
    hole[50, 5] = True
    assert (classes[hole] == 255).all() and np.isnan(probs[:, hole]).all()
    assert (classes[~hole] < 10).all() and np.isfinite(probs[:, ~hole]).all()
    assert (probs[:, ~hole].argmax(axis=0) == classes[~hole]).all()


@pytest.mark.parametrize(("command", "model", "culprit", "message"), [
    ("classify", "backbone", "model", "a backbone, not a scene classifier; run rsmae predict embed"),
    ("classify", "change", "model", "a change model, not a scene classifier; run rsmae predict change"),
    ("embed", "classifier", "model", "a scene classifier, not a backbone; run rsmae predict classify"),
    ("change", "classifier", "model", "a scene classifier, not a change model; run rsmae predict classify"),
    ("classify", "classifier", "twelve", "has no band(s) B10"),
])
def test_bad_input_is_one_error_line_naming_the_file_exit_2_and_nothing_written(
        tmp_path: Path, files: dict[str, Path], capsys: pytest.CaptureFixture[str], command: str, model: str,
        culprit: str, message: str) -> None:
    out = tmp_path / "out"
    scene = str(files["twelve"] if culprit == "twelve" else files["holes"])
    option = "--backbone" if command == "embed" else "--model"
    scenes = [scene, scene] if command == "change" else [scene]
    assert rsmae_main(["predict", command, option, str(files[model]), *scenes, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    named = files[culprit] if culprit != "model" else files[model]
    assert len(err) == 1 and err[0].startswith(f"error: {named}") and message in err[0], err
    assert not out.exists() or not any(out.iterdir())


def test_a_rerun_skips_the_finished_scene_through_the_pipeline_script_too(
        tmp_path: Path, files: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    argv = ["classify", "--model", str(files["classifier"]), str(TILE), "--out", str(out), "--band-order",
            "eurosat", "--batch", "4"]
    assert rsmae_main(["predict", *argv]) == 0
    folder = out / "Forest__Forest_1031"
    assert capsys.readouterr().out.strip() == str(folder)
    stamps = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    assert load_script("pipelines/predict.py").main(argv) == 0
    assert capsys.readouterr().out.strip() == str(folder)
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == stamps
    assert [p.name for p in out.iterdir()] == [folder.name]  # no temporary folder left


def test_the_onnx_engine_and_an_exported_onnx_file_match_pytorch(tmp_path: Path,
                                                                  files: dict[str, Path]) -> None:
    pytest.importorskip("onnxruntime")
    torch_run = predict_classify([str(files["city"])], files["classifier"], tmp_path / "torch")[0]
    ort_run = predict_classify([str(files["city"])], files["classifier"], tmp_path / "ort",
                               PredictConfig(engine="onnx"))[0]
    onnx_file = tmp_path / "classifier.onnx"
    assert rsmae_main(["export", str(files["classifier"]), "--format", "onnx", "--out", str(onnx_file)]) == 0
    file_run = predict_classify([str(files["city"])], onnx_file, tmp_path / "file")[0]
    expected = read(torch_run / "class_prob.tif")
    for folder in (ort_run, file_run):
        assert np.allclose(read(folder / "class_prob.tif"), expected, atol=1e-5)
        with rasterio.open(folder / "class_prob.tif") as prob:
            assert list(prob.descriptions) == CLASSES
