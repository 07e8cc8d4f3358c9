"""ONNX export of backbones and change models: parity with PyTorch (onnxruntime), predict --engine onnx."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio

pytest.importorskip("onnxruntime")

from rsmae.cli import main as rsmae_main  # noqa: E402
from rsmae.predict import PredictConfig, predict_change, predict_embed  # noqa: E402
from rsmae.predict.models import load_change_predictor, load_embed_predictor  # noqa: E402
from tests.predict.predict_helpers import city_stack, read_city, tiny_backbone, tiny_change_model  # noqa: E402

WINDOW = (300, 200, 64, 96)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {"embed": tiny_backbone(root / "backbone.safetensors"),
            "change": tiny_change_model(root / "change.safetensors")}


def _real_windows(n: int, pair: bool) -> np.ndarray:
    """``n`` real 32 px windows of pisa (pairs of both dates when ``pair``), float32."""
    dates = [read_city("pisa", d, WINDOW)[0].astype(np.float32) for d in ((1, 2) if pair else (1,))]
    crops = [np.stack([x[:, r:r + 32, c:c + 32] for x in dates]) for r, c in [(0, 0), (16, 40), (32, 64)][:n]]
    return np.stack(crops)


@pytest.mark.parametrize("task", ["embed", "change"])
def test_the_onnx_export_matches_pytorch_for_any_batch_size(tmp_path: Path, models: dict[str, Path],
                                                            task: str, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / f"{task}.onnx"
    assert rsmae_main(["export", str(models[task]), "--format", "onnx", "--out", str(out)]) == 0
    assert f"ONNX {task} model" in capsys.readouterr().out
    load = load_embed_predictor if task == "embed" else load_change_predictor
    torch_model, onnx_model = load(models[task]).use("torch"), load(out)
    assert onnx_model.bands == torch_model.bands and onnx_model.window == 32
    for n in (1, 3):  # the batch axis is dynamic
        batch = _real_windows(n, pair=task == "change")
        batch[0, :, :, 3:7, 5:9] = np.nan  # nodata pixels are filled alike
        expected, got = torch_model(batch), onnx_model(batch)
        assert got.shape == expected.shape and np.abs(got - expected).max() <= 1e-4


def test_predict_with_engine_onnx_equals_pytorch(tmp_path: Path, models: dict[str, Path]) -> None:
    d1 = city_stack(tmp_path / "d1" / "d1.tif", "pisa", 1, WINDOW)
    d2 = city_stack(tmp_path / "d2" / "d2.tif", "pisa", 2, WINDOW)
    for task in ("embed", "change"):
        outputs = []
        for engine in ("torch", "onnx"):
            cfg = PredictConfig(engine=engine)
            if task == "embed":
                folder = predict_embed([str(d1)], models["embed"], tmp_path / engine, cfg)[0]
                name = "embedding.tif"
            else:
                folder = predict_change(str(d1), str(d2), models["change"], tmp_path / f"cd-{engine}", cfg)
                name = "change_prob.tif"
            with rasterio.open(folder / name) as ds:
                outputs.append(ds.read())
        assert np.abs(outputs[0] - outputs[1]).max() <= 1e-4
        if task == "embed":
            features = outputs[0]
    exported = tmp_path / "b.onnx"
    assert rsmae_main(["export", str(models["embed"]), "--format", "onnx", "--out", str(exported)]) == 0
    assert rsmae_main(["predict", "embed", "--backbone", str(exported), str(d1), "--out",
                       str(tmp_path / "file")]) == 0
    with rasterio.open(tmp_path / "file" / "d1__d1" / "embedding.tif") as ds:
        assert np.abs(ds.read() - features).max() <= 1e-4
