"""Transfer-benchmark backbones: the leak check on real stores, the Tiny-ImageNet preparation, the
shared recipe of the benchmark configs, the random init, resumable pretraining runs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from rsmae.cli import pretrain as pretrain_cli
from rsmae.errors import EvaluationLeakError, InputNotFoundError
from rsmae.experiments import backbones as tb
from rsmae.experiments import runs
from rsmae.experiments.leaks import check_no_leaks
from rsmae.models import load_backbone
from rsmae.store import TileStore
from rsmae.tiling import TileConfig, tile_scenes
from tests.conftest import DATA, EUROSAT, OSCD, load_script

EVAL_ROOTS = [EUROSAT, OSCD.parent]
TIN = DATA / "tinyimagenet64_subset"


tinyimagenet = load_script("datasets/tinyimagenet/prepare.py")
eolearn = load_script("datasets/eolearn_s2l1c/prepare.py")
corpus_leaks = load_script("benchmarks/corpus_leaks.py")


@pytest.fixture(scope="module")
def clean_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two eo-learn L1C frames (written by its prepare script), 64-px tiles: no evaluation image."""
    tmp = tmp_path_factory.mktemp("clean")
    frames = eolearn.prepare(DATA / "eolearn_s2l1c_testpatch", tmp / "eolearn")[:2]
    out = tmp / "clean.zarr"
    tile_scenes([str(f) for f in frames], out, TileConfig(tile_size=64, band_order="eolearn-l1c"))
    return out


def _eurosat_store(out: Path, files: list[Path]) -> Path:
    tile_scenes([str(f) for f in files], out, TileConfig(tile_size=64, band_order="eurosat"))
    return out


def test_leak_check_accepts_a_clean_store(clean_store: Path) -> None:
    report = check_no_leaks([clean_store], EVAL_ROOTS)
    assert report["leaks"] == 0 and report["store_files"] == 2 and report["eval_files"] > 270


