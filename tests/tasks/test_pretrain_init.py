"""Continued pretraining: ``PretrainTask(init_backbone=...)`` starts from a saved (RGB) backbone,
adapted to the data's Sentinel-2 bands by name; the decoder starts fresh."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from torch.testing import assert_close

from rsmae.bands import get_sensor
from rsmae.errors import WeightsError
from rsmae.models import create_encoder, load_backbone, save_backbone
from rsmae.models.weights import BackboneMeta
from rsmae.tasks import PretrainTask
from tests.conftest import load_script

pretrain = load_script("pipelines/pretrain.py")

L1C = list(get_sensor("s2-l1c").names)
S2_INFO = {"bands": L1C, "sensor": "s2-l1c", "mean": [1000.0] * 13, "std": [500.0] * 13, "gsd": 10.0,
           "tile_size": 64}


def _rgb_backbone(path: Path, img_size: int = 64, preset: str = "vit_test") -> Path:
    """A saved RGB backbone with random (non-default) weights everywhere."""
    encoder = create_encoder(preset, in_chans=3, img_size=img_size, patch_size=8)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in encoder.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    meta = BackboneMeta(preset=preset, img_size=img_size, patch_size=8, in_chans=3, bands=["R", "G", "B"],
                        sensor="rgb", mean=[120.0, 115.0, 100.0], std=[68.0, 68.0, 66.0], gsd=None)
    return save_backbone(encoder, path, meta)


def _task(**kw: object) -> PretrainTask:
    args = dict(preset="vit_test", patch_size=8, img_size=64, in_chans=13, data_info=S2_INFO)
    return PretrainTask(**{**args, **kw})


@pytest.mark.parametrize("method", ["mae", "rcmae"])
def test_encoder_starts_from_the_adapted_backbone(tmp_path: Path, method: str,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    path = _rgb_backbone(tmp_path / "rgb.safetensors", img_size=32)  # position table refitted to 64 px
    with caplog.at_level(logging.INFO):
        task = _task(method=method, init_backbone=str(path))
    adapted = load_backbone(path, bands=L1C, sensor="s2-l1c", img_size=64).state_dict()
    encoders = [task.encoder("student")] + ([task.encoder("teacher")] if method == "rcmae" else [])
    for encoder in encoders:
        state = encoder.state_dict()
        assert state.keys() == adapted.keys()
        for key, value in adapted.items():
            assert_close(state[key], value, rtol=0, atol=0, msg=key)
    # by band name: B04, B03, B02 take R, G, B; the rest their mean; all times 3 / 13
    source = load_backbone(path).patch_embed.proj.weight.detach()
    kernel = task.encoder().patch_embed.proj.weight.detach()
    for s2, rgb in (("B04", 0), ("B03", 1), ("B02", 2)):
        assert_close(kernel[:, L1C.index(s2)], source[:, rgb] * 3 / 13)
    assert_close(kernel[:, L1C.index("B11")], source.mean(dim=1) * 3 / 13)
    assert "B04" in caplog.text and "encoder initialised from" in caplog.text
    # once the weights are in a checkpoint, rebuilding the task must not need the init file
    checkpoint = {"hyper_parameters": dict(task.hparams)}
    task.on_save_checkpoint(checkpoint)
    assert checkpoint["hyper_parameters"]["init_backbone"] is None
    assert task.hparams.init_backbone == str(path)
    assert "started from" in task.backbone_meta().source


def test_refuses_other_architecture_or_unknown_bands(tmp_path: Path) -> None:
    path = _rgb_backbone(tmp_path / "rgb.safetensors")
    with pytest.raises(WeightsError, match="rgb.safetensors.*patch"):
        _task(init_backbone=str(path), patch_size=16)
    with pytest.raises(WeightsError, match="rgb.safetensors.*data_info"):
        _task(init_backbone=str(path), data_info=None)
    with pytest.raises(WeightsError, match="missing.safetensors"):
        _task(init_backbone=str(tmp_path / "missing.safetensors"))


@pytest.mark.slow
def test_cli_run_starts_from_the_backbone(tmp_path: Path, eurosat_store: Path, pretrain_config) -> None:
    """Through the CLI (data_info linked from the store): with a zero learning rate the exported
    encoder is exactly the adapted backbone; the checkpoint rebuilds without the init file."""
    path = _rgb_backbone(tmp_path / "rgb.safetensors")
    config = pretrain_config(tmp_path / "run", eurosat_store, steps=2, every=2, base_lr=0.0, min_lr=0.0,
                     init_backbone=str(path))
    assert pretrain.main(["fit", "--config", str(config)]) == 0
    exported = load_backbone(tmp_path / "run" / "logs" / "version_0" / "backbone.safetensors")
    assert f"started from {path}" in exported.rsmae_meta.source
    adapted = load_backbone(path, bands=exported.rsmae_meta.bands, sensor="s2-l1c").state_dict()
    for key, value in exported.state_dict().items():
        assert_close(value, adapted[key], rtol=0, atol=0, msg=key)
    path.unlink()
    task = PretrainTask.load_from_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt",
                                             map_location="cpu")
    assert task.hparams.init_backbone is None


# ---------------------------------------------------------------- foreign starts (no download)


def _foreign_state(in_chans: int, patch: int, seed: int) -> dict[str, torch.Tensor]:
    """A vit_test-sized ViT state dict in timm names, random everywhere (as foreign files hold)."""
    enc = create_encoder("vit_test", in_chans=in_chans, img_size=32, patch_size=patch)
    gen = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=gen) * 0.1 for k, v in enc.state_dict().items()}


@pytest.mark.parametrize("kind", ["mae", "timm", "torchgeo"])
def test_starts_from_foreign_weights(tmp_path: Path, kind: str) -> None:
    """Official MAE .pth (patch 16, decoder keys), timm RGB weights and torchgeo's 13-band weights
    start a 13-band, patch-8 task through the band adaptation; the loaders give the same tensors."""
    from rsmae.models import load_official_mae, load_timm_weights, load_torchgeo_vit
    from rsmae.tasks.init import backbone_kind

    path = tmp_path / f"{kind}.pth"
    if kind == "mae":
        state = _foreign_state(3, 16, seed=1)
        torch.save({"model": {**state, "decoder_embed.weight": torch.randn(32, 64),
                              "mask_token": torch.zeros(1, 1, 32)}, "epoch": 799}, path)
        expected = load_official_mae(path, in_chans=13, bands=L1C, img_size=64, patch_size=8)
    elif kind == "timm":
        torch.save({**_foreign_state(3, 8, seed=2), "head.weight": torch.randn(10, 64)}, path)
        expected = load_timm_weights(path, bands=L1C, img_size=64, patch_size=8)
    else:
        torch.save(_foreign_state(13, 16, seed=3), path)
        expected = load_torchgeo_vit(path, img_size=64, patch_size=8)
    assert backbone_kind(path) == kind
    task = _task(init_backbone=str(path))
    state = task.encoder("student").state_dict()
    for key, value in expected.state_dict().items():
        assert_close(state[key], value, rtol=0, atol=0, msg=key)
    fresh = _task().encoder("student").state_dict()
    assert not torch.equal(state["blocks.0.attn.qkv.weight"], fresh["blocks.0.attn.qkv.weight"])


def test_refuses_a_training_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": {f"model.encoder.{k}": v for k, v in _foreign_state(13, 8, 0).items()},
                "hyper_parameters": {"method": "mae"}}, path)
    with pytest.raises(WeightsError, match="last.ckpt.*export"):
        _task(init_backbone=str(path))


class _Payload:
    """Unpickling it would run code: ``open(marker, "w")`` creates the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple:
        return open, (self.marker, "w")


