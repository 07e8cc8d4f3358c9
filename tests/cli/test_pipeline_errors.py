"""Every pipeline ends bad input with ``error: ...`` (naming the file and the fix) and exit code 2.

The pipelines' ``main(argv)`` run in-process; checkpoints are tiny ``PretrainTask`` ones written here.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import lightning
import pytest
import torch

from rsmae.bands import get_sensor
from rsmae.tasks import PretrainTask
from tests.conftest import EUROSAT, ROOT, load_script

PIPELINES = ROOT / "pipelines"
S2 = list(get_sensor("s2-l1c").names)


def _main(name: str) -> Callable[[list[str]], int]:
    """The ``main`` of ``pipelines/<name>.py``."""
    return load_script(f"pipelines/{name}.py").main


def _fails(capsys: pytest.CaptureFixture, name: str, argv: list[str], *needles: str) -> str:
    """Run a pipeline, expect exit 2 and one ``error:`` line holding every needle."""
    code = _main(name)(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    line = next(line for line in err.splitlines() if line.startswith("error: "))
    for needle in needles:
        assert needle in line, line
    return line


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """An MAE and an RC-MAE checkpoint of the tiny ViT (32-px tiles), as Lightning writes them."""
    out = tmp_path_factory.mktemp("ckpt")
    info = {"bands": S2, "sensor": "s2-l1c", "mean": [1.0] * 13, "std": [2.0] * 13, "gsd": 10.0}
    paths = {}
    for method in ("mae", "rcmae"):
        task = PretrainTask(method=method, preset="vit_test", patch_size=8, img_size=32, in_chans=13,
                            data_info=info)
        paths[method] = out / f"{method}.ckpt"
        torch.save({"state_dict": task.state_dict(), "hyper_parameters": dict(task.hparams),
                    "pytorch-lightning_version": lightning.__version__}, paths[method])
    paths["text"] = out / "notes.txt"
    paths["text"].write_text("not a checkpoint\n")
    return paths


# ---------------------------------------------------------------- export


def test_export_teacher_of_an_mae(capsys, checkpoints, tmp_path):
    ckpt = checkpoints["mae"]
    _fails(capsys, "export", [str(ckpt), "--out", str(tmp_path / "b.safetensors"), "--weights", "teacher"],
           str(ckpt), "no teacher", "--weights student")
    assert not (tmp_path / "b.safetensors").exists()


def test_export_bad_checkpoints(capsys, checkpoints, tmp_path):
    out = str(tmp_path / "b.safetensors")
    _fails(capsys, "export", [str(tmp_path / "missing.ckpt"), "--out", out], "missing.ckpt", "last.ckpt")
    _fails(capsys, "export", [str(checkpoints["text"]), "--out", out], "notes.txt", "pipelines/pretrain.py")
    assert _main("export")([str(checkpoints["rcmae"]), "--out", out, "--weights", "teacher"]) == 0
    _fails(capsys, "export", [out, "--out", str(tmp_path / "c.safetensors")], "b.safetensors",
           "not a pretraining checkpoint")
    blocked = checkpoints["text"] / "b.safetensors"  # a "folder" that is a file
    _fails(capsys, "export", [str(checkpoints["mae"]), "--out", str(blocked)], str(blocked), "--out")


# ---------------------------------------------------------------- pretrain


def _fit(store: Path, tmp: Path, *extra: str) -> list[str]:
    configs = ROOT / "configs" / "pretrain"
    return ["fit", "--config", str(configs / "base.yaml"), "--config", str(configs / "mae_tiny.yaml"),
            "--data.stores", f"[{store}]", "--data.num_workers", "0", "--trainer.max_steps", "1",
            "--trainer.default_root_dir", str(tmp), *extra]


@pytest.mark.slow
def test_pretrain_bad_inputs(capsys, checkpoints, eurosat_train_store, tmp_path):
    _fails(capsys, "pretrain", _fit(tmp_path / "none.zarr", tmp_path), "none.zarr", "pipelines/tile.py")
    _fails(capsys, "pretrain", _fit(EUROSAT, tmp_path), str(EUROSAT), "tile store")
    _fails(capsys, "pretrain", _fit(eurosat_train_store, tmp_path, "--model.preset", "vit_huge"),
           "vit_huge", "vit_small")
    _fails(capsys, "pretrain", _fit(eurosat_train_store, tmp_path, "--ckpt_path", str(tmp_path / "x.ckpt")),
           "x.ckpt", "no such checkpoint")
    # a checkpoint of 32-px tiles cannot resume on 64-px ones: named, not a state-dict traceback
    tiny = ("--ckpt_path", str(checkpoints["mae"]), "--model.preset", "vit_test")
    _fails(capsys, "pretrain", _fit(eurosat_train_store, tmp_path, *tiny), str(checkpoints["mae"]),
           "img_size=32", "config")
    # nor with the preset of the config (vit_tiny): the config as given is compared, not the checkpoint's copy
    _fails(capsys, "pretrain", _fit(eurosat_train_store, tmp_path, "--ckpt_path", str(checkpoints["mae"])),
           str(checkpoints["mae"]), "preset='vit_test' (config: 'vit_tiny')")
    _fails(capsys, "pretrain", _fit(eurosat_train_store, tmp_path, "--model.init_backbone",
                                    str(checkpoints["mae"])), str(checkpoints["mae"]), "pipelines/export.py")


def test_pretrain_refuses_subcommands_without_a_step(capsys, eurosat_train_store, tmp_path):
    for sub in ("predict", "test"):
        argv = [sub, *_fit(eurosat_train_store, tmp_path)[1:]]
        _fails(capsys, "pretrain", argv, f"{sub}: not a pretraining subcommand", "fit or validate")


# ---------------------------------------------------------------- evaluation, stores, reports


def test_evaluate_unknown_task_lists_the_tasks(capsys):
    with pytest.raises(SystemExit) as done:
        _main("evaluate")(["--task", "segmentation", "--backbone", "b.safetensors", "--protocol", "knn"])
    err = capsys.readouterr().err
    assert done.value.code == 2 and "Traceback" not in err
    choices = "classification, bigearthnet, oscd, levircd, landsat"
    assert "'segmentation'" in err and choices in err.replace("'", "")


def test_evaluate_bad_inputs(capsys, checkpoints, tmp_path):
    ckpt = str(checkpoints["mae"])
    _fails(capsys, "evaluate", ["--backbone", ckpt, "--protocol", "linear", "--root", str(EUROSAT)],
           ckpt, "pipelines/export.py")
    _fails(capsys, "evaluate", ["--backbone", str(tmp_path / "b.safetensors"), "--protocol", "linear",
                                "--root", str(EUROSAT)], "b.safetensors", "no such weights file")
    _fails(capsys, "evaluate_change", ["--backbone", ckpt, "--test-root", str(tmp_path)], ckpt, "export")
    _fails(capsys, "evaluate_change", ["--test-root", str(tmp_path / "none")], "none", "root=")


def test_bad_band_list(capsys, tmp_path):
    oscd = ROOT.parent / "shared" / "data" / "oscd_subset"
    _fails(capsys, "evaluate_change", ["--test-root", str(oscd), "--bands", "B02,B99"], "B99", "B8A")


def test_store_config_and_run_paths(capsys, checkpoints, tmp_path):
    _fails(capsys, "inspect_store", [str(tmp_path / "none.zarr")], "none.zarr", "pipelines/tile.py")
    _fails(capsys, "inspect_store", [str(checkpoints["text"])], "notes.txt", "tile store")
    _fails(capsys, "landscape", ["--config", str(tmp_path / "none.yaml")], "none.yaml", "configs/landscape")
    _fails(capsys, "report", [str(tmp_path)], str(tmp_path), "pipelines/pretrain.py")
