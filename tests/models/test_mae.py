"""MAE shapes, masking, reconstruction targets and loss, GSD-aware positions, and agreement with the
official MAE code (tiny ViT, real EuroSAT pixels)."""

from __future__ import annotations

import math

import pytest
import torch

from rsmae.models import (
    GroupedPatchEmbed,
    embed_patch_tokens,
    masked_mse,
    patchify,
    sincos_pos_embed_2d,
    unpatchify,
)
from rsmae.models.mae import _take
from tests.conftest import load_script
from tests.models.mae_helpers import bands, fixed_noise, make_mae

# ---------------------------------------------------------------- shapes, masking, targets


@pytest.mark.parametrize("n_bands", [3, 4, 13])
@pytest.mark.parametrize("grouped", [False, True])
def test_shapes_any_band_count(tiles, n_bands, grouped):
    groups = [list(range(0, n_bands, 2)), list(range(1, n_bands, 2))] if grouped else None
    model = make_mae(n_bands, band_groups=groups)
    x = bands(tiles, n_bands)
    out = model(x, noise=fixed_noise(model, 4))
    n, d = 16, 8 * 8 * n_bands
    assert out.pred.shape == out.target.shape == (4, n, d)
    assert out.mask.shape == (4, n) and out.mask.dtype == torch.float32
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    latent, _, ids_restore = model.forward_encoder(x, fixed_noise(model, 4), 0.75)
    assert latent.shape == (4, 1 + 4, 64) and ids_restore.shape == (4, n)
    assert isinstance(model.encoder.patch_embed, GroupedPatchEmbed) == grouped


@pytest.mark.parametrize("ratio", [0.5, 0.75, 0.9])
def test_exact_mask_ratio_and_lowest_noise_visible(tiles, ratio):
    model = make_mae()
    noise = fixed_noise(model, 4)
    out = model(tiles, noise=noise, mask_ratio=ratio)
    keep = int(16 * (1 - ratio))
    assert out.mask.sum(dim=1).tolist() == [16 - keep] * 4
    visible = torch.argsort(noise, dim=1)[:, :keep]
    assert (out.mask.gather(1, visible) == 0).all()


def test_encoder_sees_visible_patches_only(tiles):
    model = make_mae().eval()
    noise = fixed_noise(model, 4)
    latent, mask, _ = model.forward_encoder(tiles, noise, 0.75)
    masked_pixels = unpatchify(mask[..., None].expand(-1, -1, 8 * 8 * 13), 8, 13, (4, 4)).bool()
    changed = torch.where(masked_pixels, torch.randn_like(tiles) * 5, tiles)
    latent2, _, _ = model.forward_encoder(changed, noise, 0.75)
    torch.testing.assert_close(latent2, latent)
    visible_changed = torch.where(masked_pixels, tiles, tiles + 1)
    latent3, _, _ = model.forward_encoder(visible_changed, noise, 0.75)
    assert not torch.allclose(latent3, latent)


def test_encoder_matches_timm_on_visible_tokens(tiles):
    model = make_mae().eval()
    enc, noise = model.encoder, fixed_noise(model, 4)
    latent, _, _ = model.forward_encoder(tiles, noise, 0.75)
    full = enc._pos_embed(enc.patch_embed(tiles))  # timm: cls + all patches + position table
    keep = torch.cat([torch.zeros(4, 1, dtype=torch.long), 1 + noise.argsort(1)[:, :4]], dim=1)
    expected = enc.norm(enc.blocks(_take(full, keep)))
    torch.testing.assert_close(latent, expected)


def test_visible_embedding_matches_full_embed_and_gather(tiles):
    model = make_mae().eval()
    noise = fixed_noise(model, 4)
    fast = model(tiles, noise=noise).loss

    class OpaqueEmbed(type(model.encoder.patch_embed)):
        """Same weights, but not recognised: forces embed-everything-then-gather."""

    model.encoder.patch_embed.__class__ = OpaqueEmbed
    assert embed_patch_tokens(model.encoder.patch_embed, tiles, noise.argsort(1)[:, :4]) is None
    torch.testing.assert_close(model(tiles, noise=noise).loss, fast)


