"""``rsmae predict`` as a command: bad input ends as ``error: <file>: ...`` (exit 2, nothing written);
a killed run leaves no output under the real name and its rerun finishes."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import rasterio.shutil
from rasterio.transform import Affine

from rsmae.cli import main as rsmae_main
from tests.conftest import OSCD, ROOT
from tests.predict.predict_helpers import city_stack, read_city, tiny_backbone, tiny_change_model, write_stack

WINDOW = (300, 200, 64, 64)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("inputs")
    pixels, transform, crs = read_city("pisa", 2, WINDOW)
    d1 = city_stack(root / "d1" / "d1.tif", "pisa", 1, WINDOW)
    broken = root / "broken" / "scene.tif"  # a download cut short: its header (at the end) is missing
    broken.parent.mkdir()
    broken.write_bytes(d1.read_bytes()[:60000])
    damaged = root / "damaged" / "scene.tif"  # header first (a COG), pixels cut short: fails in the scan
    damaged.parent.mkdir()
    rasterio.shutil.copy(d1, damaged.with_suffix(".full.tif"), driver="COG", BLOCKSIZE=16)
    damaged.write_bytes(damaged.with_suffix(".full.tif").read_bytes()[:70000])
    damaged.with_suffix(".full.tif").unlink()
    return {
        "backbone": tiny_backbone(root / "backbone.safetensors"),
        "change": tiny_change_model(root / "change.safetensors"),
        "d1": d1,
        "d2": write_stack(root / "d2" / "d2.tif", pixels, transform, crs),
        "far": write_stack(root / "far" / "far.tif", pixels, Affine.translation(5.0, 0) * transform, crs),
        "twelve": write_stack(root / "twelve" / "twelve.tif", pixels[[i for i in range(13) if i != 10]],
                              transform, crs, bands=[b for i, b in enumerate(_bands()) if i != 10]),
        "broken": broken,
        "damaged": damaged,
    }


def _bands() -> list[str]:
    from tests.predict.predict_helpers import S2

    return S2


@pytest.mark.parametrize(("case", "culprit", "message"), [
    ("no overlap", "far", "does not overlap date 1"),
    ("missing band", "twelve", "has no band(s) B10"),
    ("backbone as change model", "backbone", "a backbone, not a change model"),
    ("change model as backbone", "change", "a change model, not a backbone"),
    ("unreadable file", "broken", "not a readable raster"),
    ("file damaged inside", "damaged", "read failed, the file is damaged"),
])
def test_bad_input_is_one_error_line_naming_the_file_and_writes_nothing(
        tmp_path: Path, files: dict[str, Path], capsys: pytest.CaptureFixture[str], case: str, culprit: str,
        message: str) -> None:
    out = tmp_path / "out"
    d1, d2, model = files["d1"], files["d2"], files["change"]
    if case == "change model as backbone":
        argv = ["predict", "embed", "--backbone", str(files["change"]), str(d1), "--out", str(out)]
    elif culprit in ("broken", "damaged"):
        argv = ["predict", "embed", "--backbone", str(files["backbone"]), str(files[culprit]),
                "--out", str(out)]
    else:
        model = files["backbone"] if culprit == "backbone" else model
        d2 = files[culprit] if culprit in ("far", "twelve") else d2
        argv = ["predict", "change", "--model", str(model), str(d1), str(d2), "--out", str(out)]
    assert rsmae_main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {files[culprit]}") and message in err[0], err
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize("extra", [["--devices", "2"], ["--num-nodes", "2"]])
def test_change_on_many_devices_is_refused_with_the_reason(tmp_path: Path, files: dict[str, Path],
                                                          capsys: pytest.CaptureFixture[str],
                                                          extra: list[str]) -> None:
    argv = ["predict", "change", "--model", str(files["change"]), str(files["d1"]), str(files["d2"]),
            "--out", str(tmp_path / "out"), "--accelerator", "cpu", *extra]
    assert rsmae_main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "runs one pair on one device" in err[0], err
    assert not (tmp_path / "out").exists()


def test_devices_with_workers_is_one_error_line(tmp_path: Path, files: dict[str, Path],
                                                capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["predict", "embed", "--backbone", str(files["backbone"]), str(files["d1"]), "--out",
            str(tmp_path / "out"), "--devices", "2", "--workers", "2"]
    assert rsmae_main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "on Lightning's devices or on local processes/Dask" in err[0], err
    assert not (tmp_path / "out").exists()


def _tmp_folders(out: Path) -> list[Path]:
    return [p for p in out.iterdir() if p.name.startswith(".")] if out.is_dir() else []


@pytest.mark.slow
def test_a_killed_run_leaves_no_output_and_the_rerun_finishes(tmp_path: Path, files: dict[str, Path]) -> None:
    out = tmp_path / "out"
    city = str(OSCD / "pisa" / "imgs_1")
    argv = [sys.executable, "-m", "rsmae", "predict", "embed", "--backbone", str(files["backbone"]), city,
            "--out", str(out), "--batch", "4"]
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not _tmp_folders(out) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)  # into the scan: windows written to the part file
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "pisa__imgs_1").exists() and _tmp_folders(out)
    assert subprocess.run(argv, cwd=ROOT, capture_output=True).returncode == 0
    assert sorted(p.name for p in (out / "pisa__imgs_1").iterdir()) == ["embedding.tif", "info.json",
                                                                        "preview.png"]
    assert not _tmp_folders(out)  # the killed run's temporary folder was removed
