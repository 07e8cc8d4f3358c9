"""Tests of the encoder factory, patch embeddings, MAE and RC-MAE (tiny ViT, real EuroSAT pixels)."""

from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from timm.layers import Attention
from torch.nn.attention import SDPBackend, sdpa_kernel

from rsmae.errors import BandError
from rsmae.models import (
    ENCODER_PRESETS,
    RCMAE,
    GroupedPatchEmbed,
    MaskedAutoencoder,
    create_encoder,
    embed_patch_tokens,
    fused_attention_pays,
    mae_decoder_defaults,
    masked_mse,
    patchify,
    set_fused_attention,
    sincos_pos_embed_2d,
    teacher_momentum,
    unpatchify,
)
from rsmae.models.mae import _take

EUROSAT = Path(__file__).resolve().parents[2] / "shared" / "data" / "eurosat_ms_subset"
RGB = [3, 2, 1]  # EuroSAT file order: B01..B12, B8A
RGBN = [3, 2, 1, 7]
S2_GROUPS = [[1, 2, 3, 7], [4, 5, 6, 10, 11, 12], [0, 8, 9]]  # 10 m, 20 m, 60 m bands


@pytest.fixture(scope="module")
def tiles() -> torch.Tensor:
    """Four real 13-band EuroSAT tiles, standardised per band, cropped to 32 px."""
    rasterio = pytest.importorskip("rasterio")
    files = sorted(EUROSAT.glob("train/*/*.tif"))[::50][:4]
    if len(files) < 4:
        pytest.skip(f"EuroSAT subset not found under {EUROSAT}")
    arrays = []
    for f in files:
        with rasterio.open(f) as src:
            arrays.append(src.read().astype(np.float32))
    x = torch.from_numpy(np.stack(arrays))[..., :32, :32]
    mean = x.mean(dim=(0, 2, 3), keepdim=True)
    std = x.std(dim=(0, 2, 3), keepdim=True)
    return (x - mean) / (std + 1e-6)


def make_mae(in_chans: int = 13, img_size: int = 32, patch_size: int = 8, **kwargs) -> MaskedAutoencoder:
    torch.manual_seed(0)
    groups = kwargs.pop("band_groups", None)
    enc = create_encoder(
        "vit_test", in_chans=in_chans, img_size=img_size, patch_size=patch_size, band_groups=groups
    )
    return MaskedAutoencoder(enc, **{**mae_decoder_defaults("vit_test"), **kwargs})


def bands(tiles: torch.Tensor, n: int) -> torch.Tensor:
    return {13: tiles, 4: tiles[:, RGBN], 3: tiles[:, RGB]}[n]


def fixed_noise(model: MaskedAutoencoder, batch: int, seed: int = 0) -> torch.Tensor:
    return model.make_noise(batch, generator=torch.Generator().manual_seed(seed))


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


# ---------------------------------------------------------------- attention, functional, HVP


def test_attention_uses_fused_sdpa(tiles, monkeypatch):
    model = make_mae()
    attns = [m for m in model.modules() if isinstance(m, Attention)]
    assert len(attns) == 3 and all(a.fused_attn for a in attns)
    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def counting(*args, **kwargs):
        calls.append(1)
        return sdpa(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counting)
    model(tiles, noise=fixed_noise(model, 4))
    assert len(calls) == 3


def test_math_attention_switch_gives_the_same_loss_and_gradients(tiles, monkeypatch):
    model = make_mae().double()
    x, noise = tiles.double(), fixed_noise(model, 4).double()
    trainable = [p for p in model.parameters() if p.requires_grad]
    fused = model(x, noise=noise).loss
    fused_grads = torch.autograd.grad(fused, trainable, allow_unused=True)
    assert set_fused_attention(model, False) == 3  # 2 encoder blocks + 1 decoder block
    calls = []
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", lambda *a, **k: calls.append(1))
    plain = model(x, noise=noise).loss
    plain_grads = torch.autograd.grad(plain, trainable, allow_unused=True)
    assert not calls
    torch.testing.assert_close(plain, fused)
    for a, b in zip(plain_grads, fused_grads, strict=True):
        if a is not None:
            torch.testing.assert_close(a, b)
    assert fused_attention_pays("cuda") and not fused_attention_pays("cpu")


