"""Evaluation follows the Lightning accelerator: ``--accelerator auto|cpu|gpu`` reaches the Trainer of
change detection and fine-tuning, and the model and data go to its device (run here on the CPU)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch

import rsmae.evaluation.change as change
import rsmae.evaluation.classification as classification
from rsmae.bands import get_sensor
from rsmae.cli import evaluate as evaluate_cli
from rsmae.cli import evaluate_change as evaluate_change_cli
from rsmae.errors import ModelConfigError
from rsmae.evaluation.data import accelerator_device
from rsmae.models import BackboneMeta, create_encoder, save_backbone
from tests.conftest import DATA, EUROSAT

LEVIR = DATA / "levircd_samples"
CHANGE = {"test_root": LEVIR, "dataset": "levircd", "test_cities": ["test_7_0256_0512"], "crop_size": 32,
          "overlap": 8, "steps": 2, "batch_size": 2}
no_gpu = pytest.mark.skipif(torch.cuda.is_available() or torch.backends.mps.is_available(),
                            reason="a GPU is visible here")


class Stop(Exception):
    """Raised by the spy Trainer once it has seen its arguments."""


@pytest.fixture
def trainer_args(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Every evaluation Trainer records its keyword arguments here and stops the run; the device is
    resolved as if a CUDA GPU were present, so a hard-coded "cpu" would show."""
    seen: dict[str, Any] = {}

    def spy(**kwargs: Any) -> L.Trainer:
        seen.update(kwargs)
        raise Stop

    monkeypatch.setattr(change.L, "Trainer", spy)
    for module in (change, classification):
        monkeypatch.setattr(module, "accelerator_device", lambda name: torch.device("cuda", 0))
    return seen


def _backbone(path: Path) -> Path:
    bands = list(get_sensor("s2-l1c").names)
    torch.manual_seed(0)
    enc = create_encoder("vit_test", in_chans=13, img_size=64, patch_size=16, depth=2)
    meta = BackboneMeta(preset="vit_test", img_size=64, patch_size=16, in_chans=13, bands=bands,
                        sensor="s2-l1c", mean=[1000.0] * 13, std=[500.0] * 13, gsd=10.0,
                        encoder_kwargs={"depth": 2})
    return save_backbone(enc, path, meta)


def test_accelerator_names_resolve_as_lightning_does() -> None:
    assert accelerator_device("cpu") == torch.device("cpu")
    assert accelerator_device("auto").type == ("cuda" if torch.cuda.is_available() else
                                                "mps" if torch.backends.mps.is_available() else "cpu")
    with pytest.raises(ModelConfigError, match="--accelerator tpux: .*use --accelerator auto"):
        accelerator_device("tpux")


@no_gpu
def test_gpu_without_a_gpu_is_refused_with_the_fix() -> None:
    with pytest.raises(ModelConfigError, match="--accelerator gpu: .*or --accelerator cpu"):
        accelerator_device("gpu")


def test_change_training_gets_the_configured_accelerator(trainer_args: dict[str, Any]) -> None:
    with pytest.raises(Stop):
        change.evaluate_change(None, model="fc-siam-diff", accelerator="gpu", **CHANGE)
    assert trainer_args["accelerator"] == "cuda" and trainer_args["devices"] == 1
    assert trainer_args["precision"] in ("32-true", "bf16-mixed")  # chosen for that device


def test_finetuning_gets_the_configured_accelerator(trainer_args: dict[str, Any], tmp_path: Path) -> None:
    with pytest.raises(Stop):
        classification.evaluate_classification(
            _backbone(tmp_path / "b.safetensors"), "last1", EUROSAT / "train", EUROSAT / "test",
            accelerator="gpu", epochs=1, precision="32-true")
    assert trainer_args["accelerator"] == "cuda" and trainer_args["devices"] == 1


@pytest.mark.slow
def test_change_runs_on_the_cpu_when_asked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--task", "levircd", "--model", "fc-siam-diff", "--test-root", str(LEVIR), "--test-cities",
            "test_7_0256_0512", "--accelerator", "cpu", "--set", "crop_size=32", "--set", "overlap=8",
            "--set", "steps=2", "--set", "batch_size=2"]
    assert evaluate_change_cli.main(argv) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["device"] == "cpu" and 0.0 <= result["f1"] <= 1.0


def test_classification_runs_on_the_cpu_when_asked(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    backbone = str(_backbone(tmp_path / "b.safetensors"))
    argv = ["--backbone", backbone, "--protocol", "knn", "--root", str(EUROSAT), "--cache-dir", ""]
    assert evaluate_cli.main([*argv, "--accelerator", "cpu"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["device"] == "cpu" and 0.1 <= result["accuracy"] <= 1.0
    with pytest.raises(SystemExit):
        evaluate_cli.main([*argv, "--accelerator", "tpu"])  # not a choice
    assert "invalid choice: 'tpu' (choose from 'auto', 'cpu', 'gpu')" in capsys.readouterr().err


@no_gpu
def test_evaluate_on_a_gpu_without_one_is_one_error_line(tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    backbone = str(_backbone(tmp_path / "b.safetensors"))
    argv = ["--backbone", backbone, "--protocol", "knn", "--root", str(EUROSAT), "--accelerator", "gpu"]
    assert evaluate_cli.main(argv) == 2
    assert evaluate_change_cli.main(["--test-root", str(LEVIR), "--task", "levircd",
                                     "--accelerator", "gpu"]) == 2
    err = capsys.readouterr().err
    assert err.count("error: --accelerator gpu: ") == 2 and "Traceback" not in err
