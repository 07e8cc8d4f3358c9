"""MAE / RC-MAE pretraining through the CLI on the real EuroSAT store: outputs, resume, NaN guard,
DDP, bf16, the teacher, the EuroSAT probe."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import lightning as L
import pytest
import torch
import yaml
from conftest import EUROSAT, ROOT, SimulatedKill

from rsmae.data import ShardDataset, ShardSampler, TileDataModule
from rsmae.datasets import EuroSAT
from rsmae.errors import BandError, InputNotFoundError
from rsmae.models import teacher_momentum
from rsmae.models.weights import load_backbone
from rsmae.tasks import (
    PretrainTask,
    ProbeCallback,
    ReconstructionImages,
    default_precision,
    knn_accuracy,
    linear_probe_accuracy,
    reconstruct,
    true_colour,
)

sys.path.insert(0, str(ROOT / "pipelines"))
import export  # noqa: E402  (pipeline scripts)
import pretrain  # noqa: E402
import report  # noqa: E402


def _config(tmp: Path, store: Path, method: str = "mae", *, steps: int = 4, every: int = 2,
            batch_size: int = 8, probe: bool = False, callbacks: list[dict] | None = None,
            trainer_args: dict | None = None, workers: int = 0, **model: Any) -> Path:
    """The shipped tiny config with a smaller model and run, writing under ``tmp``.

    ``every``: steps between checkpoints, reconstruction images and validations (1 batch).
    """
    cfg = yaml.safe_load((ROOT / "configs" / "pretrain" / f"{method}_tiny.yaml").read_text())
    trainer = cfg["trainer"]
    trainer.update({"max_steps": steps, "log_every_n_steps": 1, "val_check_interval": every,
                    "check_val_every_n_epoch": 1, "limit_val_batches": 1, "enable_progress_bar": False,
                    "enable_model_summary": False, "default_root_dir": str(tmp), **(trainer_args or {})})
    if not probe:
        trainer["callbacks"] = [c for c in trainer["callbacks"] if "ProbeCallback" not in c["class_path"]]
    for logger in trainer["logger"]:
        logger["init_args"]["save_dir"] = str(tmp)
    for cb in trainer["callbacks"]:
        args = cb.setdefault("init_args", {})
        name = cb["class_path"].rsplit(".", 1)[-1]
        if name == "ModelCheckpoint":
            args.update(dirpath=str(tmp / "checkpoints"), every_n_train_steps=every)
        elif name == "ReconstructionImages":
            args.update(every_n_steps=every, num_images=4)
        elif name == "ProbeCallback":
            args.update(root=str(EUROSAT), every_n_epochs=1, linear_steps=50)
    trainer["callbacks"] += callbacks or []
    cfg["model"].update({"preset": "vit_test", "warmup_steps": 1, **model})
    cfg["data"].update(stores=[str(store)], batch_size=batch_size, num_workers=workers)
    tmp.mkdir(parents=True, exist_ok=True)
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _fit(config: Path, *extra: str) -> int:
    return pretrain.main(["fit", "--config", str(config), *extra])


def _weights(ckpt: Path) -> dict[str, torch.Tensor]:
    return torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]


@pytest.mark.parametrize("method", ["mae", "rcmae"])
def test_fit_writes_checkpoint_logs_images_backbone(tmp_path: Path, eurosat_store: Path, method: str,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    assert _fit(_config(tmp_path, eurosat_store, method, steps=4, every=2, probe=True)) == 0
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
    assert "student encoder" in meta.source and abs(meta.mean[0] - 1360.9) < 1
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


CONFIGS = sorted((ROOT / "configs" / "pretrain").glob("*.yaml"))


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_shipped_configs_parse(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        _fit(config, "--print_config")
    assert done.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["trainer"]["use_distributed_sampler"] is False  # ShardSampler splits by rank
    assert config.stem.startswith(printed["model"]["method"] + "_")
    assert printed["trainer"]["precision"] in ("auto", "bf16-mixed")
    checkpoint = next(c for c in printed["trainer"]["callbacks"] if "ModelCheckpoint" in c["class_path"])
    assert checkpoint["init_args"]["save_last"] is True and checkpoint["init_args"]["dirpath"]


def test_resume_after_kill_equals_uninterrupted(tmp_path: Path, eurosat_store: Path) -> None:
    # 2-batch epochs: killed after step 3 (mid-epoch 1), the resumed run goes on into epoch 2
    kw = {"steps": 5, "every": 1, "method": "rcmae",
          "trainer_args": {"limit_train_batches": 2, "val_check_interval": 2}}
    straight = tmp_path / "straight"
    assert _fit(_config(straight, eurosat_store, **kw)) == 0
    resumed = tmp_path / "resumed"
    kill = [{"class_path": "conftest.KillAt", "init_args": {"step": 3}}]
    with pytest.raises(SimulatedKill):
        _fit(_config(resumed, eurosat_store, callbacks=kill, **kw))
    first = torch.load(resumed / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert first["global_step"] == 3 and first["rsmae_train_batches"] == 3
    assert first["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [{"epoch": 1, "batches": 1}]
    assert _fit(_config(resumed, eurosat_store, **kw), "--ckpt_path", "last") == 0
    a, b = _weights(straight / "checkpoints" / "last.ckpt"), _weights(resumed / "checkpoints" / "last.ckpt")
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, different[:5]
    key = "model.student.encoder.cls_token"
    assert not torch.equal(a[key], first["state_dict"][key])  # it did train after the resume


def test_nonfinite_loss_raises_naming_the_step(tmp_path: Path, eurosat_store: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    config = _config(tmp_path, eurosat_store, steps=6, every=1, base_lr=1e30, warmup_steps=0)
    assert _fit(config) == 2
    err = capsys.readouterr().err
    assert "non-finite at global step" in err and "--ckpt_path last" in err
    step = int(err.split("global step ")[1].split()[0])
    assert 1 <= step < 6
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert last["global_step"] == step  # the last good step's checkpoint stays on disk
    assert all(torch.isfinite(v).all() for v in last["state_dict"].values() if v.is_floating_point())


@pytest.mark.parametrize("method", ["mae", "rcmae"])
def test_fsdp_two_processes_match_one(tmp_path: Path, method: str) -> None:
    # Lightning's FSDPStrategy refuses the CPU; the model itself shards with FSDP2 over gloo and
    # trains exactly as one process on the whole batch does (mean of the two halves' losses).
    import socket

    import fsdp_worker
    import torch.multiprocessing as mp

    torch.manual_seed(1)
    images, noise = torch.randn(8, 13, 32, 32), torch.rand(8, 16)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "rank0.pt"
    mp.spawn(fsdp_worker.worker, args=(2, port, method, images, noise, str(out)), nprocs=2)
    sharded = torch.load(out)
    full = fsdp_worker.build(method)
    total = sum(p.numel() for p in (full.student if method == "rcmae" else full).parameters())
    assert sharded["local_numel"] < 0.6 * total  # rank 0 held about half of the weights
    halves = fsdp_worker.build(method)
    params = [p for p in halves.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    expected = []
    for _ in range(3):
        optimizer.zero_grad()
        loss = (halves(images[:4], noise=noise[:4]).loss + halves(images[4:], noise=noise[4:]).loss) / 2
        loss.backward()
        optimizer.step()
        if method == "rcmae":
            halves.update_teacher(0.9)
        expected.append(loss.item())
    assert sharded["losses"] == pytest.approx(expected, rel=1e-5, abs=1e-6)


def test_ddp_two_processes_see_disjoint_data(tmp_path: Path, eurosat_store: Path) -> None:
    record = [{"class_path": "conftest.RecordBatches", "init_args": {"out_dir": str(tmp_path)}}]
    config = _config(tmp_path, eurosat_store, steps=3, every=3, callbacks=record)
    path = os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path}
    cmd = [sys.executable, str(ROOT / "pipelines" / "pretrain.py"), "fit", "--config", str(config),
           "--trainer.strategy", "ddp", "--trainer.accelerator", "cpu", "--trainer.devices", "2"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    a, b = (set(r["indices"]) for r in ranks)
    assert len(a) == len(b) == 3 * 8 and not a & b
    dm = _datamodule(eurosat_store)
    dm.setup("fit")
    for rank, record in enumerate(ranks):  # each rank read its own ShardSampler shards, split once
        expected = list(ShardSampler(dm.train_set, seed=0, num_replicas=2, rank=rank))[: 3 * 8]
        assert record["indices"] == expected
    assert ranks[0]["checksum"] == ranks[1]["checksum"]  # gradients were all-reduced
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 3


class _AutocastProbe(PretrainTask):
    seen: list[tuple[bool, torch.dtype]]

    def _shared_step(self, batch: dict, batch_idx: int, stage: str) -> Any:
        out = super()._shared_step(batch, batch_idx, stage)
        self.seen.append((torch.is_autocast_enabled("cpu"), out.pred.dtype))
        return out


def _datamodule(store: Path, batch_size: int = 8) -> TileDataModule:
    return TileDataModule([str(store)], batch_size=batch_size, num_workers=0)


def _trainer(steps: int, **kw: Any) -> L.Trainer:
    return L.Trainer(accelerator="cpu", devices=1, max_steps=steps, logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0, **kw)


def test_bf16_mixed_autocast_on_cpu(eurosat_store: Path) -> None:
    dm = _datamodule(eurosat_store)
    task = _AutocastProbe(preset="vit_test", patch_size=8, img_size=64, in_chans=13, warmup_steps=0)
    task.seen = []
    _trainer(1, precision="bf16-mixed").fit(task, datamodule=dm)
    assert task.seen == [(True, torch.bfloat16)]
    assert task.student.encoder.cls_token.dtype == torch.float32  # master weights stay fp32

def test_bf16_clips_gradients_of_fused_adamw(eurosat_store: Path) -> None:
    # Lightning's mixed-precision plugin refuses to clip for a fused optimizer; bf16 has no scaler
    task = PretrainTask(preset="vit_test", patch_size=8, img_size=64, in_chans=13, warmup_steps=0)
    trainer = _trainer(1, precision="bf16-mixed", gradient_clip_val=1.0)
    trainer.fit(task, datamodule=_datamodule(eurosat_store))
    optimizer = trainer.optimizers[0]
    assert optimizer.defaults["fused"] is True
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for p in params:
        p.grad = torch.full_like(p, 10.0)
    task.configure_gradient_clipping(optimizer, 1.0, "norm")
    assert abs(float(torch.nn.utils.get_total_norm([p.grad for p in params])) - 1.0) < 1e-3
    task.configure_gradient_clipping(optimizer, 0.5, "value")
    assert max(float(p.grad.abs().max()) for p in params) <= 0.5


@pytest.mark.parametrize("fused", [None, True])
def test_attention_kernel_by_device_and_compile(eurosat_store: Path, fused: bool | None) -> None:
    task = PretrainTask(preset="vit_test", patch_size=8, img_size=64, in_chans=13, warmup_steps=0,
                        fused_attention=fused, compile=fused is None)
    before = copy.deepcopy(task.student.encoder.state_dict())
    _trainer(2).fit(task, datamodule=_datamodule(eurosat_store))
    flags = {m.fused_attn for m in task.model.modules() if hasattr(m, "fused_attn")}
    assert flags == {fused is True}  # auto on the CPU: the math path
    assert task._compiled == (fused is None)
    assert set(task.student.encoder.state_dict()) == set(before)  # compiling keeps the keys
    assert not torch.equal(task.student.encoder.blocks[0].mlp.fc1.weight, before["blocks.0.mlp.fc1.weight"])


def test_default_precision_follows_the_hardware() -> None:
    assert default_precision("cpu", flags={"avx2", "avx512f"}) == "32-true"
    assert default_precision("cpu", flags={"avx512_bf16"}) == "bf16-mixed"
    assert default_precision("cpu", flags={"amx_bf16", "amx_tile"}) == "bf16-mixed"


class _TeacherTrace(L.Callback):
    def __init__(self) -> None:
        self.trace: list[dict[str, Any]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.before = copy.deepcopy(pl_module.model.teacher.state_dict())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        model = pl_module.model
        self.trace.append({"step": trainer.global_step, "momentum": pl_module.last_teacher_momentum,
                           "before": self.before, "teacher": copy.deepcopy(model.teacher.state_dict()),
                           "student": copy.deepcopy(model.student.state_dict())})


def test_rcmae_teacher_follows_student_with_global_step_momentum(eurosat_store: Path) -> None:
    dm = _datamodule(eurosat_store, batch_size=8)
    task = PretrainTask(method="rcmae", preset="vit_test", patch_size=8, img_size=64, in_chans=13,
                        teacher_momentum=0.9, warmup_steps=0, base_lr=1e-2)
    trace = _TeacherTrace()
    _trainer(4, accumulate_grad_batches=2, callbacks=[trace]).fit(task, datamodule=dm)
    # lr scaled by the effective batch; no decay on 1-D params, position embeddings or tokens
    groups = task.trainer.optimizers[0].param_groups
    assert groups[0]["initial_lr"] == pytest.approx(1e-2 * 8 * 2 / 256)
    names = {id(p): n for n, p in task.named_parameters()}
    no_decay = {names[id(p)] for p in groups[1]["params"]}
    assert all(p.ndim >= 2 for p in groups[0]["params"]) and groups[1]["weight_decay"] == 0.0
    assert "model.student.mask_token" in no_decay and "model.student.encoder.cls_token" in no_decay
    assert not any("teacher" in names[id(p)] for g in groups for p in g["params"])
    # 8 micro-batches, 4 optimiser steps: the teacher moves only after a step, by that step's momentum
    steps = [t for t in trace.trace if t["momentum"] is not None]
    assert [t["step"] for t in trace.trace] == [0, 1, 1, 2, 2, 3, 3, 4]
    moved = [i for i, t in enumerate(trace.trace) if not torch.equal(t["before"]["encoder.cls_token"],
                                                                      t["teacher"]["encoder.cls_token"])]
    assert moved == [1, 3, 5, 7]
    for i in moved:
        t = trace.trace[i]
        m = teacher_momentum(t["step"] - 1, 4, base=0.9)
        assert t["momentum"] == pytest.approx(m) and m < 1.0
        for key, value in t["teacher"].items():
            if key in dict(task.model.teacher.named_parameters()):
                torch.testing.assert_close(value, m * t["before"][key] + (1 - m) * t["student"][key])
    assert steps[-1]["momentum"] > steps[0]["momentum"]


def test_probe_on_real_eurosat(eurosat_store: Path) -> None:
    dm = _datamodule(eurosat_store)
    info = dm.data_info
    probe = ProbeCallback(root=str(EUROSAT), linear_steps=100)
    probe.load(info)
    assert probe.data["train"].bands == tuple(info["bands"]) and len(probe.data["test"]) == 54
    torch.manual_seed(0)
    task = PretrainTask(preset="vit_test", patch_size=8, img_size=64, in_chans=13)
    metrics = probe.evaluate(task.encoder(), img_size=64)
    assert set(metrics) == {"probe/knn_acc", "probe/linear_acc"}
    assert all(0.0 <= v <= 1.0 for v in metrics.values())
    assert metrics["probe/knn_acc"] > 0.2 and metrics["probe/linear_acc"] > 0.2  # chance is 0.1
    with pytest.raises(BandError, match="not Sentinel-2"):
        ProbeCallback(root=str(EUROSAT)).load({**info, "sensor": "landsat-oli", "bands": ["B2", "B3", "B4"]})
    with pytest.raises(BandError, match="not all EuroSAT bands"):
        EuroSAT(EUROSAT, "test", bands=["B04", "B03", "R"])


def test_eurosat_reads_bands_by_name_and_refuses_a_missing_root(tmp_path: Path) -> None:
    import rasterio
    rgb = EuroSAT(EUROSAT, "test", bands=["red", "B3", "B02"])
    with rasterio.open(rgb.paths[0]) as src:
        raw = torch.from_numpy(src.read().astype("float32"))
    torch.testing.assert_close(rgb[0]["image"], raw[[3, 2, 1]])  # file order: B01..B12, B8A
    assert rgb[0]["label"] == rgb.classes.index(rgb.paths[0].parent.name) and len(rgb.classes) == 10
    with pytest.raises(InputNotFoundError, match=str(tmp_path / "nowhere")) as err:
        EuroSAT(tmp_path / "nowhere", "train")
    assert "pass root=" in str(err.value) and isinstance(err.value, FileNotFoundError)


@pytest.mark.parametrize("norm_pix", [True, False])
def test_reconstruction_of_a_perfect_prediction_is_the_input(eurosat_store: Path, norm_pix: bool) -> None:
    task = PretrainTask(preset="vit_test", patch_size=8, img_size=64, in_chans=13, norm_pix_loss=norm_pix)
    data = ShardDataset(eurosat_store)
    images = torch.stack([data[i]["image"] for i in range(3)])
    out = task.student(images)
    recon, mask = reconstruct(images, out.target, out.mask, 8, norm_pix_loss=norm_pix)
    torch.testing.assert_close(recon, images, atol=1e-4, rtol=1e-4)
    assert mask.mean() == pytest.approx(0.75)
    wrong, _ = reconstruct(images, out.target.flip(0), out.mask, 8, norm_pix_loss=norm_pix)
    assert not torch.allclose(wrong, images, atol=1e-2)
    rgb = true_colour(images, data.bands, "s2-l1c")
    assert rgb.shape == (3, 3, 64, 64) and rgb.min() >= 0 and rgb.max() <= 1
    torch.testing.assert_close(rgb, true_colour(images[:, [3, 2, 1]], ["B04", "B03", "B02"], "s2-l1c"))


def test_reconstruction_images_of_native_data_are_normalised(eurosat_store: Path) -> None:
    native, plain = _datamodule(eurosat_store), TileDataModule([str(eurosat_store)], native=False)
    for dm in (native, plain):
        dm.setup("fit")
    assert native.val_set[0]["image"].dtype == torch.uint16  # the default ships the stores' dtype
    images = ReconstructionImages(num_images=3)._fixed_images(SimpleNamespace(datamodule=native), {})
    expected = torch.stack([plain.val_set[i]["image"] for i in range(3)])
    assert images.dtype == torch.float32
    torch.testing.assert_close(images, expected)


def test_knn_and_linear_probe_score_separable_and_random_features() -> None:
    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(200) % 4
    centres = torch.randn(4, 16, generator=gen) * 5
    feats = centres[labels] + torch.randn(200, 16, generator=gen)
    train, test = slice(0, 150), slice(150, 200)
    assert knn_accuracy(feats[train], labels[train], feats[test], labels[test], k=5) == 1.0
    assert linear_probe_accuracy(feats[train], labels[train], feats[test], labels[test]) == 1.0
    noise = torch.randn(200, 16, generator=gen)
    assert knn_accuracy(noise[train], labels[train], noise[test], labels[test], k=5) < 0.6
