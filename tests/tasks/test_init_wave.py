"""A DOFA state dict (torchgeo's keys) given as ``init_backbone`` starts an any-sensor pretraining task."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.testing import assert_close

from rsmae.bands import get_sensor
from rsmae.errors import WeightsError
from rsmae.models.layers import sincos_pos_embed_2d
from rsmae.models.registry import load_weights
from rsmae.tasks import PretrainTask
from rsmae.tasks.init import backbone_kind

dofa_mod = pytest.importorskip("torchgeo.models.dofa")

BANDS = list(get_sensor("s2-l1c").names)
INFO = {"bands": BANDS, "sensor": "s2-l1c", "mean": [1000.0] * 13, "std": [500.0] * 13, "gsd": 10.0,
        "tile_size": 32}


@pytest.fixture(scope="module")
def dofa_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """torchgeo's DOFA at a tiny size (64 wide, 2 blocks, 8-px patches: the vit_test preset)."""
    torch.manual_seed(0)
    model = dofa_mod.DOFA(num_classes=10, img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=2)
    with torch.no_grad():
        model.pos_embed[0, 1:] = sincos_pos_embed_2d(4, 4, 64)
    path = tmp_path_factory.mktemp("dofa") / "dofa_tiny.pth"
    torch.save(model.state_dict(), path)
    return path


def _task(path: Path, patch_embed: str = "spectral") -> PretrainTask:
    kwargs = {"spectral_embed": {"rank": 128}} if patch_embed == "spectral" else None
    return PretrainTask(preset="vit_test", patch_size=8, img_size=32, in_chans=13, patch_embed=patch_embed,
                        encoder_kwargs=kwargs, data_info=INFO, init_backbone=str(path))


def test_a_dofa_file_starts_a_spectral_task(dofa_file: Path) -> None:
    assert backbone_kind(dofa_file) == "dofa"
    encoder = _task(dofa_file).model.encoder.eval()
    state = torch.load(dofa_file, weights_only=True)
    for key in ("cls_token", "blocks.0.attn.qkv.weight", "blocks.1.mlp.fc2.bias"):
        assert_close(encoder.state_dict()[key], state[key], rtol=0, atol=0)
    loaded = load_weights(dofa_file, "dofa", bands=BANDS, sensor="s2-l1c", img_size=32, patch_size=8,
                          encoder_kwargs={"spectral_embed": {"rank": 128}}).eval()
    x = torch.randn(2, 13, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert_close(encoder.forward_features(x), loaded.forward_features(x), rtol=1e-5, atol=1e-5)


def test_a_dofa_file_cannot_start_a_fixed_band_task(dofa_file: Path) -> None:
    with pytest.raises(WeightsError, match=r"dofa_tiny\.pth: dofa weights .*patch_embed: spectral"):
        _task(dofa_file, patch_embed="conv")