def test_loss_counts_masked_patches_only(tiles):
    model = make_mae()
    out = model(tiles, noise=fixed_noise(model, 4))
    pix = unpatchify(out.mask[..., None].expand(-1, -1, 8 * 8 * 13), 8, 13, (4, 4)).bool()
    base = model.loss(tiles, out.pred, out.mask)
    torch.testing.assert_close(base, out.loss)
    visible_changed = torch.where(pix, tiles, torch.randn_like(tiles))
    torch.testing.assert_close(model.loss(visible_changed, out.pred, out.mask), base)
    masked_changed = torch.where(pix, torch.randn_like(tiles), tiles)
    assert not torch.isclose(model.loss(masked_changed, out.pred, out.mask), base)


def test_norm_pix_target_by_hand(tiles):
    model = make_mae()
    target = model.target(tiles)
    b, i, j = 2, 1, 3  # sample, patch row, patch column
    patch = tiles[b, :, i * 8 : (i + 1) * 8, j * 8 : (j + 1) * 8]  # (C, P, P)
    values = [float(patch[c, p, q]) for p in range(8) for q in range(8) for c in range(13)]
    mean = sum(values) / len(values)
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    expected = torch.tensor([(v - mean) / math.sqrt(var + 1e-6) for v in values])
    torch.testing.assert_close(target[b, i * 4 + j], expected, atol=1e-5, rtol=1e-5)
    raw = make_mae(norm_pix_loss=False).target(tiles)
    torch.testing.assert_close(raw[b, i * 4 + j], torch.tensor(values))


def test_patchify_round_trip_13_bands_non_square():
    x = torch.randn(2, 13, 24, 40)
    p = patchify(x, 8)
    assert p.shape == (2, 15, 8 * 8 * 13)
    torch.testing.assert_close(p[1, 6, :13], x[1, :, 8, 8])  # patch (1, 1), pixel (0, 0)
    torch.testing.assert_close(unpatchify(p, 8, 13, (3, 5)), x, rtol=0, atol=0)
    with pytest.raises(ValueError, match="grid"):
        unpatchify(p, 8, 12, (3, 5))


def test_masked_mse_weights():
    pred, target = torch.zeros(1, 3, 2), torch.tensor([[[1.0, 1.0], [2.0, 2.0], [9.0, 9.0]]])
    assert masked_mse(pred, target, torch.tensor([[1.0, 1.0, 0.0]])).item() == pytest.approx(2.5)


# ---------------------------------------------------------------- GSD-aware positions


def test_gsd_position_embedding(tiles):
    model = make_mae(gsd_pos_embed=True, reference_gsd=10.0)
    noise = fixed_noise(model, 4)
    fixed = model(tiles, noise=noise).loss
    ref = model(tiles, noise=noise, gsd=torch.full((4,), 10.0)).loss
    torch.testing.assert_close(ref, fixed)  # per-sample tables at the reference gsd: the fixed one
    coarse = model(tiles, noise=noise, gsd=torch.tensor([10.0, 10.0, 60.0, 30.0]))
    assert coarse.loss.item() != fixed.item()
    pred0 = model(tiles, noise=noise).pred
    torch.testing.assert_close(coarse.pred[:2], pred0[:2])  # per sample: gsd 10 rows unchanged
    assert not torch.allclose(coarse.pred[2:], pred0[2:])
    table = sincos_pos_embed_2d(4, 4, 64, scale=torch.tensor([1.0, 2.0]))
    torch.testing.assert_close(table[0], model.encoder.pos_embed[0, 1:])
    with pytest.raises(ValueError, match="gsd_pos_embed"):
        make_mae()(tiles, gsd=torch.full((4,), 10.0))
    with pytest.raises(ValueError, match="positive"):
        model(tiles, gsd=torch.tensor([10.0, 0.0, 10.0, 10.0]))


def test_matches_official_mae_code_path(tiles):
    """Same weights and noise give the official MAE's loss (benchmarks/official_mae.py)."""
    official_mae = load_script("benchmarks/official_mae.py")
    ours = make_mae()
    official = official_mae.OfficialMAE(
        img_size=32,
        patch_size=8,
        in_chans=13,
        embed_dim=64,
        depth=2,
        num_heads=2,
        decoder_dim=32,
        decoder_depth=1,
        decoder_heads=2,
    )
    state = {k.removeprefix("encoder."): v for k, v in ours.state_dict().items()}
    assert official.load_state_dict(state, strict=False).missing_keys == ["decoder_pos_embed"]
    noise = fixed_noise(ours, 4)
    loss, pred, mask = official(tiles, 0.75, noise)
    out = ours(tiles, noise=noise)
    torch.testing.assert_close(out.mask, mask)
    torch.testing.assert_close(out.pred, pred)
    torch.testing.assert_close(out.loss, loss)