def test_a_checkpoint_with_a_pickled_object_is_refused_not_run(tmp_path: Path, eurosat_store: Path,
                                                               capsys, pretrain_config) -> None:
    """Export, the landscape study and --ckpt_path load checkpoints weights-only: a pickled object
    (here one whose unpickling creates a file) is refused, with the file's name, and never runs."""
    from rsmae.errors import CheckpointError
    from rsmae.landscape.config import ModelSpec
    from rsmae.landscape.inputs import load_model
    from rsmae.tasks.init import check_resume
    from rsmae.tasks.pretrain import export_backbone

    task = _task()
    marker = tmp_path / "payload_ran"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": task.state_dict(), "hyper_parameters": dict(task.hparams),
                "pytorch-lightning_version": "2.6.0", "extra": _Payload(marker)}, path)
    with pytest.raises(CheckpointError, match="evil.ckpt"):
        export_backbone(path, tmp_path / "out.safetensors")
    with pytest.raises(WeightsError, match="evil.ckpt"):
        load_model(ModelSpec(name="evil", kind="pretrain", path=str(path)))
    config = pretrain_config(tmp_path / "run", eurosat_store, steps=1, every=1)
    assert pretrain.main(["fit", "--config", str(config), "--ckpt_path", str(path)]) == 2  # no traceback
    assert f"error: {path}: not a readable Lightning checkpoint (UnpicklingError" in capsys.readouterr().err
    with pytest.raises(CheckpointError, match="evil.ckpt"):  # the CLI's check before Lightning resumes
        check_resume(path, task.hparams)
    assert not marker.exists()
    torch.load(path, weights_only=False)  # the payload is real: a full unpickling runs it
    assert marker.exists()
