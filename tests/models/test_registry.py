"""The weights registry: register by file or by a backbone's metadata, load by name, hash checked."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.testing import assert_close

from rsmae.bands import get_sensor
from rsmae.errors import WeightsError
from rsmae.models import (
    BackboneMeta,
    create_encoder,
    get_weights,
    list_weights,
    load_backbone,
    register_backbone,
    register_weights,
    save_backbone,
)
from rsmae.models.registry import sha256_file

L1C = list(get_sensor("s2-l1c").names)


@pytest.fixture
def backbone(tmp_path: Path) -> Path:
    enc = create_encoder("vit_test", in_chans=13, img_size=32, patch_size=8)
    with torch.no_grad():
        enc.blocks[0].attn.qkv.weight.add_(1.0)  # not the default init
    meta = BackboneMeta(preset="vit_test", img_size=32, patch_size=8, in_chans=13, bands=L1C, sensor="s2-l1c",
                        mean=[1000.0 + i for i in range(13)], std=[500.0] * 13, gsd=10.0, gsd_pos_embed=True)
    return save_backbone(enc, tmp_path / "mae-test.safetensors", meta)


def test_register_backbone_and_load_by_name(backbone: Path) -> None:
    entry = register_backbone(backbone, overwrite=True)
    assert entry.name == "mae-test" and "mae-test" in list_weights()
    assert entry.bands == tuple(L1C) and entry.mean[0] == 1000.0 and entry.sha256 == sha256_file(backbone)
    assert entry.transforms["gsd_pos_embed"] is True
    loaded = get_weights("mae-test").load()
    x = torch.randn(2, 13, 32, 32)
    assert_close(loaded.eval()(x), load_backbone(backbone).eval()(x))
    rgb = get_weights("mae-test").load(bands=["B04", "B03", "B02"])  # adapted by band name
    assert rgb.rsmae_meta.in_chans == 3


def test_hash_is_checked_with_the_file_named(backbone: Path) -> None:
    register_weights("tampered", backbone, sha256="0" * 64, preset="vit_test", bands=L1C, overwrite=True)
    with pytest.raises(WeightsError, match=r"mae-test\.safetensors has sha256 .* expected 0000"):
        get_weights("tampered").load()


def test_registry_errors(backbone: Path) -> None:
    register_weights("remote", "https://example.org/w.safetensors", sha256=None, preset="vit_test",
                     bands=L1C, overwrite=True)
    with pytest.raises(WeightsError, match="never downloads"):
        get_weights("remote").load()
    with pytest.raises(WeightsError, match="registered: .*remote"):
        get_weights("no-such-weights")
    with pytest.raises(WeightsError, match="already registered"):
        register_weights("remote", backbone, sha256=None, preset="vit_test", bands=L1C)
    with pytest.raises(WeightsError, match="unknown format"):
        register_weights("x", backbone, sha256=None, preset="vit_test", bands=L1C, format="onnx")


def test_foreign_entry_loads_through_its_loader(tmp_path: Path) -> None:
    """A torchgeo-layout file registered with its bands loads (and adapts) like load_torchgeo_vit."""
    enc = create_encoder("vit_test", in_chans=13, img_size=32, patch_size=8)
    path = tmp_path / "tg.pth"
    torch.save(enc.state_dict(), path)
    register_weights("tg", path, sha256=sha256_file(path), preset="vit_test", bands=L1C, sensor="s2-l1c",
                     mean=[0.0] * 13, std=[10000.0] * 13, transforms={"divide": 10000}, format="torchgeo",
                     overwrite=True)
    model = get_weights("tg").load(img_size=32)
    assert_close(model.patch_embed.proj.weight, enc.patch_embed.proj.weight)


def test_one_table_of_weights_formats_and_one_spelling(backbone: Path) -> None:
    """Registry, init and import choose loaders from WEIGHTS_FORMATS; "official_mae" is "mae", deprecated."""
    from rsmae.models.registry import FORMATS, WEIGHTS_FORMATS, load_weights, weights_format

    assert FORMATS == ("rsmae", "mae", "timm", "torchgeo", "dofa", "copernicusfm", "rsmae_spectral")
    assert weights_format("mae") is WEIGHTS_FORMATS["mae"]
    with pytest.deprecated_call(match="'official_mae' is deprecated"):
        assert weights_format("official_mae") is WEIGHTS_FORMATS["mae"]
    with pytest.deprecated_call():
        entry = register_weights("old-spelling", backbone, sha256=None, preset="vit_test", bands=L1C,
                                 format="official_mae", overwrite=True)
    assert entry.format == "mae"
    with pytest.raises(WeightsError, match="unknown format 'onnx'"):
        load_weights(backbone, "onnx")
    assert_close(load_weights(backbone, "rsmae", patch_size=4).patch_embed.proj.weight,
                 get_weights(register_backbone(backbone, name="b", overwrite=True).name).load()
                 .patch_embed.proj.weight)  # an rsmae file keeps its own patch size
