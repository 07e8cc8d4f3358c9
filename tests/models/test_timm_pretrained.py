"""An rsmae backbone loaded through timm keeps what it was trained with: patch size, band count, encoder
arguments, bands and statistics; a timm name's tag rebuilds an architecture from the name alone
(real EuroSAT pixels, tiny ViT)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import timm
import torch

from rsmae.bands import get_sensor
from rsmae.errors import ModelConfigError, WeightsError
from rsmae.models import BackboneMeta, MaskedAutoencoder, create_encoder, load_backbone, save_backbone
from rsmae.models import timm_model_name as name_of
from tests.conftest import EUROSAT

S2 = list(get_sensor("s2-l1c").names)
IMG, PATCH = 32, 8  # not the factory's defaults (128 px, patch 16)


@pytest.fixture(scope="module")
def raw() -> torch.Tensor:
    """Four real 13-band EuroSAT tiles in digital numbers, cropped to 32 px."""
    rasterio = pytest.importorskip("rasterio")
    files = sorted(EUROSAT.glob("train/*/*.tif"))[::50][:4]
    arrays = []
    for f in files:
        with rasterio.open(f) as src:
            arrays.append(src.read().astype(np.float32)[:, :IMG, :IMG])
    return torch.from_numpy(np.stack(arrays))


def _backbone(path: Path, raw: torch.Tensor, **encoder_kwargs: object) -> tuple[Path, torch.nn.Module]:
    torch.manual_seed(0)
    enc = create_encoder("vit_test", in_chans=13, img_size=IMG, patch_size=PATCH, **encoder_kwargs).eval()
    meta = BackboneMeta(preset="vit_test", img_size=IMG, patch_size=PATCH, in_chans=13, bands=S2,
                        sensor="s2-l1c", mean=raw.mean(dim=(0, 2, 3)).tolist(),
                        std=raw.std(dim=(0, 2, 3)).tolist(), gsd=10.0, encoder_kwargs=dict(encoder_kwargs))
    return save_backbone(enc, path, meta), enc


def _timm(path: Path, name: str = "rsmae_vit_test", **kwargs: object) -> torch.nn.Module:
    return timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": str(path)}, **kwargs)


def test_timm_keeps_the_files_patch_size_bands_and_statistics(tmp_path: Path, raw: torch.Tensor) -> None:
    path, enc = _backbone(tmp_path / "b.safetensors", raw)
    model = _timm(path).eval()  # no in_chans, img_size or patch_size given
    assert model.patch_embed.patch_size == (PATCH, PATCH) and model.patch_embed.img_size == (IMG, IMG)
    assert model.patch_embed.proj.in_channels == 13
    meta = load_backbone(path).rsmae_meta
    x = (raw - torch.tensor(meta.mean)[:, None, None]) / torch.tensor(meta.std)[:, None, None]
    torch.testing.assert_close(model(x), enc(x))
    assert model.rsmae_meta == meta
    cfg = model.pretrained_cfg
    assert cfg["bands"] == tuple(S2) and cfg["sensor"] == "s2-l1c" and cfg["input_size"] == (13, IMG, IMG)
    assert cfg["mean"] == tuple(meta.mean) and cfg["std"] == tuple(meta.std)
    # timm's own preprocessing, fed the digital numbers, gives the input the encoder was trained on
    transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))
    torch.testing.assert_close(torch.stack([transform(t) for t in raw]), x, rtol=1e-4, atol=1e-4)


def test_an_explicit_patch_size_still_resamples_and_says_so(tmp_path: Path, raw: torch.Tensor) -> None:
    path, _ = _backbone(tmp_path / "b.safetensors", raw)
    model = _timm(path, patch_size=16)
    assert model.patch_embed.patch_size == (16, 16) and model.rsmae_meta.patch_size == 16
    assert model.rsmae_meta.bands == S2


def test_timm_takes_the_files_encoder_arguments(tmp_path: Path, raw: torch.Tensor) -> None:
    groups = [[1, 2, 3, 7], [4, 5, 6, 10, 11, 12], [0, 8, 9]]
    path, enc = _backbone(tmp_path / "b.safetensors", raw, depth=1, band_groups=groups)
    model = _timm(path).eval()
    assert len(model.blocks) == 1 and type(model.patch_embed).__name__ == "GroupedPatchEmbed"
    x = raw / 1000.0
    torch.testing.assert_close(model(x), enc(x))
    mae = _timm(path, "rsmae_mae_vit_test", mask_ratio=0.5)  # the MAE's encoder too
    assert isinstance(mae, MaskedAutoencoder) and mae.encoder.patch_embed.patch_size == (PATCH, PATCH)
    torch.testing.assert_close(mae.encoder.eval()(x), enc(x))


def test_a_backbone_of_another_preset_is_refused(tmp_path: Path, raw: torch.Tensor) -> None:
    path, _ = _backbone(tmp_path / "b.safetensors", raw)
    with pytest.raises(WeightsError, match=f"{path}: a vit_test backbone.*rsmae_vit_test"):
        _timm(path, "rsmae_vit_tiny")


def test_foreign_files_load_as_before(tmp_path: Path, raw: torch.Tensor) -> None:
    torch.manual_seed(0)
    enc = create_encoder("vit_test", in_chans=13, img_size=IMG, patch_size=PATCH).eval()
    torch.save(enc.state_dict(), tmp_path / "plain.pth")  # a state dict: no metadata, explicit sizes
    model = _timm(tmp_path / "plain.pth", in_chans=13, img_size=IMG, patch_size=PATCH).eval()
    torch.testing.assert_close(model(raw / 1000.0), enc(raw / 1000.0))
    assert not hasattr(model, "rsmae_meta") and model.pretrained_cfg["mean"] == (0.0,) * 13


def test_a_names_tag_rebuilds_the_architecture(tmp_path: Path, raw: torch.Tensor) -> None:
    groups = [[0, 1, 2, 3, 4, 5, 6], [7, 8, 9, 10, 11, 12]]
    name = name_of("vit_test", img_size=IMG, patch_size=PATCH, depth=1, band_groups=groups, qkv_bias=False)
    assert name == ("rsmae_vit_test.img_size=32,patch_size=8,band_groups=[[0,1,2,3,4,5,6],[7,8,9,10,11,12]],"
                    "depth=1,qkv_bias=False")
    model = timm.create_model(name, in_chans=13)
    ref = create_encoder("vit_test", in_chans=13, img_size=IMG, patch_size=PATCH, depth=1, band_groups=groups,
                         qkv_bias=False)
    shapes = {k: v.shape for k, v in ref.state_dict().items()}
    assert {k: v.shape for k, v in model.state_dict().items()} == shapes
    assert model.pretrained_cfg["tag"] == name.split(".", 1)[1]
    untagged = timm.create_model("rsmae_vit_test", in_chans=13)  # the check can fail
    assert {k: v.shape for k, v in untagged.state_dict().items()} != shapes


@pytest.mark.parametrize("tag", ["checkpoint_path='x.pth'", "pretrained_cfg_overlay=dict(file='x')", "x",
                                 "img_size=__import__('os').getpid()", "img_size=32),print(1"])
def test_a_tag_is_data(tag: str) -> None:
    with pytest.raises(ModelConfigError, match=r"timm model rsmae_vit_test\..*key=value pairs"):
        timm.create_model(f"rsmae_vit_test.{tag}", in_chans=13)


def test_names_hold_only_encoder_arguments() -> None:
    with pytest.raises(ModelConfigError, match="'checkpoint_path'"):
        name_of("vit_test", img_size=IMG, patch_size=PATCH, checkpoint_path="x.pth")
    with pytest.raises(ModelConfigError, match="global_pool='a/b'"):
        name_of("vit_test", img_size=IMG, patch_size=PATCH, global_pool="a/b")
