"""A linear probe saved by ``rsmae evaluate --out`` runs in ``rsmae predict classify``, on real EuroSAT and
OSCD pixels: on the input's grid, probabilities summing to 1, the evaluation's own predictions; k-NN
saves no model and ``predict`` says which protocol does."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch

from rsmae.cli import main as rsmae_main
from rsmae.datasets.scene_folder import SceneFolder
from rsmae.evaluation.data import load_classification, load_for_task, task_bands
from rsmae.evaluation.probe import fold_linear_probe
from rsmae.models import BackboneMeta, create_encoder, save_backbone
from rsmae.predict import PredictConfig, predict_classify
from rsmae.tasks.finetune import load_classifier
from rsmae.tasks.probe import extract_features, fit_head
from tests.conftest import EUROSAT
from tests.predict.predict_helpers import S2, city_stack, read

WINDOWS = (0, 17, 40)  # EuroSAT test images (64 x 64 px: one window each) compared with the evaluation


def _backbone(path: Path) -> Path:
    """A 2-block vit_test backbone (64 px, patch 16) with statistics, as the evaluation tests use."""
    torch.manual_seed(0)
    enc = create_encoder("vit_test", in_chans=13, img_size=64, patch_size=16, depth=2, drop_path_rate=0.0)
    meta = BackboneMeta(preset="vit_test", img_size=64, patch_size=16, in_chans=13, bands=S2, sensor="s2-l1c",
                        mean=[1000.0] * 13, std=[500.0] * 13, gsd=10.0, encoder_kwargs={"depth": 2})
    return save_backbone(enc, path, meta)


def _evaluate(backbone: Path, protocol: str, out: Path) -> dict:
    argv = ["evaluate", "--backbone", str(backbone), "--protocol", protocol, "--root", str(EUROSAT),
            "--fraction", "5-shot", "--cache-dir", "", "--accelerator", "cpu", "--out", str(out)]
    assert rsmae_main(argv) == 0
    return json.loads((out / "metrics.json").read_text())


@pytest.fixture(scope="module")
def probe(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("probe")
    backbone = _backbone(root / "backbone.safetensors")
    metrics = _evaluate(backbone, "linear", root / "eval")
    return {"backbone": backbone, "metrics": metrics, "out": root / "eval",
            "city": city_stack(root / "city" / "pisa.tif", "pisa", 1, (300, 200, 90, 120))}


def _evaluation_probabilities(backbone: Path, lr: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The evaluation's test probabilities, recomputed from its pieces (deterministic probe), and labels."""
    encoder, _ = load_for_task(backbone, task_bands("s2-l1c", "eurosat"), "s2-l1c", 64)
    data = load_classification(encoder, EUROSAT / "train", EUROSAT / "test", fraction="5-shot", seed=0)
    head = fit_head(extract_features(encoder, data.train[0]), data.train[1], head="linear", lr=lr,
                    num_classes=len(data.classes))
    with torch.no_grad():
        return torch.softmax(head(extract_features(encoder, data.test[0])), dim=1), data.test[1]


def test_the_probe_is_saved_as_a_classifier_with_the_probe_folded_into_its_head(probe: dict) -> None:
    out, metrics = probe["out"], probe["metrics"]
    saved = {p.name for p in out.iterdir()}
    assert {"backbone.safetensors", "head.safetensors", "classifier.safetensors"} <= saved
    assert metrics["classifier_path"] == str(out / "classifier.safetensors") and metrics["adaptation"] == ""
    task, classes = load_classifier(out / "classifier.safetensors")
    assert classes == sorted(p.name for p in (EUROSAT / "train").iterdir() if p.is_dir())
    assert task.head.pool == "cls" and task.encoder.rsmae_meta.img_size == 64
    assert "linear probe" in task.encoder.rsmae_meta.source and task.encoder.rsmae_meta.mean == [1000.0] * 13
    with pytest.raises(ValueError, match="not a linear probe"):
        fold_linear_probe(torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.GELU()))


def test_predict_classify_runs_the_probe_on_the_input_grid(tmp_path: Path, probe: dict) -> None:
    model = probe["out"] / "classifier.safetensors"
    assert rsmae_main(["predict", "classify", "--model", str(model), str(probe["city"]), "--out",
                       str(tmp_path / "out"), "--batch", "4"]) == 0
    (folder,) = (tmp_path / "out").iterdir()
    with rasterio.open(probe["city"]) as src, rasterio.open(folder / "class_index.tif") as index, \
            rasterio.open(folder / "class_prob.tif") as prob:
        for raster in (index, prob):
            assert raster.crs == src.crs and raster.transform == src.transform and raster.shape == src.shape
        assert prob.count == 10
    probs, classes = read(folder / "class_prob.tif"), read(folder / "class_index.tif")[0]
    assert np.isfinite(probs).all() and np.allclose(probs.sum(axis=0), 1.0, atol=1e-5)
    assert (probs.argmax(axis=0) == classes).all()


def test_predict_gives_the_evaluations_prediction_on_the_same_window(tmp_path: Path, probe: dict) -> None:
    expected, labels = _evaluation_probabilities(probe["backbone"], probe["metrics"]["lr"])
    accuracy = float((expected.argmax(1) == labels).float().mean())
    assert accuracy == pytest.approx(probe["metrics"]["accuracy"])  # these are the evaluation's predictions
    paths = SceneFolder(EUROSAT / "test", sensor="s2-l1c", layout="eurosat").paths
    scenes = [str(paths[i]) for i in WINDOWS]
    folders = predict_classify(scenes, probe["out"] / "classifier.safetensors", tmp_path / "out",
                               PredictConfig(band_order="eurosat"))
    for i, folder in zip(WINDOWS, folders, strict=True):
        probs = read(folder / "class_prob.tif")
        assert probs.shape == (10, 64, 64) and np.ptp(probs, axis=(1, 2)).max() < 1e-6  # one window
        assert np.allclose(probs[:, 0, 0], expected[i].numpy(), atol=1e-4), (i, probs[:, 0, 0], expected[i])


def test_knn_saves_no_model_and_predict_names_the_protocol_to_use(
        tmp_path: Path, probe: dict, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "knn"
    _evaluate(probe["backbone"], "knn", out)
    assert not (out / "classifier.safetensors").exists()
    capsys.readouterr()
    model = out / "classifier.safetensors"
    assert rsmae_main(["predict", "classify", "--model", str(model), str(probe["city"]), "--out",
                       str(tmp_path / "pred")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {model}: "), err
    assert "knn protocol saves no model" in err[0]
    assert "--protocol linear" in err[0] and not (tmp_path / "pred").exists()
