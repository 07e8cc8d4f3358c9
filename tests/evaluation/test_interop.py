"""Foreign weights as an init here; an rsmae backbone trained by torchgeo's ClassificationTask."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from rsmae.bands import get_sensor
from rsmae.datasets.scene_folder import SceneFolder
from rsmae.evaluation.classification import evaluate_classification
from rsmae.evaluation.interop import import_weights, torchgeo_classification_task
from rsmae.models import BackboneMeta, create_encoder, load_backbone, save_backbone
from tests.conftest import EUROSAT, ROOT

S2 = list(get_sensor("s2-l1c").names)


def test_official_mae_checkpoint_becomes_a_13_band_init(tmp_path: Path) -> None:
    torch.manual_seed(0)
    rgb = create_encoder("vit_test", in_chans=3, img_size=64, patch_size=16)
    decoder = {"decoder_embed.weight": torch.zeros(2, 2), "mask_token": torch.zeros(1, 1, 2)}
    state = {**rgb.state_dict(), **decoder}
    torch.save({"model": state}, tmp_path / "mae_pretrain.pth")  # the official file layout
    out = import_weights(tmp_path / "mae_pretrain.pth", "mae", tmp_path / "b.safetensors",
                         bands=S2, sensor="s2-l1c", img_size=64)
    enc = load_backbone(out)
    assert enc.rsmae_meta.bands == S2 and enc.patch_embed.proj.in_channels == 13
    red = S2.index("B04")
    got, src = enc.patch_embed.proj.weight[:, red].flatten(), rgb.patch_embed.proj.weight[:, 0].flatten()
    assert torch.nn.functional.cosine_similarity(got, src, dim=0) > 0.9999  # R -> B04, up to a rescale
    torch.testing.assert_close(enc.blocks[0].attn.qkv.weight, rgb.blocks[0].attn.qkv.weight)
    result = evaluate_classification(out, "knn", EUROSAT / "train", EUROSAT / "test")
    assert 0.1 <= result["accuracy"] <= 1 and "training split" in result["adaptation"]


def test_rsmae_backbone_trains_in_torchgeo_classification_task(tmp_path: Path) -> None:
    torch.manual_seed(0)
    enc = create_encoder("vit_test", in_chans=13, img_size=64, patch_size=16)
    meta = BackboneMeta(preset="vit_test", img_size=64, patch_size=16, in_chans=13, bands=S2, sensor="s2-l1c",
                        mean=[1000.0] * 13, std=[600.0] * 13, gsd=10.0)
    path = save_backbone(enc, tmp_path / "b.safetensors", meta)
    task = torchgeo_classification_task(path, num_classes=10, lr=1e-3)
    bands = task.model.rsmae_meta.bands
    data = SceneFolder(EUROSAT / "test", bands=bands)
    mean = torch.tensor(meta.mean)[:, None, None]
    std = torch.tensor(meta.std)[:, None, None]
    samples = [{"image": (s["image"] - mean) / std, "label": s["label"]} for s in data]
    before = task.model.blocks[0].attn.qkv.weight.detach().clone()
    trainer = L.Trainer(accelerator="cpu", max_steps=2, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(task, DataLoader(samples, batch_size=8))
    assert trainer.global_step == 2
    assert not torch.equal(before, task.model.blocks[0].attn.qkv.weight.detach())
    assert task.model(samples[0]["image"][None]).shape == (1, 10)


@pytest.fixture
def tuned(tmp_path: Path) -> tuple[Path, torch.Tensor, torch.Tensor]:
    """A torchgeo checkpoint of a patch-8, 64-px, depth-1 backbone after 2 steps; real inputs and outputs."""
    torch.manual_seed(0)
    enc = create_encoder("vit_test", in_chans=13, img_size=64, patch_size=8, depth=1)
    meta = BackboneMeta(preset="vit_test", img_size=64, patch_size=8, in_chans=13, bands=S2, sensor="s2-l1c",
                        mean=[1000.0] * 13, std=[600.0] * 13, gsd=10.0, encoder_kwargs={"depth": 1})
    task = torchgeo_classification_task(save_backbone(enc, tmp_path / "b.safetensors", meta), num_classes=10)
    data = SceneFolder(EUROSAT / "test", bands=S2)
    images = torch.stack([(data[i]["image"] - 1000.0) / 600.0 for i in range(16)])
    trainer = L.Trainer(accelerator="cpu", max_steps=2, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(task, DataLoader([{"image": x, "label": 0} for x in images], batch_size=4))  # 2 of 4
    trainer.save_checkpoint(tmp_path / "tg.ckpt")
    torch.save(images, tmp_path / "images.pt")
    with torch.no_grad():
        return tmp_path / "tg.ckpt", images, task.model.eval()(images)


def test_torchgeo_checkpoint_reloads_from_its_hparams(tuned: tuple[Path, torch.Tensor, torch.Tensor]) -> None:
    from torchgeo.trainers import ClassificationTask

    ckpt, images, expected = tuned
    task = ClassificationTask.load_from_checkpoint(ckpt, map_location="cpu")
    assert task.hparams["model"] == "rsmae_vit_test.img_size=64,patch_size=8,depth=1"
    assert task.model.patch_embed.patch_size == (8, 8) and len(task.model.blocks) == 1
    with torch.no_grad():
        assert torch.equal(task.model.eval()(images), expected)


@pytest.mark.slow
def test_torchgeo_checkpoint_reloads_in_a_fresh_interpreter(tuned: tuple[Path, torch.Tensor, torch.Tensor],
                                                            tmp_path: Path) -> None:
    ckpt, _, expected = tuned
    code = ("import rsmae, torch\n"  # nothing else of rsmae: its models register once timm is imported
            "from torchgeo.trainers import ClassificationTask\n"
            f"task = ClassificationTask.load_from_checkpoint({str(ckpt)!r}, map_location='cpu')\n"
            f"with torch.no_grad(): out = task.model.eval()(torch.load({str(tmp_path / 'images.pt')!r}))\n"
            f"torch.save(out, {str(tmp_path / 'out.pt')!r})\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert torch.equal(torch.load(tmp_path / "out.pt"), expected)