def test_leak_check_refuses_an_evaluation_image(tmp_path: Path, clean_store: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    tif = sorted((EUROSAT / "test" / "Forest").glob("*.tif"))[0]
    direct = _eurosat_store(tmp_path / "direct.zarr", [tif])  # read from the evaluation folder itself
    with pytest.raises(EvaluationLeakError, match=rf"{tif.name}.*direct\.zarr is an evaluation image"):
        check_no_leaks([clean_store, direct], EVAL_ROOTS)
    copy = tmp_path / "elsewhere" / "renamed.tif"  # the same bytes under another name
    copy.parent.mkdir()
    shutil.copy(tif, copy)
    copied = _eurosat_store(tmp_path / "copied.zarr", [copy])
    with pytest.raises(EvaluationLeakError, match=rf"renamed\.tif \(a copy of {tif.resolve()}\)"):
        check_no_leaks([clean_store, copied], EVAL_ROOTS)
    assert corpus_leaks.main([str(copied), "--eval", *map(str, EVAL_ROOTS)]) == 2
    assert "renamed.tif" in capsys.readouterr().err
    with pytest.raises(InputNotFoundError, match="no evaluation files"):
        check_no_leaks([clean_store], [tmp_path / "empty"])


def test_tinyimagenet_prepare_tiles_hold_the_images(tmp_path: Path) -> None:
    """Ten train images (the 9th is > 10 % black) -> ten 64-px tiles with exactly their pixels."""
    paths = tinyimagenet.prepare(TIN, tmp_path / "tin", limit=10)
    out = tmp_path / "tin.zarr"
    tile_scenes([str(tmp_path / "tin")], out, TileConfig(tile_size=64, sensor="rgb", nodata=float("nan")))
    with np.load(TIN / "tinyimagenet64_subset.npz") as data:
        images, labels, files = data["x_train"], data["y_train"], data["train_files"]
    chosen = tinyimagenet.select(labels, 10)
    assert len(set(labels[chosen])) == 10  # one image of each of the first classes
    assert (images[chosen[8]] == 0).all(-1).mean() > 0.1  # black areas are kept, not nodata
    store = TileStore.open(out)
    assert store.band_names == ["R", "G", "B"] and store.attrs["tiles"] == 10
    ids = store.scenes(["id"])["id"].tolist()
    table = store.slot_table()
    slots = store.index()
    tiles = store.read_tiles(slots)
    for i, path in zip(chosen, paths, strict=True):
        wnid, name = Path(str(files[i])).parts[1], Path(str(files[i])).stem
        assert path == tmp_path / "tin" / wnid / f"{name}.png"
        k = ids.index(f"{wnid}/{name}")
        tile = tiles[list(table["scene"][slots]).index(k)]
        np.testing.assert_array_equal(tile, images[i].transpose(2, 0, 1))
    assert np.asarray(Image.open(paths[0])).shape == (64, 64, 3)


def _printed(override: str, capsys: pytest.CaptureFixture[str]) -> dict:
    with pytest.raises(SystemExit):
        pretrain_cli.main(["fit", "--config", str(tb.CONFIGS / "base.yaml"),
                           "--config", str(tb.CONFIGS / override), "--print_config"])
    return yaml.safe_load(capsys.readouterr().out)


def test_benchmark_configs_share_one_recipe_and_budget(capsys: pytest.CaptureFixture[str]) -> None:
    planned = tb.plan_runs(1501)
    steps = {r.name: r.steps for r in planned}
    assert steps.pop("natural_half") + steps.pop("natural_to_rs") == 1501  # natural N/2, then S2 N/2
    assert set(steps.values()) == {1501}
    configs = {o: _printed(o, capsys) for o in sorted({r.override for r in planned})}
    allowed = {"method", "consistency_weight", "teacher_momentum", "init_backbone"}
    ref = configs["rs_mae.yaml"]
    for name, cfg in configs.items():
        diff = {k for k in ref["model"] if ref["model"][k] != cfg["model"][k]}
        assert diff <= allowed, (name, diff)
        assert {k: v for k, v in cfg["data"].items() if k != "stores"} == \
               {k: v for k, v in ref["data"].items() if k != "stores"}
        assert cfg["data"]["val_fraction"] == 0.0 and cfg["data"]["batch_size"] == 32
        classes = [c["class_path"].rsplit(".", 1)[-1] for c in cfg["trainer"]["callbacks"]]
        assert ("ProbeCallback" in classes) == (name != "natural_mae.yaml"), name
        assert "BackboneExport" in classes
    assert configs["rs_rcmae.yaml"]["model"]["method"] == "rcmae"
    assert ref["model"]["preset"] == "vit_tiny" and ref["model"]["patch_size"] == 8


@pytest.mark.slow
def test_random_backbone_has_the_corpus_bands_and_statistics(tmp_path: Path, clean_store: Path) -> None:
    path = tb.random_backbone(tmp_path, clean_store)
    encoder = load_backbone(path)
    meta, attrs = encoder.rsmae_meta, TileStore.open(clean_store).attrs
    assert meta.bands == [b["name"] for b in attrs["bands"]] and meta.sensor == "s2-l1c"
    assert meta.preset == "vit_tiny" and meta.patch_size == 8 and meta.img_size == 64
    np.testing.assert_allclose(meta.mean, [attrs["stats"][b]["mean"] for b in meta.bands], rtol=1e-6)
    again = load_backbone(tb.random_backbone(tmp_path / "again", clean_store))  # seed 0: reproducible
    for key, value in encoder.state_dict().items():
        torch.testing.assert_close(again.state_dict()[key], value, rtol=0, atol=0)


def test_pretrain_runs_once_and_again_when_its_inputs_change(tmp_path: Path, clean_store: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[list[str]] = []

    def fake_call(cmd: list, threads: int | None = None) -> float:
        calls.append([str(c) for c in cmd])
        folder = Path(cmd[cmd.index("--trainer.default_root_dir") + 1])
        folder.mkdir(parents=True)  # the run folder was cleared first
        (folder / "backbone.safetensors").write_bytes(b"weights")
        (folder / "metrics.csv").write_text("step,train/loss\n9,0.5\n10,0.7\n")
        return 1.0

    monkeypatch.setattr(runs, "run_command", fake_call)
    folder = tmp_path / "rs_mae"
    run = tb.Run("rs_mae", "rs_mae.yaml", "s2_l1c", 10, probe=True)
    stores = {"s2_l1c": clean_store}
    folder.mkdir()  # an unfinished earlier run leaves files: they go
    (folder / "stale.txt").write_text("x")
    record = tb.pretrain(run, stores, tmp_path)
    assert len(calls) == 1 and not (folder / "stale.txt").exists()
    assert record["final_loss"] == 0.6 and record["images"] == 2 and record["steps"] == 10
    assert "--trainer.callbacks.init_args.root" in calls[0] and "--model.init_backbone" not in calls[0]
    assert tb.pretrain(run, stores, tmp_path) == record and len(calls) == 1  # done: skipped
    tb.pretrain(tb.Run("rs_mae", "rs_mae.yaml", "s2_l1c", 20), stores, tmp_path)  # other steps: rerun
    assert len(calls) == 2 and json.loads((folder / "run.json").read_text())["steps"] == 20
