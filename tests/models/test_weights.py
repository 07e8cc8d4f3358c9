"""Backbone save/load, foreign weights (official MAE, timm, torchgeo) and band adaptation."""

from __future__ import annotations

import argparse
import ast
import importlib.util
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import rasterio
import timm
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from timm.layers import resample_abs_pos_embed, resample_patch_embed
from torch.testing import assert_close

from rsmae.bands import LAYOUTS, get_sensor
from rsmae.errors import BandError, WeightsError
from rsmae.models.adapt import adapt_patch_embed, checkpoint_filter_fn
from rsmae.models.foreign import (
    IMAGENET_MEAN,
    TORCHGEO_S2_BANDS,
    load_official_mae,
    load_timm_weights,
    load_torchgeo_vit,
)
from rsmae.models.vit import create_encoder
from rsmae.models.weights import BackboneMeta, load_backbone, save_backbone
from tests.conftest import EUROSAT

L1C = list(get_sensor("s2-l1c").names)
L2A = list(get_sensor("s2-l2a").names)
IMG, PATCH = 32, 8


def _randomise(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Random values in every trainable tensor, so a tensor that did not load shows."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    return model.eval()


def _encoder(in_chans: int, seed: int = 0, img_size: int = IMG, **kw: object) -> torch.nn.Module:
    enc = create_encoder("vit_test", in_chans=in_chans, img_size=img_size, patch_size=PATCH, **kw)
    return _randomise(enc, seed)


def _meta(bands: list[str], sensor: str | None, **kw: object) -> BackboneMeta:
    n = len(bands)
    fields = dict(preset="vit_test", img_size=IMG, patch_size=PATCH, in_chans=n, bands=bands,
                  sensor=sensor, mean=[100.0 + i for i in range(n)],
                  std=[10.0 + i for i in range(n)], gsd=10.0, encoder_kwargs={}, source="test")
    return BackboneMeta(**{**fields, **kw})


def _x(in_chans: int, size: int = IMG, seed: int = 1) -> torch.Tensor:
    return torch.randn(2, in_chans, size, size, generator=torch.Generator().manual_seed(seed))


def _kernel(model: torch.nn.Module) -> torch.Tensor:
    return model.patch_embed.proj.weight.detach()


def _official_sincos(grid: int, dim: int) -> torch.Tensor:
    """facebookresearch/mae util/pos_embed.py, cls slot included: first half encodes columns."""
    g = np.arange(grid, dtype=np.float32)
    mesh = np.stack(np.meshgrid(g, g), axis=0).reshape(2, 1, grid, grid)

    def one(d: int, pos: np.ndarray) -> np.ndarray:
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float32) / (d / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    emb = np.concatenate([one(dim // 2, mesh[0]), one(dim // 2, mesh[1])], axis=1)
    return torch.from_numpy(np.concatenate([np.zeros([1, dim]), emb], axis=0)).float()[None]


@pytest.fixture
def saved13(tmp_path: Path) -> tuple[Path, torch.nn.Module, BackboneMeta]:
    enc, meta = _encoder(13), _meta(L1C, "s2-l1c")
    return save_backbone(enc, tmp_path / "b13.safetensors", meta), enc, meta


@pytest.fixture
def official(tmp_path: Path) -> tuple[Path, torch.nn.Module, dict]:
    """An official-MAE pretraining checkpoint of a vit_test-sized model, decoder included."""
    ref = _encoder(3, seed=5)
    with torch.no_grad():
        ref.pos_embed.copy_(_official_sincos(IMG // PATCH, ref.embed_dim))
    sd = {k: v.clone() for k, v in ref.state_dict().items()}
    extra = {"mask_token": torch.randn(1, 1, 32), "decoder_embed.weight": torch.randn(32, 64),
             "decoder_pos_embed": torch.randn(1, 17, 32), "decoder_norm.weight": torch.ones(32),
             "decoder_blocks.0.attn.qkv.weight": torch.randn(96, 32),
             "decoder_pred.weight": torch.randn(PATCH * PATCH * 3, 32)}
    path = tmp_path / "mae_pretrain_vit_test.pth"
    torch.save({"model": {**sd, **extra}, "epoch": 799, "args": argparse.Namespace(lr=1e-3)}, path)
    return path, ref, sd


def test_save_load_round_trip(saved13: tuple, tmp_path: Path) -> None:
    path, enc, meta = saved13
    loaded = load_backbone(path)
    x = _x(13)
    assert torch.equal(loaded(x), enc(x))
    assert not torch.allclose(_encoder(13, seed=9)(x), enc(x))  # the check can fail
    assert loaded.rsmae_meta == meta
    assert BackboneMeta.from_json(meta.to_json()) == meta
    # timm's cfg carries the bands and the data statistics (in stored-value units), as the metadata
    cfg = loaded.pretrained_cfg
    assert cfg["mean"] == tuple(meta.mean) and cfg["std"] == tuple(meta.std)
    assert cfg["bands"] == tuple(meta.bands)
    assert timm.data.resolve_data_config({}, model=loaded)["mean"] == tuple(meta.mean)
    assert loaded.pretrained_cfg["input_size"] == (13, IMG, IMG)
    with safe_open(str(path), framework="pt") as f:
        assert BackboneMeta.from_json(f.metadata()["rsmae"]) == meta
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b13.safetensors"]  # no temp file left


def test_save_refuses_meta_that_does_not_rebuild(tmp_path: Path) -> None:
    enc = _encoder(13, depth=1)
    with pytest.raises(WeightsError, match="does not rebuild"):
        save_backbone(enc, tmp_path / "a.safetensors", _meta(L1C, "s2-l1c"))
    assert not (tmp_path / "a.safetensors").exists()
    with pytest.raises(WeightsError, match="in_chans=12"):
        _meta(L1C, "s2-l1c", in_chans=12)
    meta = _meta(L1C, "s2-l1c", encoder_kwargs={"depth": 1})
    assert len(load_backbone(save_backbone(enc, tmp_path / "a.safetensors", meta)).blocks) == 1


def test_official_mae_rgb(official: tuple) -> None:
    path, ref, _ = official
    model = load_official_mae(path, img_size=IMG)
    x = _x(3)
    assert torch.equal(model(x), ref(x))
    assert model.rsmae_meta.bands == ["R", "G", "B"] and model.rsmae_meta.sensor == "rgb"
    assert model.rsmae_meta.mean == list(IMAGENET_MEAN)


def test_official_mae_into_sentinel2(official: tuple, caplog: pytest.LogCaptureFixture) -> None:
    path, _, sd = official
    with caplog.at_level(logging.INFO, logger="rsmae.models.adapt"):
        model = load_official_mae(path, bands=L1C, img_size=IMG)
    w, rgb, scale = _kernel(model), sd["patch_embed.proj.weight"], 3 / 13
    for src, dst in ((0, "B04"), (1, "B03"), (2, "B02")):
        assert_close(w[:, L1C.index(dst)], rgb[:, src] * scale, rtol=0, atol=0)
    others = [i for i, b in enumerate(L1C) if b not in ("B04", "B03", "B02")]
    assert_close(w[:, others], (rgb.mean(1, keepdim=True) * scale).expand(-1, 10, -1, -1))
    assert torch.equal(model.blocks[1].mlp.fc2.weight, sd["blocks.1.mlp.fc2.weight"])
    meta = model.rsmae_meta
    assert meta.bands == L1C and meta.sensor == "s2-l1c" and meta.mean is None
    assert "'B04': 'R'" in caplog.text and "B10" in caplog.text


def test_official_mae_pos_embed_regenerated(official: tuple) -> None:
    path, _, sd = official
    ours = create_encoder("vit_test", in_chans=3, img_size=IMG, patch_size=PATCH).pos_embed
    assert torch.allclose(sd["pos_embed"], ours)  # rsmae uses the official MAE layout (x first)
    model = load_official_mae(path, img_size=64)
    assert_close(model.pos_embed.detach(), _official_sincos(64 // PATCH, 64), atol=1e-5, rtol=0)
    assert model(_x(3, size=64)).shape == (2, 64)


def test_l1c_to_l2a_and_back(saved13: tuple, tmp_path: Path) -> None:
    path, enc, meta = saved13
    keep = [L1C.index(b) for b in L2A]
    m12 = load_backbone(path, bands=L2A, sensor="s2-l2a")
    assert_close(_kernel(m12), _kernel(enc)[:, keep] * (13 / 12))
    assert torch.equal(m12.blocks[0].attn.qkv.weight, enc.blocks[0].attn.qkv.weight)
    assert m12.rsmae_meta.bands == L2A and m12.rsmae_meta.sensor == "s2-l2a"
    assert m12.rsmae_meta.mean == [meta.mean[i] for i in keep]
    back = load_backbone(save_backbone(m12, tmp_path / "b12.safetensors", m12.rsmae_meta),
                         bands=L1C, sensor="s2-l1c")
    w12, w13 = _kernel(m12), _kernel(back)
    assert_close(w13[:, keep], w12 * (12 / 13))
    assert_close(w13[:, L1C.index("B10")], w12.mean(1) * (12 / 13))
    assert back.rsmae_meta.mean is None  # no statistics for B10


def test_eurosat_order_permutes_kernels(saved13: tuple) -> None:
    """A real EuroSAT tile (B8A stored last) fed as is == the canonical model on canonical order."""
    path, enc, meta = saved13
    eurosat = list(LAYOUTS["eurosat"][1])
    assert eurosat != L1C and sorted(eurosat) == sorted(L1C)
    perm = [L1C.index(b) for b in eurosat]
    model = load_backbone(path, bands=eurosat)
    assert torch.equal(_kernel(model), _kernel(enc)[:, perm])
    tile = next((EUROSAT / "test" / "Forest").glob("*.tif"))
    with rasterio.open(tile) as src:
        pixels = torch.from_numpy(src.read().astype(np.float32) / 10000)[None, :, :IMG, :IMG]
    canonical = pixels[:, [eurosat.index(b) for b in L1C]]
    assert_close(model(pixels), enc(canonical), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(enc(pixels), enc(canonical), atol=1e-3)
    assert model.rsmae_meta.bands == eurosat
    assert model.rsmae_meta.mean == [meta.mean[i] for i in perm]


def test_pos_embed_and_patch_resampling(saved13: tuple) -> None:
    path, _, _ = saved13
    model = load_backbone(path, img_size=64)
    fresh = create_encoder("vit_test", in_chans=13, img_size=64, patch_size=PATCH)
    assert_close(model.pos_embed, fresh.pos_embed)
    assert model.rsmae_meta.img_size == 64 and model(_x(13, size=64)).shape == (2, 64)
    learned = _encoder(3).state_dict()  # a random (learned-like) pos_embed: interpolated
    learned["pos_embed"] = torch.randn(1, 17, 64)
    big = create_encoder("vit_test", in_chans=3, img_size=64, patch_size=PATCH)
    out = checkpoint_filter_fn(learned, big)
    expected = resample_abs_pos_embed(learned["pos_embed"], [8, 8], num_prefix_tokens=1)
    assert_close(out["pos_embed"], expected)
    small_patch = create_encoder("vit_test", in_chans=3, img_size=IMG, patch_size=4)
    out = checkpoint_filter_fn(learned, small_patch)
    kernel = learned["patch_embed.proj.weight"]
    assert_close(out["patch_embed.proj.weight"], resample_patch_embed(kernel, [4, 4]))
    assert out["pos_embed"].shape == small_patch.pos_embed.shape


def test_nothing_loaded_raises(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pth"
    torch.save({"fc.weight": torch.randn(3, 3), "bn.running_mean": torch.zeros(3)}, junk)
    for strict in (True, False):
        with pytest.raises(WeightsError, match="junk.pth"):
            load_timm_weights(junk, preset="vit_test", img_size=IMG, strict=strict)
    fake = tmp_path / "fake.safetensors"
    meta = {"rsmae": _meta(L1C, "s2-l1c").to_json()}
    save_file({"fc.weight": torch.randn(3, 3)}, str(fake), metadata=meta)
    with pytest.raises(WeightsError, match="no parameter of the encoder"):
        load_backbone(fake, strict=False)


def test_strict_missing_and_extra_keys(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    ref = _encoder(3)
    sd = ref.state_dict()
    del sd["blocks.1.mlp.fc2.weight"]
    path = tmp_path / "partial.pth"
    torch.save(sd, path)
    with pytest.raises(WeightsError, match=r"partial\.pth.*blocks\.1\.mlp\.fc2\.weight"):
        load_timm_weights(path, img_size=IMG)
    with caplog.at_level(logging.WARNING):
        model = load_timm_weights(path, img_size=IMG, strict=False)
    assert "missing" in caplog.text and "blocks.1.mlp.fc2.weight" in caplog.text
    assert torch.equal(model.blocks[1].mlp.fc1.weight, ref.blocks[1].mlp.fc1.weight)
    deeper = tmp_path / "deeper.pth"
    torch.save(_encoder(3, depth=3).state_dict(), deeper)
    with pytest.raises(WeightsError, match=r"blocks\.2\."):
        load_timm_weights(deeper, preset="vit_test", img_size=IMG)


class _NotATensor:
    pass


def test_bad_files_raise_naming_the_path(tmp_path: Path, official: tuple) -> None:
    missing = tmp_path / "nowhere.pth"
    with pytest.raises(WeightsError, match="nowhere.pth"):
        load_backbone(missing)
    text = tmp_path / "notes.txt"
    text.write_text("not weights at all\n")
    with pytest.raises(WeightsError, match="notes.txt"):
        load_official_mae(text)
    pickled = tmp_path / "object.pth"
    torch.save({"model": {"w": torch.zeros(1)}, "obj": _NotATensor()}, pickled)
    with pytest.raises(WeightsError, match="object.pth.*weights_only"):
        load_timm_weights(pickled)
    cut = tmp_path / "cut.safetensors"
    save_backbone(_encoder(3), cut, _meta(["R", "G", "B"], "rgb"))
    cut.write_bytes(cut.read_bytes()[:500])
    with pytest.raises(WeightsError, match="cut.safetensors"):
        load_backbone(cut)
    with pytest.raises(WeightsError, match="no rsmae metadata"):
        load_backbone(official[0])


def test_wrappers_and_teacher_prefix(tmp_path: Path) -> None:
    student, teacher = _encoder(3, seed=1), _encoder(3, seed=2)
    sd = {f"model.student.encoder.{k}": v for k, v in student.state_dict().items()}
    sd |= {f"model.teacher.encoder.{k}": v for k, v in teacher.state_dict().items()}
    sd |= {"model.student.mask_token": torch.zeros(1, 1, 32),
           "model.student.decoder_embed.weight": torch.zeros(32, 64)}
    path = tmp_path / "rcmae.ckpt"
    torch.save({"state_dict": sd, "epoch": 3}, path)
    x = _x(3)
    assert torch.equal(load_timm_weights(path, img_size=IMG)(x), student(x))
    fresh = create_encoder("vit_test", in_chans=3, img_size=IMG, patch_size=PATCH)
    out = checkpoint_filter_fn(sd, fresh, prefix="teacher.encoder.")
    assert out.keys() == teacher.state_dict().keys()
    assert torch.equal(out["cls_token"], teacher.cls_token)
    clash = {"encoder.cls_token": torch.zeros(1, 1, 64), "module.cls_token": torch.ones(1, 1, 64)}
    with pytest.raises(WeightsError, match="cls_token"):
        checkpoint_filter_fn(clash, student)


def test_adapt_patch_embed_mappings() -> None:
    w13 = torch.randn(8, 13, 4, 4)
    out, report = adapt_patch_embed(w13, L1C, ["R", "G", "B"])  # Sentinel-2 -> RGB ("and back")
    assert_close(out, w13[:, [L1C.index("B04"), L1C.index("B03"), L1C.index("B02")]] * (13 / 3))
    assert report["copied"] == ["R", "G", "B"] and "B10" in report["dropped"]
    oli = list(get_sensor("landsat-oli").names)
    rgb = torch.randn(8, 3, 4, 4)
    out, report = adapt_patch_embed(rgb, ["red", "green", "blue"], oli, "landsat-oli",
                                    src_sensor="rgb")
    assert report["mapping"] == {"B2": "B", "B3": "G", "B4": "R"}
    assert_close(out[:, oli.index("B4")], rgb[:, 0] * (3 / len(oli)))
    alias, report = adapt_patch_embed(w13[:, :1], ["B08A"], ["B8A"], "s2-l1c")
    assert torch.equal(alias, w13[:, :1]) and report["initialised"] == []
    with pytest.raises(BandError, match="no band of the model"):
        adapt_patch_embed(w13[:, :1], ["B08"], ["B04"], "s2-l1c")
    with pytest.raises(BandError, match="B99"):
        adapt_patch_embed(w13, L1C, ["B99"], "s2-l1c")
    with pytest.raises(WeightsError, match="expected"):
        adapt_patch_embed(w13, L2A, L1C)


def _torchgeo_bands() -> list[str]:
    """torchgeo's ``_sentinel2_toa_bands``, read from its source (its import needs ``requests``)."""
    spec = importlib.util.find_spec("torchgeo")
    if spec is None or spec.origin is None:
        pytest.skip("torchgeo is not installed")
    models = Path(spec.origin).parent / "models"
    assert "'bands': _sentinel2_toa_bands" in (models / "vit.py").read_text()
    for node in ast.parse((models / "resnet.py").read_text()).body:
        target = getattr(node.targets[0], "id", "") if isinstance(node, ast.Assign) else ""
        if target == "_sentinel2_toa_bands":
            return ast.literal_eval(node.value)
    raise AssertionError("torchgeo no longer defines _sentinel2_toa_bands")


def test_torchgeo_vit_round_trip(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert get_sensor("s2-l1c").resolve(_torchgeo_bands()) == TORCHGEO_S2_BANDS
    tg = _randomise(timm.create_model("vit_small_patch16_224", pretrained=False, in_chans=13,
                                      embed_dim=64, depth=2, num_heads=2), seed=3)
    path = tmp_path / "B13_vits16_mae_ep99_enc.pth"
    torch.save(tg.state_dict(), path)
    model = load_torchgeo_vit(path)
    tg.reset_classifier(0)
    x = _x(13, size=224)
    assert torch.equal(model(x), tg(x))
    assert model.rsmae_meta.std == [10000.0] * 13 and model.rsmae_meta.gsd == 10.0
    again = load_backbone(save_backbone(model, tmp_path / "tg.safetensors", model.rsmae_meta))
    assert torch.equal(again(x), tg(x))
    no_norm = {k: v for k, v in tg.state_dict().items() if not k.startswith("norm.")}
    torch.save(no_norm, path)
    with caplog.at_level(logging.WARNING):
        m12 = load_torchgeo_vit(path, bands=L2A, sensor="s2-l2a", img_size=128)
    assert "norm.weight" in caplog.text and torch.equal(m12.norm.weight, torch.ones(64))
    keep = [L1C.index(b) for b in L2A]
    assert_close(_kernel(m12), _kernel(tg)[:, keep] * (13 / 12))
    assert m12.rsmae_meta.mean == [0.0] * 12 and m12.pos_embed.shape == (1, 65, 64)


# ---------------------------------------------------------------- format version, GSD settings


def test_gsd_settings_and_version_travel(tmp_path: Path) -> None:
    enc = _encoder(13)
    meta = _meta(L1C, "s2-l1c", gsd_pos_embed=True, reference_gsd=20.0)
    loaded = load_backbone(save_backbone(enc, tmp_path / "g.safetensors", meta))
    assert loaded.rsmae_meta.gsd_pos_embed is True and loaded.rsmae_meta.reference_gsd == 20.0
    assert loaded.rsmae_meta.format_version == 2
    with pytest.raises(WeightsError, match="newer"):
        BackboneMeta.from_json(meta.to_json().replace('"format_version": 2', '"format_version": 99'))


def test_old_file_without_version_loads(tmp_path: Path) -> None:
    """A file written the pre-versioning way (no format_version, no GSD settings) still loads."""
    enc = _encoder(13)
    old = {"preset": "vit_test", "img_size": IMG, "patch_size": PATCH, "in_chans": 13, "bands": L1C,
           "sensor": "s2-l1c", "mean": [1.0] * 13, "std": [2.0] * 13, "gsd": 10.0, "encoder_kwargs": {},
           "source": "rsmae mae pretraining, student encoder, global step 5"}
    path = tmp_path / "old.safetensors"
    state = {k: v.contiguous() for k, v in enc.state_dict().items()}
    save_file(state, str(path), metadata={"rsmae": json.dumps(old, sort_keys=True), "format": "pt"})
    loaded = load_backbone(path)
    x = _x(13)
    assert torch.equal(loaded(x), enc(x))
    meta = loaded.rsmae_meta
    assert (meta.format_version, meta.gsd_pos_embed, meta.reference_gsd) == (1, False, 10.0)
    again = load_backbone(save_backbone(loaded, tmp_path / "new.safetensors", meta))
    assert again.rsmae_meta.format_version == 2  # re-saved in today's layout
