"""Many scenes through Lightning's predict loop on CPU devices (the GPU path, proven with Gloo): the outputs
of the run in this process, each scene written once, a rerun that skips the finished scenes; ``--precision``
passed through; ``change`` refuses devices."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch

from rsmae.cli import main as rsmae_main
from rsmae.cli.predict import _config, build_parser
from rsmae.predict import PredictConfig, predict_classify, predict_embed
from rsmae.predict.models import load_embed_predictor
from tests.conftest import ROOT
from tests.predict.predict_helpers import assert_same_outputs, city_stack, read, tiny_backbone, two_cities
from tests.predict.test_classify import tiny_classifier

FP32 = PredictConfig(precision="32", threads=1)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("lightning")
    return {
        "classifier": tiny_classifier(root / "classifier.safetensors"),
        "backbone": tiny_backbone(root / "backbone.safetensors"),
        **two_cities(root),
        "window": city_stack(root / "window" / "window.tif", "pisa", 1, (300, 200, 32, 32)),
    }


@pytest.fixture(scope="module")
def expected(files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Path]]:
    """The outputs of the plain run in this process (fp32)."""
    out = tmp_path_factory.mktemp("plain")
    scenes = [str(files["pisa"]), str(files["beihai"])]
    return {"classify": predict_classify(scenes, files["classifier"], out / "classify", FP32),
            "embed": predict_embed(scenes, files["backbone"], out / "embed", FP32)}


def _stamps(out: Path) -> dict[str, int]:
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in out.rglob("*")}


@pytest.mark.slow
def test_two_cpu_processes_write_each_scene_once_as_this_process_does_and_a_rerun_skips_both(
        tmp_path: Path, files: dict[str, Path], expected: dict[str, list[Path]]) -> None:
    out = tmp_path / "ddp"
    argv = [sys.executable, "-m", "rsmae", "predict", "-v", "classify", "--model", str(files["classifier"]),
            str(files["pisa"]), str(files["beihai"]), "--out", str(out), "--accelerator", "cpu",
            "--devices", "2", "--precision", "32", "--threads", "1"]
    start = time.perf_counter()
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=600)
    seconds = time.perf_counter() - start
    assert done.returncode == 0, done.stderr[-3000:]
    folders = [Path(line) for line in done.stdout.split()]  # rank 0 lists them, rank 1 lists none
    assert_same_outputs(folders, expected["classify"], "classify")
    written = re.findall(r"(scenes__\w+): done on cpu", done.stderr)
    assert sorted(written) == ["scenes__beihai", "scenes__pisa"], done.stderr[-3000:]  # once each
    assert "Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2" in done.stderr  # two Gloo ranks
    assert sorted(p.name for p in out.iterdir()) == ["scenes__beihai", "scenes__pisa"]  # no temporaries
    assert json.loads((folders[0] / "info.json").read_text())["config"]["devices"] == 2
    kept = _stamps(out)
    again = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert [Path(line) for line in again.stdout.split()] == folders
    assert len(re.findall(r"done by an earlier run, skipped", again.stderr)) == 2
    assert _stamps(out) == kept
    print(f"2 Gloo processes, 2 scenes: {seconds:.1f} s")  # shown with pytest -s


@pytest.mark.slow
def test_fewer_scenes_than_processes_leave_a_rank_idle_and_all_return(
        tmp_path: Path, files: dict[str, Path], expected: dict[str, list[Path]]) -> None:
    argv = [sys.executable, "-m", "rsmae", "predict", "embed", "--backbone", str(files["backbone"]),
            str(files["pisa"]), "--out", str(tmp_path), "--accelerator", "cpu", "--devices", "2",
            "--precision", "32", "--threads", "1"]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == [str(tmp_path / "scenes__pisa")] and not done.stderr.strip()
    got = read(tmp_path / "scenes__pisa" / "embedding.tif")
    want = read(expected["embed"][1] / "embedding.tif")
    assert np.allclose(got, want, atol=1e-5, equal_nan=True)


def test_one_device_in_this_process_equals_the_plain_run(tmp_path: Path, files: dict[str, Path],
                                                         expected: dict[str, list[Path]]) -> None:
    scenes = [str(files["pisa"]), str(files["beihai"])]
    config = PredictConfig(precision="32", threads=1, accelerator="cpu", devices=1)
    embedded = predict_embed(scenes, files["backbone"], tmp_path / "embed", config)
    assert_same_outputs(embedded, expected["embed"], "embed")
    folders = predict_classify(scenes, files["classifier"], tmp_path / "classify", config)
    assert_same_outputs(folders, expected["classify"], "classify")
    kept = _stamps(tmp_path / "classify")
    assert predict_classify(scenes, files["classifier"], tmp_path / "classify", config) == folders
    assert _stamps(tmp_path / "classify") == kept  # both skipped


def test_devices_with_workers_are_refused_before_anything_is_written(tmp_path: Path,
                                                                     files: dict[str, Path]) -> None:
    with pytest.raises(ValueError, match="run the scenes on Lightning's devices or on local processes/Dask"):
        predict_embed([str(files["pisa"])], files["backbone"], tmp_path / "o", PredictConfig(devices=2),
                      workers=2)
    assert not (tmp_path / "o").exists()


def test_precision_is_parsed_and_passed_through() -> None:
    parser = build_parser()
    base = ["embed", "--backbone", "B", "S", "--out", "O"]
    assert _config(parser.parse_args(base)).precision == "32"  # the module's outputs unless asked
    assert _config(parser.parse_args([*base, "--precision", "auto"])).precision == "auto"
    change = _config(parser.parse_args(["change", "--model", "M", "D1", "D2", "--out", "O", "--precision",
                                        "bf16", "--accelerator", "cpu"]))
    assert (change.precision, change.accelerator, change.devices) == ("bf16", "cpu", None)
    with pytest.raises(SystemExit):
        parser.parse_args([*base, "--precision", "16"])
    with pytest.raises(SystemExit):
        parser.parse_args([*base, "--devices", "0"])


@pytest.mark.parametrize(("precision", "atol"), [("32", 1e-5), ("bf16", 0.1)])
def test_precision_reaches_the_model(tmp_path: Path, files: dict[str, Path],
                                     capsys: pytest.CaptureFixture[str], precision: str, atol: float) -> None:
    """One pooled window: the COG holds the module's fp32 output on the window's pixels (bf16: near it)."""
    argv = ["predict", "embed", "--backbone", str(files["backbone"]), str(files["window"]), "--pool",
            "--out", str(tmp_path), "--precision", precision, "--threads", "1"]
    assert rsmae_main(argv) == 0
    (folder,) = [Path(line) for line in capsys.readouterr().out.split()]
    with rasterio.open(files["window"]) as ds:
        pixels = torch.from_numpy(ds.read().astype(np.float32))[None]
    module = load_embed_predictor(files["backbone"], pool=True).module.eval()
    with torch.inference_mode():
        want = module(pixels).float().numpy().reshape(-1)
    got = read(folder / "embedding.tif").reshape(-1)
    assert np.allclose(got, want, atol=atol)
    assert (np.abs(got - want).max() > 1e-6) == (precision == "bf16")  # bf16 did run in bf16
    assert json.loads((folder / "info.json").read_text())["config"]["precision"] == precision


def test_import_rsmae_predict_leaves_the_lightning_loop_unimported() -> None:
    code = "import sys, rsmae.predict; assert 'rsmae.predict.lightning_loop' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0
