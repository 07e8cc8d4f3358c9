"""Predictor.use: precision and device (bf16 autocast where native, fp32 outputs, onnxruntime fp32)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from rsmae.predict.models import load_change_predictor, load_embed_predictor, resolve_precision
from tests.predict.predict_helpers import tiny_backbone, tiny_change_model

NATIVE = {"fpu", "avx512f", "avx512_bf16"}
EMULATED = {"fpu", "avx2", "avx512f"}


def test_auto_precision_is_bf16_only_where_the_cpu_computes_it() -> None:
    assert resolve_precision("auto", "cpu", flags=NATIVE) == "bf16"
    assert resolve_precision("auto", "cpu", flags={"amx_bf16"}) == "bf16"
    assert resolve_precision("auto", "cpu", flags=EMULATED) == "32"
    assert resolve_precision("auto", "onnx", flags=NATIVE) == "32"
    assert resolve_precision("auto", "meta", flags=NATIVE) == "32"  # neither CPU nor CUDA: fp32
    assert resolve_precision("bf16", "cpu", flags=EMULATED) == "bf16"  # forced
    assert resolve_precision("32-true", "cpu", flags=NATIVE) == "32"
    assert resolve_precision("bf16-mixed") == "bf16"
    with pytest.raises(ValueError, match="precision 'fp8'"):
        resolve_precision("fp8")


def test_bf16_outputs_are_float32_and_close_to_fp32(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    batch = rng.uniform(500, 3000, (3, 1, 13, 32, 32)).astype(np.float32)
    pred = load_embed_predictor(tiny_backbone(tmp_path / "b.safetensors"))
    full = pred.use("torch", 1, precision="32")(batch)
    half = pred.use("torch", 1, precision="bf16", device="cpu")(batch)
    assert half.dtype == np.float32 and half.shape == full.shape
    scale = np.abs(full).max()
    err = np.abs(half - full).max()
    assert 0 < err < 0.1 * scale  # bf16 changes the output (autocast ran) but only by rounding


def test_change_in_bf16_keeps_probabilities(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    pair = rng.uniform(500, 3000, (2, 2, 13, 32, 32)).astype(np.float32)
    pred = load_change_predictor(tiny_change_model(tmp_path / "c.safetensors"))
    full = pred.use("torch", 1, precision="32")(pair)
    half = pred.use("torch", 1, precision="bf16")(pair)
    assert half.dtype == np.float32 and ((half >= 0) & (half <= 1)).all()
    np.testing.assert_allclose(half, full, atol=0.05)


def test_onnx_runs_fp32_only(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    pred = load_embed_predictor(tiny_backbone(tmp_path / "b.safetensors"))
    with pytest.raises(ValueError, match="onnxruntime runs fp32"):
        pred.use("onnx", precision="bf16")
    assert pred.use("onnx", precision="auto").run is not None


def test_device_moves_the_module_once(tmp_path: Path) -> None:
    pred = load_embed_predictor(tiny_backbone(tmp_path / "b.safetensors"))
    pred.use("torch", 1, device=torch.device("cpu"))
    assert next(pred.module.parameters()).device.type == "cpu"
    with pytest.raises(ValueError, match="engine 'tpu'"):
        pred.use("tpu")


def test_convolutions_run_channels_last_with_the_same_outputs(tmp_path: Path) -> None:
    import copy

    pair = np.random.default_rng(2).uniform(500, 3000, (2, 2, 13, 32, 32)).astype(np.float32)
    pred = load_change_predictor(tiny_change_model(tmp_path / "c.safetensors"))
    plain = copy.deepcopy(pred.module).eval()
    out = pred.use("torch", 1, precision="32")(pair)
    convs = [m for m in pred.module.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(m.weight.is_contiguous(memory_format=torch.channels_last) for m in convs)
    with torch.inference_mode():
        expected = plain(torch.from_numpy(pair)).numpy()
    np.testing.assert_allclose(out, expected, atol=1e-5)