def test_deterministic_with_explicit_noise(tiles):
    model = make_mae()
    noise = fixed_noise(model, 4)
    a, b = model(tiles, noise=noise).loss, model(tiles, noise=noise).loss
    assert a.item() == b.item()
    assert model(tiles, noise=fixed_noise(model, 4, seed=1)).loss.item() != a.item()


def test_functional_call_matches_and_leaves_module_alone(tiles):
    model = make_mae()
    noise = fixed_noise(model, 4)
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    loss = torch.func.functional_call(model, params, (tiles,), {"noise": noise}).loss
    torch.testing.assert_close(loss, model(tiles, noise=noise).loss)
    shifted = {k: v + 0.05 * torch.randn_like(v) for k, v in params.items()}
    loss2 = torch.func.functional_call(model, shifted, (tiles,), {"noise": noise}).loss
    assert not torch.isclose(loss2, loss)
    for k, v in model.named_parameters():
        assert torch.equal(v, params[k]), k


def test_hessian_vector_product_under_math_kernel(tiles):
    model = make_mae().double()
    x, noise = tiles[:2].double(), fixed_noise(model, 2).double()
    theta = {k: p.detach() for k, p in model.named_parameters()}
    names = [k for k, p in model.named_parameters() if p.requires_grad]
    torch.manual_seed(1)
    v = [torch.randn_like(theta[k]) for k in names]

    def grad_at(step, create_graph=False):
        free = [(theta[k] + step * vk).requires_grad_() for k, vk in zip(names, v, strict=True)]
        params = {**theta, **dict(zip(names, free, strict=True))}
        loss = torch.func.functional_call(model, params, (x,), {"noise": noise}).loss
        return free, torch.autograd.grad(loss, free, create_graph=create_graph)

    def dot(a, b):
        return sum((ai * bi).sum() for ai, bi in zip(a, b, strict=True))

    eps = 1e-7  # the loss is far from quadratic along a random v: keep eps small
    with sdpa_kernel(SDPBackend.MATH):
        free, g = grad_at(0.0, create_graph=True)
        vhv = dot(torch.autograd.grad(dot(g, v), free), v)
        fd = dot([(a - b) / (2 * eps) for a, b in zip(grad_at(eps)[1], grad_at(-eps)[1], strict=True)], v)
    assert torch.isfinite(vhv)
    torch.testing.assert_close(vhv, fd, rtol=1e-4, atol=1e-6)


def test_gradient_step_lowers_loss(tiles):
    model = make_mae()
    noise = fixed_noise(model, 4)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    first = model(tiles, noise=noise).loss
    for _ in range(5):
        opt.zero_grad()
        loss = model(tiles, noise=noise).loss
        loss.backward()
        opt.step()
    assert model(tiles, noise=noise).loss.item() < 0.95 * first.item()
    assert model.encoder.pos_embed.grad is None  # fixed sin-cos table stays fixed


# ---------------------------------------------------------------- GSD-aware positions


def test_gsd_position_embedding(tiles):
    model = make_mae(gsd_pos_embed=True, reference_gsd=10.0)
    noise = fixed_noise(model, 4)
    fixed = model(tiles, noise=noise).loss
    ref = model(tiles, noise=noise, gsd=torch.full((4,), 10.0)).loss
    assert ref.item() == fixed.item()
    coarse = model(tiles, noise=noise, gsd=torch.tensor([10.0, 10.0, 60.0, 30.0]))
    assert coarse.loss.item() != fixed.item()
    pred0 = model(tiles, noise=noise).pred
    torch.testing.assert_close(coarse.pred[:2], pred0[:2])  # per sample: gsd 10 rows unchanged
    assert not torch.allclose(coarse.pred[2:], pred0[2:])
    table = sincos_pos_embed_2d(4, 4, 64, scale=torch.tensor([1.0, 2.0]))
    torch.testing.assert_close(table[0], model.encoder.pos_embed[0, 1:], rtol=0, atol=0)
    with pytest.raises(ValueError, match="gsd_pos_embed"):
        make_mae()(tiles, gsd=torch.full((4,), 10.0))
    with pytest.raises(ValueError, match="positive"):
        model(tiles, gsd=torch.tensor([10.0, 0.0, 10.0, 10.0]))


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


