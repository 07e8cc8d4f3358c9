"""No cache or fingerprint outlives its inputs: pretraining runs keyed by config contents and store
contents (not paths), converted external backbones by their source's bytes, feature-cache entries and
grid cells by the code version, the resolved precision and the data's contents."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from rsmae.evaluation import features
from rsmae.experiments import backbones as tb
from rsmae.experiments import cells, runs
from rsmae.experiments import sweep as landscape_sweep
from rsmae.experiments.config import GridConfig
from rsmae.experiments.inits import add_external
from rsmae.models import create_encoder
from rsmae.store import TileStore
from rsmae.tasks.precision import default_precision
from rsmae.tiling import TileConfig, tile_scenes
from tests.conftest import EUROSAT


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 EuroSAT train images (one class), one 64-px tile each."""
    out = tmp_path_factory.mktemp("stale") / "forest.zarr"
    tile_scenes([str(EUROSAT / "train" / "Forest")], out, TileConfig(tile_size=64, band_order="eurosat"))
    return out


def _retiled_same_counts(store: Path, out: Path) -> Path:
    """A copy of ``store`` as a re-tiling with the same scene and tile counts but other pixels leaves it."""
    shutil.copytree(store, out)
    opened = TileStore.open(out, mode="r+")
    committed = opened.attrs["committed"]
    committed["stats"]["B01"]["mean"] += 1.0
    opened.update_attrs(committed=committed, stats=committed["stats"])
    return out


def _fake_call(calls: list) -> object:
    def call(cmd: list, threads: int | None = None) -> float:
        calls.append([str(c) for c in cmd])
        folder = Path(cmd[cmd.index("--trainer.default_root_dir") + 1])
        (folder / "checkpoints").mkdir(parents=True)
        (folder / "checkpoints" / "last.ckpt").write_bytes(b"ckpt")
        (folder / "backbone.safetensors").write_bytes(b"weights")
        (folder / "metrics.csv").write_text("step,train/loss\n9,0.5\n")
        return 1.0
    return call


