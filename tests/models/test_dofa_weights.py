"""DOFA and Copernicus-FM state dicts (torchgeo's keys) warm-start the any-sensor encoder (issue 24).

The files are written here from torchgeo's own modules at a tiny size (64 wide, 2 blocks, 8 px
patches); nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.testing import assert_close

from rsmae.bands import get_sensor
from rsmae.errors import BandError, WeightsError
from rsmae.models import BackboneMeta, create_encoder, load_backbone, save_backbone, use_bands
from rsmae.models.dofa import load_copernicusfm, load_dofa, map_keys
from rsmae.models.layers import sincos_pos_embed_2d
from rsmae.models.registry import load_weights
from rsmae.models.spectral import band_spectrum

dofa_mod = pytest.importorskip("torchgeo.models.dofa")
cfm_mod = pytest.importorskip("torchgeo.models.copernicusfm")

L1C = list(get_sensor("s2-l1c").names)
OLI = ["B2", "B3", "B4", "B5", "B6", "B7"]  # fed the EuroSAT B02, B03, B04, B8A, B11, B12
OLI_FROM_S2 = [1, 2, 3, 8, 11, 12]
SIZE = {"img_size": 32, "patch_size": 8, "embed_dim": 64, "depth": 2, "num_heads": 2}


def _with_sincos(model: torch.nn.Module) -> torch.nn.Module:
    """torchgeo leaves pos_embed at zero (the released files hold the MAE sin-cos table): fill it."""
    with torch.no_grad():
        model.pos_embed[0, 1:] = sincos_pos_embed_2d(4, 4, 64)
    return model.eval()


@pytest.fixture(scope="module")
def dofa(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.Module, Path]:
    torch.manual_seed(0)
    model = _with_sincos(dofa_mod.DOFA(num_classes=10, **SIZE))
    path = tmp_path_factory.mktemp("dofa") / "dofa_tiny.pth"
    torch.save(model.state_dict(), path)
    return model, path


@pytest.fixture(scope="module")
def copernicus(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.Module, Path]:
    torch.manual_seed(1)
    model = _with_sincos(cfm_mod.CopernicusFM(**SIZE))
    with torch.no_grad():  # torchgeo starts the metadata tokens at zero; make the fold visible
        for name in ("coord_token", "scale_token", "time_token"):
            getattr(model, name).normal_()
    path = tmp_path_factory.mktemp("cfm") / "copernicusfm_tiny.pth"
    torch.save(model.state_dict(), path)
    return model, path


def _dofa_kernels(model: torch.nn.Module, bands: list[str], sensor: str) -> tuple[Tensor, Tensor]:
    """DOFA's own conv weight (D, C, K, K) and bias for ``bands``, computed by torchgeo's modules."""
    embed = model.patch_embed
    waves = torch.tensor([band_spectrum(b, sensor)[0] for b in bands]) * 1000
    with torch.no_grad():
        weight, bias = embed.weight_generator(embed.fclayer(dofa_mod.position_embedding(128, waves)))
    return weight.view(len(bands), 8, 8, 64).permute(3, 0, 1, 2) * 0.01, bias * 0.01


def test_every_key_is_mapped_or_reported_and_mapped_tensors_are_the_files(dofa: tuple) -> None:
    model, path = dofa
    state = torch.load(path, weights_only=True)
    encoder_state, _, report = map_keys(state, "dofa", path)
    assert report.unaccounted(list(state)) == []
    assert (len(report.mapped), len(report.reported)) == (28, 24)  # cls, pos, 24 block tensors, fc_norm
    assert report.mapped["fc_norm.weight"] == "norm.weight"
    assert report.reported["head.weight"].startswith("dropped")
    generator = [k for k in state if k.startswith("patch_embed.")]
    assert all(report.reported[k].startswith("kernel generator") for k in generator)
    loaded = load_dofa(path, img_size=32).state_dict()
    for src, dst in report.mapped.items():
        assert torch.equal(loaded[dst], state[src]), src
    assert set(encoder_state) == set(report.mapped.values())


def test_generated_kernels_are_dofas_on_the_loaded_bands_and_each_sensor(dofa: tuple, tiles: Tensor) -> None:
    model, path = dofa
    encoder = load_dofa(path, img_size=32).eval()
    for bands, sensor in ((L1C, "s2-l1c"), (list(get_sensor("landsat-oli").names), "landsat-oli")):
        weight, bias = encoder.patch_embed.conv_params([f"{sensor}:{b}" for b in bands])
        ref_weight, ref_bias = _dofa_kernels(model, bands, sensor)
        assert_close(weight, ref_weight, atol=1e-6, rtol=1e-4)
        assert_close(bias, ref_bias, atol=1e-6, rtol=1e-4)
    with torch.no_grad():  # the tokens are DOFA's conv without its one-pixel padding
        ref = F.conv2d(tiles, *_dofa_kernels(model, L1C, "s2-l1c"), stride=8).flatten(2).transpose(1, 2)
        assert_close(encoder.patch_embed(tiles), ref, atol=1e-5, rtol=1e-4)


def test_features_are_finite_for_sentinel2_and_landsat_band_names(dofa: tuple, tiles: Tensor) -> None:
    _, path = dofa
    encoder = load_dofa(path, img_size=32).eval()
    landsat = tiles[:, OLI_FROM_S2]
    with torch.no_grad():
        s2 = encoder.forward_features(tiles)
        with use_bands(encoder, OLI, sensor="landsat-oli"):
            oli = encoder.forward_features(landsat)
        # loaded for these 6 bands, the kernels are those DOFA makes for the 6 (not for all 9 OLI bands)
        direct = load_dofa(path, img_size=32, bands=[f"landsat-oli:{b}" for b in OLI]).eval()
        assert_close(direct.patch_embed.conv_params(direct.patch_embed.bands)[0],
                     _dofa_kernels(dofa[0], OLI, "landsat-oli")[0], atol=1e-6, rtol=1e-4)
        subset = direct.forward_features(landsat)
    for feats in (s2, oli, subset):
        assert feats.shape == (4, 17, 64) and feats.isfinite().all()
    assert encoder.rsmae_meta.patch_embed == "spectral" and encoder.rsmae_meta.bands == L1C


def test_unknown_band_is_named(dofa: tuple) -> None:
    with pytest.raises(BandError, match="'B99'"):
        load_dofa(dofa[1], img_size=32, bands=["B04", "B99"], sensor="s2-l1c")


def test_a_file_of_another_format_is_refused_naming_the_file(dofa: tuple, copernicus: tuple,
                                                              tmp_path: Path) -> None:
    vit = tmp_path / "plain_vit.pth"
    torch.save(create_encoder("vit_test", in_chans=13, img_size=32, patch_size=8).state_dict(), vit)
    with pytest.raises(WeightsError, match=rf"{vit}.*not 'dofa' weights.*'timm', 'torchgeo' or 'rsmae'"):
        load_dofa(vit, img_size=32)
    with pytest.raises(WeightsError, match=rf"{copernicus[1]}.*format 'copernicusfm'"):
        load_dofa(copernicus[1], img_size=32)
    with pytest.raises(WeightsError, match=rf"{dofa[1]}.*format 'dofa'"):
        load_weights(dofa[1], "copernicusfm", img_size=32)


def test_unknown_keys_fail_unless_not_strict(dofa: tuple, tmp_path: Path) -> None:
    state = torch.load(dofa[1], weights_only=True)
    state["extra.weight"] = torch.zeros(3)
    path = tmp_path / "extra.pth"
    torch.save({"model": state}, path)  # wrapped, as checkpoints are
    assert map_keys(state, "dofa")[2].reported["extra.weight"].startswith("unknown")
    with pytest.raises(WeightsError, match=rf"{path}.*extra.weight.*strict=False"):
        load_dofa(path, img_size=32)
    load_dofa(path, img_size=32, strict=False)


def test_another_grid_regenerates_the_sincos_table(dofa: tuple) -> None:
    encoder = load_dofa(dofa[1], img_size=64, patch_size=8)
    assert_close(encoder.pos_embed[0, 1:], sincos_pos_embed_2d(8, 8, 64))


def test_exported_backbone_loads_on_any_bands(dofa: tuple, tmp_path: Path, tiles: Tensor) -> None:
    encoder = load_weights(dofa[1], "dofa", img_size=32).eval()
    out = save_backbone(encoder, tmp_path / "dofa.safetensors", encoder.rsmae_meta)
    tm = ["B1", "B2", "B3", "B4", "B5", "B7"]
    again = load_backbone(out, bands=tm, sensor="landsat-tm").eval()
    x = tiles[:, OLI_FROM_S2]
    with torch.no_grad(), use_bands(encoder, tm, sensor="landsat-tm"):
        assert_close(again.forward_features(x), encoder.forward_features(x))


def test_copernicusfm_maps_its_spectral_generator_and_folds_unknown_metadata(copernicus: tuple,
                                                                           tiles: Tensor) -> None:
    model, path = copernicus
    state = torch.load(path, weights_only=True)
    _, _, report = map_keys(state, "copernicusfm", path)
    assert report.unaccounted(list(state)) == []
    # reported: 22 of the spectral generator, 24 of the variable one, 9 of the metadata encoding
    assert (len(report.mapped), len(report.reported)) == (28, 55)
    assert report.reported["patch_embed_variable.language_proj.weight"].startswith("variable")
    assert report.reported["coord_fc.weight"].startswith("metadata")
    encoder = load_copernicusfm(path, img_size=32).eval()
    const = sum(getattr(model, f"{p}_fc")(getattr(model, f"{p}_token")) for p in ("coord", "scale", "time"))
    embed = model.patch_embed_spectral
    spectra = torch.tensor([band_spectrum(b, "s2-l1c") for b in L1C]) * 1000
    with torch.no_grad():
        assert_close(encoder.cls_token, model.cls_token + const)
        waves = (embed.spectrum_central_expansion(spectra[:, 0], 128)
                 + embed.spectrum_bandwidth_expansion(spectra[:, 1], 128))
        weight, bias = embed.weight_generator(embed.fclayer(waves))
        ours_w, ours_b = encoder.patch_embed.conv_params(L1C)
        assert_close(ours_w, weight.view(13, 8, 8, 64).permute(3, 0, 1, 2) * 0.01, atol=1e-6, rtol=1e-4)
        assert_close(ours_b, bias * 0.01 + const.flatten(), atol=1e-6, rtol=1e-4)
        assert encoder.forward_features(tiles).isfinite().all()


def test_a_fixed_band_backbone_warm_starts_the_spectral_embedding(tmp_path: Path, tiles: Tensor) -> None:
    torch.manual_seed(0)
    conv = create_encoder("vit_test", in_chans=13, img_size=32, patch_size=8).eval()
    meta = BackboneMeta(preset="vit_test", img_size=32, patch_size=8, in_chans=13, bands=L1C,
                        sensor="s2-l1c", mean=[0.0] * 13, std=[1.0] * 13, gsd=10.0)
    path = save_backbone(conv, tmp_path / "conv.safetensors", meta)
    spectral = load_weights(path, "rsmae_spectral").eval()
    assert spectral.rsmae_meta.patch_embed == "spectral" and spectral.rsmae_meta.mean == [0.0] * 13
    with torch.no_grad():  # on its own bands it is the backbone
        assert_close(spectral.forward_features(tiles), conv.forward_features(tiles), atol=1e-5, rtol=1e-4)
        with use_bands(spectral, OLI, sensor="landsat-oli"):
            assert spectral.forward_features(tiles[:, OLI_FROM_S2]).isfinite().all()
    out = save_backbone(spectral, tmp_path / "spectral.safetensors", spectral.rsmae_meta)
    assert load_weights(out, "rsmae_spectral", bands=OLI, sensor="landsat-oli").patch_embed.in_chans == 6
