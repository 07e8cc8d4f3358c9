"""The encoder factory: grouped and plain patch embeddings, presets, and input errors
(tiny ViT, real EuroSAT pixels)."""

from __future__ import annotations

import functools

import pytest
import timm
import torch

from rsmae.bands import get_sensor
from rsmae.errors import BandError
from rsmae.models import (
    ENCODER_PRESETS,
    GroupedPatchEmbed,
    MaskedAutoencoder,
    create_encoder,
    embed_patch_tokens,
    mae_decoder_defaults,
)
from rsmae.models.mae import _take
from tests.models.mae_helpers import S2_GROUPS, bands, make_mae

# ---------------------------------------------------------------- patch embeddings


@pytest.mark.parametrize("n_bands,groups", [(13, S2_GROUPS), (4, [[0, 1, 2], [3]]), (3, [[0, 1, 2]])])
def test_grouped_patch_embed(tiles, n_bands, groups):
    x = bands(tiles, n_bands)
    enc = create_encoder("vit_test", in_chans=n_bands, img_size=32, patch_size=8, band_groups=groups)
    pe = enc.patch_embed
    assert isinstance(pe, GroupedPatchEmbed)
    assert (pe.grid_size, pe.num_patches, pe.patch_size) == ((4, 4), 16, (8, 8))
    assert len(pe.projs) == len(groups) and pe.group_embed.std() > 0
    tokens = pe(x)
    assert tokens.shape == (4, 16, 64)
    ids = torch.stack([torch.randperm(16)[:5] for _ in range(4)])
    torch.testing.assert_close(embed_patch_tokens(pe, x, ids), _take(tokens, ids))
    y = x.clone()
    y[:, groups[0][0]] += 1.0  # one band of group 0 moves only the group-0 response
    delta = pe(y) - tokens
    conv0 = pe.projs[0].weight[:, 0].sum(dim=(-1, -2)) / len(groups)
    torch.testing.assert_close(delta, conv0.expand_as(delta), atol=1e-5, rtol=1e-4)
    assert enc.forward_features(x).shape == (4, 17, 64)  # plain timm path works too


def test_grouped_patch_embed_rejects_bad_groups():
    make = functools.partial(GroupedPatchEmbed, img_size=32, patch_size=8, in_chans=4, embed_dim=16)
    with pytest.raises(BandError, match="outside"):
        make(groups=[[0, 1], [4]])
    with pytest.raises(BandError, match="one group"):
        make(groups=[[0, 1], [1, 2]])
    with pytest.raises(BandError, match="empty"):
        make(groups=[[0, 1], []])
    with pytest.raises(BandError, match="4 bands"):
        make(groups=[[0, 1, 2, 3]])(torch.zeros(1, 3, 32, 32))


def test_plain_embed_path_matches_conv(tiles):
    enc = create_encoder("vit_test", in_chans=13, img_size=32, patch_size=8)
    ids = torch.stack([torch.randperm(16)[:4] for _ in range(4)])
    torch.testing.assert_close(
        embed_patch_tokens(enc.patch_embed, tiles, ids), _take(enc.patch_embed(tiles), ids)
    )


# ---------------------------------------------------------------- presets and errors


@pytest.mark.parametrize(
    "preset,millions", [("vit_tiny", 5.52), ("vit_small", 21.67), ("vit_base", 85.80), ("vit_large", 303.30)]
)
def test_presets_build(preset, millions):
    rgb = create_encoder(preset, in_chans=3, img_size=224, patch_size=16, device="meta")
    n = sum(p.numel() for p in rgb.parameters()) / 1e6  # timm's headless ViT-*/16 sizes
    assert n == pytest.approx(millions, abs=0.01)
    enc = create_encoder(preset, in_chans=13, img_size=128, patch_size=16, device="meta")
    mae = MaskedAutoencoder(enc, **mae_decoder_defaults(preset))
    assert mae.num_patches == 64 and mae.in_chans == 13
    assert set(mae_decoder_defaults(preset)) == {"decoder_dim", "decoder_depth", "decoder_heads"}
    assert set(ENCODER_PRESETS) >= {"vit_tiny", "vit_small", "vit_base", "vit_large"}


