"""One pretraining run over stores of different band sets (issue 24): a tiny spectral MAE on real Sentinel-2
(EuroSAT, 13 bands) and Landsat 8 (B2, B3, B4) stores; each batch normalised with its own group's statistics
and embedded with its own bands; a fixed (conv) embedding refuses the mix."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
import yaml

from rsmae.data import ShardDataset, TileDataModule
from rsmae.errors import ModelConfigError
from rsmae.tasks import PretrainTask
from tests.conftest import load_script
from tests.data.mixed_helpers import tile_landsat
from tests.tasks.conftest import SimulatedKill

pretrain = load_script("pipelines/pretrain.py")

OLI = ["landsat-oli:B2", "landsat-oli:B3", "landsat-oli:B4"]


@pytest.fixture(scope="module")
def landsat_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tile_landsat(tmp_path_factory.mktemp("landsat"))


def _data(eurosat: Path, landsat: Path, **kw: Any) -> TileDataModule:
    return TileDataModule({"s2": [str(eurosat)], "landsat": [str(landsat)]}, batch_size=4, num_workers=0,
                          mix={"s2": 1, "landsat": 1}, **kw)


def _task(dm: TileDataModule | None = None, **kw: Any) -> PretrainTask:
    torch.manual_seed(0)
    args = {"preset": "vit_test", "patch_size": 8, "img_size": 64, "in_chans": 13, "warmup_steps": 1,
            "patch_embed": "spectral", "data_info": dm.data_info if dm is not None else None, **kw}
    return PretrainTask(**args)


class RecordBatches(L.Callback):
    """Group, bands, channels and loss of every training batch."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, tuple[str, ...], int, float]] = []

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: Any, outputs: Any, batch: dict,
                           batch_idx: int) -> None:
        loss = float(trainer.callback_metrics["train/loss"])
        self.seen.append((batch["group"], tuple(batch["bands"]), batch["image"].shape[1], loss))


@pytest.mark.parametrize("method", ["mae", "rcmae"])
def test_spectral_mae_fits_on_sentinel2_and_landsat(method: str, eurosat_store: Path, landsat_store: Path,
                                                    cpu_trainer) -> None:
    dm = _data(eurosat_store, landsat_store)
    task = _task(dm, method=method)
    record, embedded, predicted = RecordBatches(), [], []  # the bands of each forward's kernels and outputs
    embed = task.student.encoder.patch_embed
    kernels = embed.conv_params
    embed.conv_params = lambda bands: embedded.append(tuple(bands)) or kernels(bands)
    task.student.decoder_pred.register_forward_pre_hook(lambda m, args: predicted.append(tuple(args[1])))
    trainer = cpu_trainer(3, callbacks=[record], precision=32)
    trainer.fit(task, datamodule=dm)
    schedule = trainer.train_dataloader.batch_sampler.schedule()[:3].tolist()
    assert [g for g, *_ in record.seen] == [["s2", "landsat"][g] for g in schedule]
    assert {g for g, *_ in record.seen} == {"s2", "landsat"}  # both sensors within 3 steps (seed 0)
    for group, bands, chans, loss in record.seen:
        assert len(bands) == chans == (13 if group == "s2" else 3) and math.isfinite(loss)
        assert bands == tuple(OLI) or bands[0] == "s2-l1c:B01"
    assert embedded == predicted == [b for _, b, _, _ in record.seen]  # each batch: its own bands
    assert task.student.bands == tuple(dm.data_info["bands"])  # the first group's again after fit
    assert task.hparams.data_info["groups"][1]["bands"] == ["B2", "B3", "B4"]
    assert all(torch.isfinite(p).all() for p in task.parameters())


def test_each_batch_is_normalised_with_its_group_statistics(eurosat_store: Path, landsat_store: Path) -> None:
    dm = _data(eurosat_store, landsat_store)
    dm.setup("fit")
    task = _task(dm)
    batches = {b["group"]: b for b in dm.val_dataloader()}
    for name, path in (("landsat", landsat_store), ("s2", eurosat_store)):
        batch = batches[name]
        out = task.on_after_batch_transfer(batch, 0)["image"]  # no trainer: normalised only
        reference = ShardDataset(path)  # float32, normalised with that store's own statistics
        local = batch["index"] - int(dm.mixed_val.offsets[list(batches).index(name)])
        part = dm.mixed_val.parts[list(batches).index(name)]
        rows = [part.table[i] for i in local.tolist()]
        full = [int(((reference.table[:, 1] == r[1]) & (reference.table[:, 0] == r[0])).nonzero()[0][0])
                for r in rows]
        torch.testing.assert_close(out, torch.stack([reference[i]["image"] for i in full]))
    assert batches["landsat"]["image"].shape[1] == 3


