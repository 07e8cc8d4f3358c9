"""``pretrain.py fit --ckpt_path FILE``: a config of another architecture is refused, the same one resumes.

LightningCLI loads a checkpoint file's hyper-parameters into the parsed config, so a changed
``--model.patch_size`` would otherwise be dropped without a word and the checkpoint's model resumed.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from tests.conftest import load_script
from tests.tasks.pretrain_helpers import shipped_config

pytestmark = pytest.mark.slow  # trains the tiny ViT for 2 steps

pretrain = load_script("pipelines/pretrain.py")


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, eurosat_train_store: Path) -> Path:
    """A 2-step run of the tiny ViT (8-px patches) on EuroSAT tiles; its ``config.yaml`` sits beside it."""
    out = tmp_path_factory.mktemp("resume")
    cfg = shipped_config("mae_tiny")
    cfg["trainer"].update(max_steps=2, enable_progress_bar=False, enable_model_summary=False,
                          default_root_dir=str(out))
    cfg["trainer"]["callbacks"] = [c for c in cfg["trainer"]["callbacks"] if "Probe" not in c["class_path"]]
    cfg["trainer"]["callbacks"][0]["init_args"].update(every_n_train_steps=1, save_top_k=-1)
    cfg["model"].update(preset="vit_test", patch_size=8, warmup_steps=1)
    cfg["data"].update(stores=[str(eurosat_train_store)], batch_size=8, num_workers=0)
    (out / "config.yaml").write_text(yaml.safe_dump(cfg))
    assert pretrain.main(["fit", "--config", str(out / "config.yaml")]) == 0
    return out


def _files(folder: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in folder.rglob("*")}


@pytest.mark.parametrize(("option", "value", "setting"), [
    ("--model.patch_size", "16", "patch_size=8 (config: 16)"),
    ("--model.preset", "vit_tiny", "preset='vit_test' (config: 'vit_tiny')"),
    ("--model.decoder_depth", "2", "decoder_depth=None (config: 2)"),
    ("--model.patch_embed", "spectral", "patch_embed='conv' (config: 'spectral')"),
    ("--model.method", "rcmae", "method='mae' (config: 'rcmae')")])
@pytest.mark.parametrize("subcommand", ["fit", "validate"])
def test_another_architecture_is_refused(run: Path, capsys: pytest.CaptureFixture[str], subcommand: str,
                                         option: str, value: str, setting: str) -> None:
    ckpt = run / "checkpoints" / "step0000002.ckpt"
    before = _files(run)
    capsys.readouterr()
    argv = [subcommand, "--config", str(run / "config.yaml"), "--ckpt_path", str(ckpt), option, value]
    assert pretrain.main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    line = next(line for line in err.splitlines() if line.startswith("error: "))
    assert line.startswith(f"error: {ckpt}: made by another model: {setting}"), line
    assert "config.yaml" in line and "without --ckpt_path" in line
    assert _files(run) == before  # nothing written: no log folder, no checkpoint


def test_the_same_config_resumes_from_the_file(run: Path) -> None:
    ckpt = run / "checkpoints" / "step0000002.ckpt"
    argv = ["fit", "--config", str(run / "config.yaml"), "--ckpt_path", str(ckpt), "--trainer.max_steps", "3"]
    assert pretrain.main(argv) == 0
    last = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["global_step"] == 3 and last["hyper_parameters"]["patch_size"] == 8


def test_last_of_another_architecture_is_refused(run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--ckpt_path last`` is resolved by Lightning: checked when the file is read, before the weights."""
    checkpoints = _files(run / "checkpoints")
    capsys.readouterr()
    argv = ["fit", "--config", str(run / "config.yaml"), "--ckpt_path", "last", "--model.decoder_depth", "2"]
    assert pretrain.main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "size mismatch" not in err
    line = next(line for line in err.splitlines() if line.startswith("error: "))
    assert "last.ckpt: made by another model: decoder_depth=None (config: 2)" in line, line
    assert _files(run / "checkpoints") == checkpoints