def test_small_preset_runs(tiles):
    enc = create_encoder("vit_small", in_chans=13, img_size=32, patch_size=16)
    out = MaskedAutoencoder(enc, **mae_decoder_defaults("vit_small"))(tiles)
    assert out.pred.shape == (4, 4, 16 * 16 * 13) and out.mask.sum().item() == 4 * 3


def test_input_errors(tiles):
    model = make_mae()
    with pytest.raises(BandError, match="13 bands"):
        model(tiles[:, :12])
    with pytest.raises(ValueError, match="img_size"):
        model(torch.zeros(1, 13, 64, 64))
    with pytest.raises(ValueError, match="mask_ratio"):
        model(tiles, mask_ratio=1.0)
    with pytest.raises(ValueError, match="make_noise"):
        model(tiles, noise=torch.rand(4, 15))
    with pytest.raises(ValueError, match="mask_ratio"):
        make_mae(mask_ratio=0.0)
    with pytest.raises(ValueError, match="decoder_dim"):
        make_mae(decoder_dim=30)


# ---------------------------------------------------------------- timm registry


def test_presets_are_timm_models(tiles, tmp_path):
    from rsmae.models import BackboneMeta, save_backbone

    names = set(timm.list_models("rsmae_*"))
    assert {f"rsmae_{p}" for p in ENCODER_PRESETS} | {f"rsmae_mae_{p}" for p in ENCODER_PRESETS} <= names
    torch.manual_seed(0)
    enc = create_encoder("vit_test", in_chans=13, img_size=32, patch_size=8)
    ours = timm.create_model("rsmae_vit_test", in_chans=13, img_size=32, patch_size=8, num_classes=0)
    assert type(ours) is type(enc) and not ours.pos_embed.requires_grad
    torch.testing.assert_close(ours.pos_embed, enc.pos_embed)  # the same fixed sin-cos table
    cfg = timm.data.resolve_data_config({}, model=ours)
    assert cfg["mean"] == (0.0,) * 13 and cfg["std"] == (1.0,) * 13  # neutral, never raw DN
    meta = BackboneMeta(preset="vit_test", img_size=32, patch_size=8, in_chans=13,
                        bands=list(get_sensor("s2-l1c").names), sensor="s2-l1c", mean=[1000.0] * 13,
                        std=[500.0] * 13, gsd=10.0)
    path = save_backbone(enc, tmp_path / "b.safetensors", meta)
    loaded = timm.create_model("rsmae_vit_test", in_chans=13, img_size=32, patch_size=8, pretrained=True,
                               pretrained_cfg_overlay={"file": str(path)})
    enc.eval(), loaded.eval()
    torch.testing.assert_close(loaded(tiles), enc(tiles))
    assert not torch.allclose(ours.eval()(tiles), enc(tiles))  # the check can fail
    mae = timm.create_model("rsmae_mae_vit_test", in_chans=13, img_size=32, patch_size=8, pretrained=True,
                            pretrained_cfg_overlay={"file": str(path)}, mask_ratio=0.5)
    assert isinstance(mae, MaskedAutoencoder) and mae.mask_ratio == 0.5
    assert mae.decoder_embed.out_features == mae_decoder_defaults("vit_test")["decoder_dim"]
    torch.testing.assert_close(mae.encoder.eval()(tiles), enc(tiles))


def test_features_only_gives_per_block_maps(tiles):
    feats = timm.create_model("rsmae_vit_test", in_chans=13, img_size=32, patch_size=8, features_only=True)
    assert feats.feature_info.channels() == [64, 64] and feats.feature_info.reduction() == [8, 8]
    maps = feats(tiles)
    assert [tuple(m.shape) for m in maps] == [(4, 64, 4, 4)] * 2  # one NCHW map per block
    assert not torch.allclose(maps[0], maps[1])
    last = timm.create_model("rsmae_vit_small", in_chans=13, img_size=32, features_only=True,
                             out_indices=(-1,))
    assert [tuple(m.shape) for m in last(tiles)] == [(4, 384, 2, 2)]