# ---------------------------------------------------------------- RC-MAE


def test_teacher_momentum_schedule():
    total = 1000
    values = [teacher_momentum(s, total) for s in range(0, total + 1, 50)]
    assert values[0] == pytest.approx(0.996) and values[-1] == pytest.approx(1.0)
    assert all(b >= a for a, b in zip(values, values[1:], strict=False)) and values[1] > values[0]
    assert teacher_momentum(500, 1000) == pytest.approx(0.998)
    assert teacher_momentum(250, 1000) == pytest.approx(1 - 0.004 * (math.cos(math.pi / 4) + 1) / 2)
    assert teacher_momentum(-5, total) == pytest.approx(0.996)
    assert teacher_momentum(5 * total, total) == 1.0
    # global step: step 1500 of a 2000-step run is late in the run, not the start of epoch 2
    assert teacher_momentum(1500, 2000) > teacher_momentum(500, 2000)
    assert teacher_momentum(0, 10, base=0.99) == pytest.approx(0.99)
    with pytest.raises(ValueError, match="total_steps"):
        teacher_momentum(0, 0)


def test_rcmae_teacher_frozen_and_consistent_at_init(tiles):
    rc = RCMAE(make_mae(), consistency_weight=0.5)
    noise = fixed_noise(rc.student, 4)
    out = rc(tiles, noise=noise)
    assert out.consistency_loss is not None and out.consistency_loss.item() == 0.0
    torch.testing.assert_close(out.loss, out.recon_loss)
    out.loss.backward()
    assert all(p.grad is None and not p.requires_grad for p in rc.teacher.parameters())
    assert all(p.grad is not None for p in rc.student.parameters() if p.requires_grad)
    assert any(k.startswith("teacher.") for k in rc.state_dict())
    assert rc.train().student.training and not rc.teacher.training
    with torch.no_grad():
        rc.student.decoder_pred.bias.add_(0.1)
    out = rc(tiles, noise=noise)
    assert out.consistency_loss.item() == pytest.approx(0.01, rel=1e-4)
    torch.testing.assert_close(out.loss, out.recon_loss + 0.5 * out.consistency_loss)


def test_rcmae_ema_update_math():
    rc = RCMAE(make_mae())
    with torch.no_grad():
        for p in rc.student.parameters():
            p.add_(torch.randn_like(p))
        rc.student.decoder_pos_embed.mul_(2.0)
    before = {k: v.clone() for k, v in rc.teacher.named_parameters()}
    student = dict(rc.student.named_parameters())
    rc.update_teacher(0.9)
    for k, t in rc.teacher.named_parameters():
        torch.testing.assert_close(t, 0.9 * before[k] + 0.1 * student[k])
    torch.testing.assert_close(rc.teacher.decoder_pos_embed, rc.student.decoder_pos_embed)
    rc.update_teacher(1.0)
    for k, t in rc.teacher.named_parameters():
        torch.testing.assert_close(t, 0.9 * before[k] + 0.1 * student[k])
    rc.update_teacher(0.0)
    assert all(torch.equal(t, student[k]) for k, t in rc.teacher.named_parameters())
    with pytest.raises(ValueError, match="momentum"):
        rc.update_teacher(1.5)


def test_rcmae_same_mask_for_teacher(tiles):
    rc = RCMAE(make_mae())
    with torch.no_grad():
        for p in rc.teacher.parameters():
            p.add_(0.01 * torch.randn_like(p))
    noise = fixed_noise(rc.student, 4)
    a = rc(tiles, noise=noise)
    b = rc(tiles, noise=noise)
    assert a.loss.item() == b.loss.item() and a.consistency_loss.item() > 0
    latent, _, restore = rc.teacher.forward_encoder(tiles, noise, 0.75)
    teacher_pred = rc.teacher.forward_decoder(latent, restore)
    torch.testing.assert_close(a.consistency_loss, masked_mse(a.pred, teacher_pred, a.mask))


def test_matches_official_mae_code_path(tiles):
    """Same weights and noise give the official MAE's loss (benchmarks/official_mae.py)."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "official_mae.py"
    spec = importlib.util.spec_from_file_location("official_mae", path)
    official_mae = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(official_mae)
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