def test_backbone_runs_follow_config_and_store_contents_not_paths(tmp_path: Path, store: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list = []
    monkeypatch.setattr(runs, "run_command", _fake_call(calls))
    configs = Path(shutil.copytree(tb.CONFIGS, tmp_path / "configs"))
    monkeypatch.setattr(tb, "CONFIGS", configs)
    run, out = tb.Run("rs_mae", "rs_mae.yaml", "s2_l1c", 10), tmp_path / "out"
    tb.pretrain(run, {"s2_l1c": store}, out)
    tb.pretrain(run, {"s2_l1c": store}, out)
    assert len(calls) == 1  # done
    # the same contents elsewhere: still done
    monkeypatch.setattr(tb, "CONFIGS", Path(shutil.copytree(configs, tmp_path / "moved")))
    moved_store = Path(shutil.copytree(store, tmp_path / "moved_store.zarr"))
    tb.pretrain(run, {"s2_l1c": moved_store}, out)
    assert len(calls) == 1
    # an edited config (same path): a new backbone
    override = tb.CONFIGS / "rs_mae.yaml"
    override.write_text(override.read_text() + "model:\n  mask_ratio: 0.6\n")
    tb.pretrain(run, {"s2_l1c": moved_store}, out)
    assert len(calls) == 2
    # a store tiled again with the same counts but other pixels: a new backbone
    tb.pretrain(run, {"s2_l1c": _retiled_same_counts(store, tmp_path / "retiled.zarr")}, out)
    assert len(calls) == 3
    # an unreadable record (killed while written by the old code) is not done
    (out / "rs_mae" / "run.json").write_text('{"steps": 10, "fing')
    tb.pretrain(run, {"s2_l1c": tmp_path / "retiled.zarr"}, out)
    assert len(calls) == 4 and json.loads((out / "rs_mae" / "run.json").read_text())["steps"] == 10


def test_sweep_runs_follow_config_and_store_contents(tmp_path: Path, store: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list = []
    monkeypatch.setattr(runs, "run_command", _fake_call(calls))
    recipe = tmp_path / "a" / "base.yaml"
    recipe.parent.mkdir()
    shutil.copy(tb.CONFIGS / "base.yaml", recipe)
    cfg = {"pretrain_config": str(recipe), "store": str(store), "samples": 64, "micro_batch": 32,
           "warmup_fraction": 0.05, "runs": [{"name": "AdamW b32", "optimizer": "adamw", "batch": 32,
                                              "base_lr": 1e-3, "weight_decay": 0.05}]}
    [run] = landscape_sweep.plan(cfg)
    landscape_sweep.pretrain(run, cfg, tmp_path / "out")
    landscape_sweep.pretrain(run, cfg, tmp_path / "out")
    assert len(calls) == 1
    shutil.copytree(recipe.parent, tmp_path / "b")
    moved = {**cfg, "pretrain_config": str(tmp_path / "b" / "base.yaml")}
    landscape_sweep.pretrain(run, moved, tmp_path / "out")
    assert len(calls) == 1  # same bytes at another path
    recipe.write_text(recipe.read_text() + "\n# edited\n")
    landscape_sweep.pretrain(run, cfg, tmp_path / "out")
    assert len(calls) == 2
    (tmp_path / "out" / "adamw_b32" / "run.json").write_text("")  # unreadable: not done
    landscape_sweep.pretrain(run, cfg, tmp_path / "out")
    assert len(calls) == 3


def test_an_external_backbone_is_converted_again_when_its_source_changes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from rsmae.evaluation import interop

    converted: list = []

    def fake_import(path: Path, kind: str, out: Path, **kwargs: object) -> Path:
        converted.append(Path(path).read_bytes())
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(b"converted " + Path(path).read_bytes())
        return out

    monkeypatch.setattr(interop, "import_weights", fake_import)
    source = tmp_path / "timm.pth"
    source.write_bytes(b"v1")
    config = GridConfig(external={"timm": str(source)}, backbones_dir=str(tmp_path / "bb"), inits=[],
                        data={"sensor": "s2-l1c", "layout": "eurosat", "train_root": str(EUROSAT / "train")})
    first = add_external(config, {})["timm"]
    again = add_external(config, {})["timm"]
    assert converted == [b"v1"] and again["sha256"] == first["sha256"]
    source.write_bytes(b"v2")  # the same file name, other weights
    changed = add_external(config, {})["timm"]
    assert converted == [b"v1", b"v2"] and changed["sha256"] != first["sha256"]
    (tmp_path / "bb" / "external" / "timm.json").unlink()  # converted by an older grid: no record
    add_external(config, {})
    assert len(converted) == 3


def test_feature_key_follows_cache_version_precision_and_pooling(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    encoder = create_encoder("vit_test", in_chans=3, img_size=32, patch_size=8)
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    key = features.feature_key(encoder, images, backbone_digest="b", pool="cls")
    assert features.feature_key(encoder, images.clone(), backbone_digest="b", pool="cls") == key
    assert features.feature_key(encoder, images, backbone_digest="b", pool="mean") != key
    assert features.feature_key(encoder, images, backbone_digest="c", pool="cls") != key
    assert features.feature_key(encoder.double(), images, backbone_digest="b", pool="cls") != key
    encoder.float()
    monkeypatch.setattr(features, "CACHE_VERSION", features.CACHE_VERSION + 1)
    assert features.feature_key(encoder, images, backbone_digest="b", pool="cls") != key


def _grid_config(tmp: Path, train: Path, test: Path, **finetune: object) -> GridConfig:
    data = {"train_root": str(train), "test_root": str(test), "sensor": "s2-l1c"}
    return GridConfig.from_dict({"data": data, "finetune": {"epochs": 1, **finetune},
                                 "cells_dir": str(tmp / "cells")})


def test_cell_key_follows_version_precision_and_data_contents(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    train = Path(shutil.copytree(EUROSAT / "train" / "River", tmp_path / "a" / "train" / "River"))
    test = Path(shutil.copytree(EUROSAT / "test" / "River", tmp_path / "a" / "test" / "River"))
    backbone = {"sha256": "abc"}
    tuned = {"init": "rs_mae", "protocol": "full", "fraction": "100%", "seed": 0}
    frozen = {**tuned, "protocol": "linear"}
    config = _grid_config(tmp_path, train.parent, test.parent)
    key = cells.fingerprint(tuned, backbone, config)
    # precision: unset and "auto" resolve as the evaluation does on this machine; explicit ones differ
    auto = _grid_config(tmp_path, train.parent, test.parent, precision="auto")
    assert cells.fingerprint(tuned, backbone, auto) == key
    local = default_precision("cuda" if torch.cuda.is_available() else "cpu")
    other = "bf16-mixed" if local == "32-true" else "32-true"
    assert cells.resolved_precision(tuned, config) == local
    assert cells.fingerprint(tuned, backbone, _grid_config(tmp_path, train.parent, test.parent,
                                                                     precision=other)) != key
    frozen_key = cells.fingerprint(frozen, backbone, config)
    assert cells.fingerprint(frozen, backbone, _grid_config(tmp_path, train.parent, test.parent,
                                                                      precision=other)) == frozen_key
    # the same data at another path: the same key; one changed image: another key
    moved = Path(shutil.copytree(tmp_path / "a", tmp_path / "b"))
    assert cells.fingerprint(tuned, backbone, _grid_config(tmp_path, moved / "train",
                                                                     moved / "test")) == key
    image = sorted((moved / "test" / "River").iterdir())[0]
    data = image.read_bytes()
    image.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))
    cells.folder_digest.cache_clear()
    assert cells.fingerprint(tuned, backbone, _grid_config(tmp_path, moved / "train",
                                                                     moved / "test")) != key
    # the code: a new cache version or a new feature-cache version
    monkeypatch.setattr(cells, "CACHE_VERSION", cells.CACHE_VERSION + 1)
    assert cells.fingerprint(tuned, backbone, config) != key
    monkeypatch.setattr(features, "CACHE_VERSION", features.CACHE_VERSION + 1)
    assert cells.fingerprint(frozen, backbone, config) != frozen_key
