"""The wavelength-conditioned patch embedding (issue 24): order, subsets, cache, unknown bands, resizing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors import safe_open
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor
from torch.testing import assert_close

from rsmae.augment import drop_bands
from rsmae.bands import LAYOUTS, get_sensor
from rsmae.errors import BandError, ModelConfigError, WeightsError
from rsmae.models import (
    BackboneMeta,
    SpectralPatchEmbed,
    create_encoder,
    load_backbone,
    read_backbone_meta,
    save_backbone,
    set_bands,
    use_bands,
)
from rsmae.models.spectral_embed import band_spectrum, check_spectral_options, resize_kernels, resize_matrix

L1C = list(get_sensor("s2-l1c").names)
IMG, PATCH, DIM = 32, 8, 64


def _embed(bands: list[str] | None = L1C, **kw: object) -> SpectralPatchEmbed:
    torch.manual_seed(0)
    chans = len(bands) if bands else 3
    return SpectralPatchEmbed(img_size=IMG, patch_size=PATCH, in_chans=chans, embed_dim=DIM, bands=bands,
                              sensor="s2-l1c", **kw)


def _x(c: int = 13, seed: int = 1) -> Tensor:
    return torch.randn(2, c, IMG, IMG, generator=torch.Generator().manual_seed(seed))


def _count_generator_calls(embed: SpectralPatchEmbed) -> list[int]:
    calls = [0]
    embed.hyper.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def test_band_order_does_not_matter() -> None:
    embed, x = _embed(), _x()
    perm = torch.randperm(13, generator=torch.Generator().manual_seed(3)).tolist()
    assert_close(embed(x[:, perm], [L1C[i] for i in perm]), embed(x), rtol=1e-5, atol=1e-5)


def test_subset_is_the_model_fed_only_those_bands() -> None:
    embed, x = _embed(), _x()
    keep = [L1C.index(b) for b in ("B04", "B8A", "B11")]
    sub = [L1C[i] for i in keep]
    tokens = embed(x[:, keep], sub)
    # a band's kernel does not depend on its companions: the tokens are the mean of single-band ones
    single = torch.stack([embed(x[:, [i]], [L1C[i]]) for i in keep]).mean(0)
    assert_close(tokens, single, rtol=1e-5, atol=1e-5)
    # and a model built for those bands alone, with the same weights, gives the same tokens
    other = SpectralPatchEmbed(img_size=IMG, patch_size=PATCH, in_chans=3, embed_dim=DIM, bands=sub,
                               sensor="s2-l1c")
    other.load_state_dict(embed.state_dict())
    assert_close(other(x[:, keep]), tokens, rtol=1e-5, atol=1e-5)
    # a sensor-qualified name is the same band
    assert_close(embed(x[:, keep], ["s2-l2a:B04", "B8A", "s2-l1c:B11"]), tokens)


def test_token_scale_does_not_depend_on_the_band_count(tiles: Tensor) -> None:
    """On real pixels (EuroSAT, standardised) the token std of 1 to 13 bands stays within 1.5x."""
    names = list(LAYOUTS["eurosat"][1])
    embed = _embed(names)
    gen = torch.Generator().manual_seed(0)
    stds = []
    with torch.no_grad():
        for count in (1, 2, 4, 8, 13):
            for _ in range(3):
                idx = torch.randperm(13, generator=gen)[:count].tolist()
                stds.append(embed(tiles[:, idx], [names[i] for i in idx]).std().item())
    assert max(stds) / min(stds) < 1.5, stds


def test_kernels_are_cached_in_eval_and_dropped_after_an_optimizer_step() -> None:
    embed, x = _embed(), _x()
    calls = _count_generator_calls(embed)
    embed.eval()
    with torch.no_grad():
        first = embed(x)
        assert torch.equal(embed(x), first) and calls[0] == 1  # cache hit
        embed(x[:, :3], L1C[:3])
        assert calls[0] == 2  # another band tuple: generated once
        embed(x[:, :3], L1C[:3])
        assert calls[0] == 2
    out = embed(x)  # eval with autograd: nothing cached, gradients reach the generator
    assert calls[0] == 3 and out.requires_grad
    opt = torch.optim.SGD(embed.parameters(), lr=0.1)
    out.square().mean().backward()
    assert embed.to_kernel.weight.grad is not None
    opt.step()
    with torch.no_grad():
        after = embed(x)
    assert calls[0] == 4 and not torch.allclose(after, first)
    embed.train()
    embed.eval()
    with torch.no_grad():
        embed(x)
    assert calls[0] == 5  # train() dropped the cache
    embed.load_state_dict(_embed().state_dict())
    with torch.no_grad():
        assert_close(embed(x), first)  # loading weights (in place) dropped it too
    assert calls[0] == 6


def test_training_mode_never_caches() -> None:
    embed, x = _embed(), _x()
    calls = _count_generator_calls(embed)
    with torch.no_grad():
        embed(x)
        embed(x)
    assert calls[0] == 2


def test_unknown_band_names_the_band_and_how_to_register_it() -> None:
    embed, x = _embed(), _x(3)
    how = r"'SAR_VV' has no wavelength.*rsmae/bands\.py.*register_band_embedding\('SAR_VV'\)"
    with pytest.raises(BandError, match=how):
        embed(x, ["B04", "SAR_VV", "B02"])
    embed.register_band_embedding("SAR_VV")
    tokens = embed(x, ["B04", "SAR_VV", "B02"])
    assert tokens.shape == (2, 16, DIM) and "SAR_VV" in embed.config()["learned_bands"]
    built = _embed(["B04", "SAR_VV", "B02"], learned_bands=["SAR_VV"])
    assert set(built.state_dict()) == set(embed.state_dict())
    with pytest.raises(BandError, match="has a wavelength"):
        embed.register_band_embedding("B8A")
    with pytest.raises(BandError, match="repeat"):
        embed(x, ["B04", "B4", "B02"])  # B4 is B04
    with pytest.raises(BandError, match="3 channels"):
        embed(x, L1C)
    with pytest.raises(BandError, match="needs the band names"):
        _embed(None)(x)


def test_band_names_resolve_through_the_registry() -> None:
    assert band_spectrum("B04", "s2-l1c") == pytest.approx((0.6646, 0.031))
    assert band_spectrum("landsat-oli:B4") == pytest.approx((0.6546, 0.037))
    assert band_spectrum("B8A") == pytest.approx((0.8647, 0.021))  # one meaning in every sensor
    assert band_spectrum("rgb:R") == pytest.approx((0.640, 0.100))  # no bandwidth: the default
    assert band_spectrum("DEM") is None
    with pytest.raises(BandError, match="means different bands.*'<sensor>:B02'"):
        band_spectrum("B02")  # blue in Sentinel-2 and OLI, green in TM
    with pytest.raises(BandError, match="unknown sensor"):
        band_spectrum("modis:B01")


def test_options_are_plain_data() -> None:
    options = {"rank": 8, "learned_bands": ["DEM"]}
    assert check_spectral_options(options) == options
    with pytest.raises(ModelConfigError, match="'embed_layer' refused"):
        check_spectral_options({"embed_layer": "x"})
    with pytest.raises(ModelConfigError, match="positive integer"):
        check_spectral_options({"rank": True})


def test_resized_kernels_keep_the_tokens_of_resized_patches() -> None:
    gen = torch.Generator().manual_seed(0)
    kernels = torch.randn(5, 8, 8, generator=gen, dtype=torch.float64)
    patch = torch.randn(8, 8, generator=gen, dtype=torch.float64)

    def resized(p: Tensor, size: int) -> Tensor:
        return F.interpolate(p[None, None], size=(size, size), mode="bilinear", align_corners=False)[0, 0]

    token = (kernels * patch).sum((-2, -1))
    up = resize_kernels(kernels, 12)
    assert up.shape == (5, 12, 12)
    assert_close((up * resized(patch, 12)).sum((-2, -1)), token)  # enlarging: exact
    smooth = resized(torch.randn(4, 4, generator=gen, dtype=torch.float64), 8)  # a smooth patch
    down = resize_kernels(kernels, 6)
    rel = ((down * resized(smooth, 6)).sum((-2, -1)) - (kernels * smooth).sum((-2, -1))).norm()
    assert rel / (kernels * smooth).sum((-2, -1)).norm() < 0.3
    assert resize_matrix(8, 12).shape == (144, 64)
    assert resize_kernels(kernels, 8) is kernels


def test_another_patch_size_resizes_the_generated_kernels() -> None:
    base = _embed()
    embed = SpectralPatchEmbed(img_size=IMG, patch_size=4, in_chans=13, embed_dim=DIM, bands=L1C,
                               sensor="s2-l1c", kernel_size=PATCH)
    embed.load_state_dict(base.state_dict())
    kernels, _ = embed.band_kernels(L1C[:2])
    assert_close(kernels, resize_kernels(base.band_kernels(L1C[:2])[0], 4))
    assert embed(_x()).shape == (2, 64, DIM)
    embed.set_input_size(patch_size=16)
    assert embed.grid_size == (2, 2) and embed(_x()).shape == (2, 4, DIM)


# ---------------------------------------------------------------- band dropout


def test_band_dropout_never_empties_and_follows_the_generator() -> None:
    x = _x()
    seen = set()
    for seed in range(200):
        kept, names = drop_bands(x, L1C, torch.Generator().manual_seed(seed))
        assert 1 <= len(names) == kept.shape[1] <= 13 and list(names) == sorted(names, key=L1C.index)
        assert torch.equal(kept, x[:, [L1C.index(n) for n in names]])
        seen.add(len(names))
    assert seen == set(range(1, 14))  # every count, from one band to all
    again = [drop_bands(x, L1C, torch.Generator().manual_seed(7))[1] for _ in range(2)]
    assert again[0] == again[1]
    one = drop_bands(x[:, :1], L1C[:1], torch.Generator().manual_seed(0), p_keep_max=0.0)[1]
    assert one == ("B01",)  # a single band is always kept
    for seed in range(20):
        names = drop_bands(x, L1C, torch.Generator().manual_seed(seed), p_keep_min=0.5, p_keep_max=0.7)[1]
        assert 7 <= len(names) <= 9
    with pytest.raises(BandError, match="one name per channel"):
        drop_bands(x, L1C[:3])
    with pytest.raises(ValueError, match="p_keep_min"):
        drop_bands(x, L1C, p_keep_min=0.8, p_keep_max=0.2)


# ---------------------------------------------------------------- the encoder and its backbone file


def _encoder(**kw: object) -> VisionTransformer:
    torch.manual_seed(0)
    return create_encoder("vit_test", in_chans=13, img_size=IMG, patch_size=PATCH, patch_embed="spectral",
                          bands=L1C, sensor="s2-l1c", **kw).eval()


def _meta(**kw: object) -> BackboneMeta:
    stats = {"mean": [float(i) for i in range(13)], "std": [1.0 + i for i in range(13)]}
    return BackboneMeta(preset="vit_test", img_size=IMG, patch_size=PATCH, in_chans=13, bands=L1C,
                        sensor="s2-l1c", gsd=10.0, **{**stats, **kw})


def test_spectral_encoder_takes_any_bands_per_batch() -> None:
    enc, x = _encoder(), _x()
    assert isinstance(enc.patch_embed, SpectralPatchEmbed) and enc(x).shape == (2, 64)
    rgb = ["B4", "B3", "B2"]
    with use_bands(enc, rgb, sensor="landsat-oli") as model:
        assert model.forward_features(x[:, :3]).shape == (2, 17, 64)
        assert enc.patch_embed.bands == tuple(rgb) and enc.patch_embed.sensor == "landsat-oli"
    assert enc.patch_embed.bands == tuple(L1C) and enc.patch_embed.sensor == "s2-l1c"  # restored
    with pytest.raises(BandError, match="3 channels"):
        enc(x[:, :3])
    with pytest.raises(ModelConfigError, match="options of patch_embed='spectral'"):
        create_encoder("vit_test", in_chans=3, img_size=IMG, patch_size=PATCH, bands=rgb)
    with pytest.raises(ModelConfigError, match="unknown patch_embed 'wave'"):
        create_encoder("vit_test", in_chans=3, img_size=IMG, patch_size=PATCH, patch_embed="wave")
    with pytest.raises(ModelConfigError, match="no spectral patch embedding"):
        set_bands(create_encoder("vit_test", in_chans=3, img_size=IMG, patch_size=PATCH), rgb)


def test_backbone_round_trip_loads_on_other_bands(tmp_path: Path) -> None:
    enc, x = _encoder(spectral_embed={"rank": 16, "learned_bands": ["DEM"]}), _x()
    path = save_backbone(enc, tmp_path / "spectral.safetensors", _meta())
    saved = read_backbone_meta(path)
    assert (saved.patch_embed, saved.format_version) == ("spectral", 3)
    assert saved.encoder_kwargs["spectral_embed"]["learned_bands"] == ["DEM"]
    same = load_backbone(path)
    assert torch.equal(same(x), enc(x))

    oli = load_backbone(path, bands=["B4", "B3", "B2", "DEM"], sensor="landsat-oli")
    with use_bands(enc, ["landsat-oli:B4", "landsat-oli:B3", "landsat-oli:B2", "DEM"]):
        assert_close(oli(x[:, :4]), enc(x[:, :4]))
    assert oli.rsmae_meta.bands == ["B4", "B3", "B2", "DEM"] and oli.rsmae_meta.mean is None  # other sensor

    sub = load_backbone(path, bands=["B8A", "B02"])  # same sensor: statistics follow the bands
    assert (sub.rsmae_meta.mean, sub.rsmae_meta.std) == ([8.0, 1.0], [9.0, 2.0])
    with use_bands(enc, ["B8A", "B02"]):
        assert_close(sub(x[:, :2]), enc(x[:, :2]))
    with pytest.raises(BandError, match="'SAR_VV' has no wavelength"):
        load_backbone(path, bands=["B04", "SAR_VV"])

    # timm's own loader rebuilds it from the file too
    model = timm.create_model("rsmae_vit_test", pretrained=True, pretrained_cfg_overlay={"file": str(path)})
    assert isinstance(model.patch_embed, SpectralPatchEmbed) and torch.equal(model.eval()(x), enc(x))


def test_conv_backbones_keep_format_version_2(tmp_path: Path) -> None:
    """Older rsmae reads conv backbones: they are written without patch_embed, as version 2."""
    conv = create_encoder("vit_test", in_chans=13, img_size=IMG, patch_size=PATCH)
    path = save_backbone(conv, tmp_path / "conv.safetensors", _meta())
    with safe_open(str(path), framework="pt") as f:
        data = json.loads(f.metadata()["rsmae"])
    assert data["format_version"] == 2 and "patch_embed" not in data
    assert read_backbone_meta(path).patch_embed == "conv"
    grouped = BackboneMeta.from_json(_meta(encoder_kwargs={"band_groups": [[0, 1], [2]]}).to_json())
    assert grouped.patch_embed == "grouped"
    with pytest.raises(WeightsError, match="patch_embed='wave'"):
        _meta(patch_embed="wave")
    with pytest.raises(WeightsError, match="spectral_embed options"):
        _meta(encoder_kwargs={"spectral_embed": {}})
