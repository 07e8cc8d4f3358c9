"""One error exit for every command: ``error: <message>`` on stderr and exit code 2 for an rsmae error,
an ``OSError`` (a full disk), a worker process that died and a ``ValueError``; ``error: interrupted``
and 130 on Ctrl+C; no traceback unless ``-v``. Each class is raised through ``rsmae ...``
(``rsmae.cli.main``), for real where that is cheap, else from the library call the command makes."""

from __future__ import annotations

import errno
import signal
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import lightning as L
import pytest
import yaml

from rsmae.cli import main
from rsmae.tiling import TileConfig, tile_scenes
from tests.conftest import EUROSAT

RIVER = EUROSAT / "train" / "River"
TILE = ["tile", str(RIVER / "River_1237.tif"), "--band-order", "eurosat", "--tile-size", "64"]


def _error(capsys: pytest.CaptureFixture[str], argv: list[str], code: int = 2) -> str:
    """Run ``rsmae argv``; expect ``code`` and one ``error:`` line, no traceback; return that line."""
    assert main(argv) == code
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, err
    return lines[0]


def _raising(exc: BaseException):
    def fail(*args: object, **kwargs: object) -> None:
        raise exc

    return fail


def test_rsmae_error(capsys, tmp_path):
    line = _error(capsys, ["inspect", str(tmp_path / "none.zarr")])
    assert "none.zarr" in line and "tile" in line


def test_value_error(capsys, tmp_path):
    line = _error(capsys, ["evaluate", "--task", "oscd", "--test-root", str(tmp_path), "--set", "steps"])
    assert line == "error: setting 'steps' is not KEY=VALUE (e.g. steps=300)"


def test_full_disk(capsys, monkeypatch, tmp_path):
    full = OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "s.zarr" / "shards" / "c0"))
    monkeypatch.setattr("rsmae.cli.tile.tile_scenes", _raising(full))
    line = _error(capsys, [*TILE, "--out", str(tmp_path / "s.zarr")])
    assert line == f"error: {tmp_path}/s.zarr/shards/c0: No space left on device"


def test_worker_process_died(capsys, monkeypatch, tmp_path):
    died = BrokenProcessPool("A process in the process pool was terminated abruptly")
    monkeypatch.setattr("rsmae.cli.tile.tile_scenes", _raising(died))
    line = _error(capsys, [*TILE, "--workers", "2", "--out", str(tmp_path / "s.zarr")])
    assert "worker process died" in line and "terminated abruptly" in line and "--workers" in line


def test_interrupted(capsys, monkeypatch, tmp_path):
    monkeypatch.setattr("rsmae.cli.tile.tile_scenes", _raising(KeyboardInterrupt()))
    assert _error(capsys, [*TILE, "--out", str(tmp_path / "s.zarr")], code=130) == "error: interrupted"


def test_verbose_shows_the_traceback(capsys, monkeypatch, tmp_path):
    monkeypatch.setattr("rsmae.cli.tile.tile_scenes", _raising(ValueError("bad value")))
    assert main(["-v", *TILE, "--out", str(tmp_path / "s.zarr")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.rstrip().endswith("error: bad value")
    assert main([*TILE, "--out", str(tmp_path / "s.zarr"), "--verbose"]) == 2  # after the command too
    assert "Traceback" in capsys.readouterr().err


def test_other_exceptions_are_not_hidden(monkeypatch, tmp_path):
    """A bug (not an expected failure) keeps its traceback."""
    monkeypatch.setattr("rsmae.cli.tile.tile_scenes", _raising(RuntimeError("a bug")))
    with pytest.raises(RuntimeError, match="a bug"):
        main([*TILE, "--out", str(tmp_path / "s.zarr")])


# ---------------------------------------------------------------- fit: through LightningCLI and the Trainer


class InterruptAt(L.Callback):
    """Ctrl+C at the start of a training batch (Lightning cleans up, then exits 1)."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        raise KeyboardInterrupt


class FailAt(L.Callback):
    """A full disk while training."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", "runs/x/checkpoints/last.ckpt")


@pytest.fixture(scope="module")
def river_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("stores") / "river.zarr"
    tile_scenes([str(RIVER)], out, TileConfig(tile_size=64, band_order="eurosat"))
    return out


def _fit(store: Path, tmp: Path, callback: str) -> list[str]:
    override = tmp / "override.yaml"
    callbacks = [{"class_path": f"{__name__}.{callback}"}]  # replaces the shipped list (no probe)
    override.write_text(yaml.safe_dump({"trainer": {"callbacks": callbacks}}))
    return ["fit", "--config", "mae_tiny", "--config", str(override), "--data.stores", f"[{store}]",
            "--data.num_workers", "0", "--data.batch_size", "4", "--model.preset", "vit_test",
            "--trainer.max_steps", "2", "--trainer.enable_progress_bar", "false",
            "--trainer.default_root_dir", str(tmp)]


def test_fit_interrupted(capsys, river_store, tmp_path):
    sigint = signal.getsignal(signal.SIGINT)  # Lightning ignores SIGINT while it cleans up
    try:
        assert _error(capsys, _fit(river_store, tmp_path, "InterruptAt"), code=130) == "error: interrupted"
    finally:
        signal.signal(signal.SIGINT, sigint)


def test_fit_full_disk(capsys, river_store, tmp_path):
    line = _error(capsys, _fit(river_store, tmp_path, "FailAt"))
    assert line == "error: runs/x/checkpoints/last.ckpt: No space left on device"
