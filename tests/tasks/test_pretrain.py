"""MAE / RC-MAE pretraining through the CLI on the real EuroSAT store: outputs, export, report, the
shipped configs, resume after a kill, the NaN guard."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from rsmae.models.weights import load_backbone
from tests.conftest import load_script
from tests.tasks.conftest import SimulatedKill

pytestmark = pytest.mark.slow  # end to end, several seconds each (make quick leaves them out)

export = load_script("pipelines/export.py")
pretrain = load_script("pipelines/pretrain.py")
report = load_script("pipelines/report.py")


def _fit(config: Path, *extra: str) -> int:
    return pretrain.main(["fit", "--config", str(config), *extra])


def _weights(ckpt: Path) -> dict[str, torch.Tensor]:
    return torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]


@pytest.mark.parametrize("method", ["mae", "rcmae"])
def test_fit_writes_checkpoint_logs_images_backbone(tmp_path: Path, eurosat_train_store: Path, method: str,
                                                    capsys: pytest.CaptureFixture[str],
                                                    pretrain_config) -> None:
    # the probe refuses a corpus holding its test images: pretrain on EuroSAT's train split
    assert _fit(pretrain_config(tmp_path, eurosat_train_store, method, steps=4, every=2, probe=True)) == 0
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 4 and ckpt["hyper_parameters"]["method"] == method
    assert ckpt["hyper_parameters"]["in_chans"] == 13 and ckpt["hyper_parameters"]["img_size"] == 64
    run = tmp_path / "logs" / "version_0"
    header = (run / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"train/loss", "train/recon_loss", "val/loss", "probe/knn_acc", "probe/linear_acc"} <= set(header)
    assert ("train/consistency_loss" in header) == (method == "rcmae")
    pngs = sorted((run / "reconstructions").glob("*.png"))
    assert [p.name for p in pngs] == ["step_0000002.png", "step_0000004.png"]
    from PIL import Image
    assert Image.open(pngs[-1]).size == (3 * 64, 4 * 64)
    assert list((tmp_path / "tb").rglob("events.out.tfevents*"))
    encoder = load_backbone(run / "backbone.safetensors")
    meta = encoder.rsmae_meta
    assert meta.bands[8] == "B8A" and meta.sensor == "s2-l1c" and meta.gsd == 10.0 and meta.img_size == 64
    assert "student encoder" in meta.source and abs(meta.mean[0] - 1368.0) < 1
    # the exported student equals the student in the checkpoint
    prefix = "model.student.encoder." if method == "rcmae" else "model.encoder."
    state = {k[len(prefix):]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    for key, value in encoder.state_dict().items():
        torch.testing.assert_close(value, state[key], rtol=0, atol=0)
    # the probe curve starts at the initial weights and ends at the last step; the report shows it
    history = json.loads((run / "probe.json").read_text())
    assert history[0]["step"] == 0 and history[-1]["step"] == 4
    assert history[0]["n_train"] == 216 and history[0]["n_test"] == 54
    assert report.main([str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "216 train / 54 test" in printed and "step      4: kNN" in printed
    assert "backbone.safetensors" in printed
    assert report.main([str(tmp_path / "nothing")]) == 2
    if method == "rcmae":  # the teacher exports too, and differs
        out = tmp_path / "teacher.safetensors"
        assert export.main([str(tmp_path / "checkpoints" / "last.ckpt"), "--out", str(out),
                            "--weights", "teacher"]) == 0
        teacher = load_backbone(out)
        assert "teacher encoder" in teacher.rsmae_meta.source
        assert not torch.equal(teacher.blocks[0].attn.qkv.weight, encoder.blocks[0].attn.qkv.weight)


# the shipped configs (base + overrides) are parsed and checked in tests/tasks/test_configs.py


@pytest.mark.parametrize("embed", [
    {},  # the fixed conv embedding
    # the spectral one, band dropout drawn per batch (2 to 7 of the 13 bands); its decoder head is generated
    {"patch_embed": "spectral", "band_dropout": {"p_keep_min": 0.1, "p_keep_max": 0.6}}],
    ids=["conv", "spectral"])
def test_resume_after_kill_equals_uninterrupted(tmp_path: Path, eurosat_store: Path, pretrain_config,
                                                embed: dict) -> None:
    # 2-batch epochs: killed after step 3 (mid-epoch 1), the resumed run goes on into epoch 2
    kw = {"steps": 5, "every": 1, "method": "rcmae", **embed,
          "trainer_args": {"limit_train_batches": 2, "val_check_interval": 2}}
    straight = tmp_path / "straight"
    assert _fit(pretrain_config(straight, eurosat_store, **kw)) == 0
    resumed = tmp_path / "resumed"
    kill = [{"class_path": "tests.tasks.conftest.KillAt", "init_args": {"step": 3}}]
    with pytest.raises(SimulatedKill):
        _fit(pretrain_config(resumed, eurosat_store, callbacks=kill, **kw))
    first = torch.load(resumed / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert first["global_step"] == 3 and first["rsmae_train_batches"] == 3
    assert first["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [{"epoch": 1, "batches": 1}]
    assert _fit(pretrain_config(resumed, eurosat_store, **kw), "--ckpt_path", "last") == 0
    a, b = _weights(straight / "checkpoints" / "last.ckpt"), _weights(resumed / "checkpoints" / "last.ckpt")
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, different[:5]
    key = "model.student.encoder.cls_token"
    assert not torch.equal(a[key], first["state_dict"][key])  # it did train after the resume


def test_nonfinite_loss_raises_naming_the_step(tmp_path: Path, eurosat_store: Path,
                                               capsys: pytest.CaptureFixture[str], pretrain_config) -> None:
    config = pretrain_config(tmp_path, eurosat_store, steps=6, every=1, base_lr=1e30, warmup_steps=0)
    assert _fit(config) == 2
    err = capsys.readouterr().err
    assert "non-finite at global step" in err and "--ckpt_path last" in err
    step = int(err.split("global step ")[1].split()[0])
    assert 1 <= step < 6
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert last["global_step"] == step  # the last good step's checkpoint stays on disk
    assert all(torch.isfinite(v).all() for v in last["state_dict"].values() if v.is_floating_point())


def test_resumed_run_keeps_the_probe_baseline(tmp_path: Path, eurosat_train_store: Path,
                                              pretrain_config) -> None:
    """The probe curve travels in the checkpoint: a run killed after step 3 and resumed still starts
    at its step-0 baseline (probe.json of the resumed run's log folder is written whole)."""
    kw = {"steps": 4, "every": 1, "probe": True,
          "trainer_args": {"limit_train_batches": 2, "val_check_interval": 2}}
    kill = [{"class_path": "tests.tasks.conftest.KillAt", "init_args": {"step": 3}}]
    with pytest.raises(SimulatedKill):
        _fit(pretrain_config(tmp_path, eurosat_train_store, callbacks=kill, **kw))
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    [state] = [v for k, v in ckpt["callbacks"].items() if "ProbeCallback" in k]
    assert [h["step"] for h in state["history"]] == [0, 2]
    assert _fit(pretrain_config(tmp_path, eurosat_train_store, **kw), "--ckpt_path", "last") == 0
    history = json.loads((tmp_path / "logs" / "version_1" / "probe.json").read_text())
    assert [h["step"] for h in history] == [0, 2, 3, 4]  # step 3: the resumed weights' own probe
    assert history[0]["n_train"] == 216