def test_conv_on_stores_of_different_bands_is_refused(eurosat_store: Path, landsat_store: Path,
                                                      cpu_trainer) -> None:
    dm = _data(eurosat_store, landsat_store)
    expected = (rf"s2 \({eurosat_store}\): B01, B02.*B12; landsat \({landsat_store}\): B2, B3, B4.*"
                r"model.patch_embed: spectral")
    with pytest.raises(ModelConfigError, match=expected):
        _task(dm, patch_embed="conv")
    task = _task(patch_embed="conv")  # built without its data: refused when the trainer sets it up
    with pytest.raises(ModelConfigError, match=expected):
        cpu_trainer(1, precision=32).fit(task, datamodule=dm)


def test_conv_on_groups_of_the_same_bands_trains(eurosat_store: Path, eurosat_train_store: Path,
                                                 cpu_trainer) -> None:
    dm = TileDataModule({"a": [str(eurosat_store)], "b": [str(eurosat_train_store)]}, batch_size=4,
                        num_workers=0, mix={"a": 1, "b": 3})
    record = RecordBatches()
    task = _task(dm, patch_embed="conv")
    cpu_trainer(2, callbacks=[record], precision=32).fit(task, datamodule=dm)
    assert len(record.seen) == 2 and all(math.isfinite(loss) for *_, loss in record.seen)


def _mixed_config(tmp: Path, eurosat: Path, landsat: Path, pretrain_config, **kw: Any) -> Path:
    """The shipped mae_spectral_mixed_tiny config, tiny model and run, on the two real stores."""
    path = pretrain_config(tmp, eurosat, method="mae_spectral_mixed", **kw)
    cfg = yaml.safe_load(path.read_text())
    cfg["data"]["stores"] = {"s2": [str(eurosat)], "landsat": [str(landsat)]}
    cfg["data"]["mix"] = {"s2": 1, "landsat": 1}
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))  # the groups in order: s2 first
    return path


def test_shipped_mixed_config_resumes_after_a_kill_as_uninterrupted(
        tmp_path: Path, eurosat_store: Path, landsat_store: Path, pretrain_config) -> None:
    # 3-batch epochs: killed after step 4 (mid-epoch 1), the resumed run trains steps 5 and 6
    kw = {"steps": 6, "every": 1, "trainer_args": {"limit_train_batches": 3, "limit_val_batches": 0,
                                                   "precision": "32-true"}}
    straight = _mixed_config(tmp_path / "straight", eurosat_store, landsat_store, pretrain_config, **kw)
    assert pretrain.main(["fit", "--config", str(straight)]) == 0
    kill = [{"class_path": "tests.tasks.conftest.KillAt", "init_args": {"step": 4}}]
    resumed = _mixed_config(tmp_path / "resumed", eurosat_store, landsat_store, pretrain_config,
                            callbacks=kill, **kw)
    with pytest.raises(SimulatedKill):
        pretrain.main(["fit", "--config", str(resumed)])
    ckpt = tmp_path / "resumed" / "checkpoints" / "last.ckpt"
    first = torch.load(ckpt, map_location="cpu", weights_only=False)
    assert first["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [{"epoch": 1, "batches": 1}]
    assert [g["name"] for g in first["hyper_parameters"]["data_info"]["groups"]] == ["s2", "landsat"]
    resumed = _mixed_config(tmp_path / "resumed", eurosat_store, landsat_store, pretrain_config, **kw)
    assert pretrain.main(["fit", "--config", str(resumed), "--ckpt_path", "last"]) == 0
    a, b = (torch.load(tmp_path / run / "checkpoints" / "last.ckpt", map_location="cpu",
                       weights_only=False)["state_dict"] for run in ("straight", "resumed"))
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert a.keys() == b.keys() and not different, different[:5]
    key = "model.encoder.cls_token"
    assert not torch.equal(a[key], first["state_dict"][key])  # it did train after the resume
