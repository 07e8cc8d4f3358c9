"""Scene-classification transfer: trainable parts, cached features, label fractions, metrics, protocols."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from rsmae.bands import get_sensor
from rsmae.errors import BandError, InputNotFoundError
from rsmae.evaluation import configure_trainable, count_trainable, freeze_eval
from rsmae.evaluation.classification import evaluate_classification
from rsmae.evaluation.data import label_subset, load_for_task, stratified_split
from rsmae.evaluation.features import cached_features, file_digest
from rsmae.evaluation.metrics import classification_metrics
from rsmae.models import BackboneMeta, create_encoder, load_backbone, save_backbone
from rsmae.tasks.finetune import FinetuneTask
from tests.conftest import EUROSAT, load_script

S2 = list(get_sensor("s2-l1c").names)


def _encoder(depth: int = 4, bands: list[str] = S2, seed: int = 0):
    torch.manual_seed(seed)
    return create_encoder("vit_test", in_chans=len(bands), img_size=64, patch_size=16, depth=depth,
                          drop_path_rate=0.0)


def _backbone(path: Path, bands: list[str] = S2, sensor: str = "s2-l1c", seed: int = 0,
              stats: bool = False) -> Path:
    enc = _encoder(2, bands, seed)
    mean = [1000.0] * len(bands) if stats else None
    std = [500.0] * len(bands) if stats else None
    meta = BackboneMeta(preset="vit_test", img_size=64, patch_size=16, in_chans=len(bands), bands=bands,
                        sensor=sensor, mean=mean, std=std, gsd=10.0, encoder_kwargs={"depth": 2})
    return save_backbone(enc, path, meta)


def _block_trainable(enc) -> list[bool]:
    return [any(p.requires_grad for p in b.parameters()) for b in enc.blocks]


def test_last_k_trains_exactly_k_blocks_and_frozen_parts_stay_in_eval() -> None:
    enc = _encoder(depth=4)
    assert configure_trainable(enc, "frozen") == 0 == count_trainable(enc)
    configure_trainable(enc, 2)
    assert _block_trainable(enc) == [False, False, True, True]
    assert enc.norm.weight.requires_grad and not enc.patch_embed.proj.weight.requires_grad
    assert not enc.pos_embed.requires_grad and not enc.cls_token.requires_grad
    configure_trainable(enc, "mlp")
    trainable = {n for n, p in enc.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in enc.named_parameters() if n.startswith(("blocks.3.mlp.", "norm."))}
    configure_trainable(enc, "full")
    assert all(p.requires_grad for n, p in enc.named_parameters() if n != "pos_embed")
    assert not enc.pos_embed.requires_grad  # the fixed sin-cos table never trains
    configure_trainable(enc, 1)
    enc.train()
    freeze_eval(enc)
    assert not enc.blocks[0].training and not enc.patch_embed.training and enc.blocks[3].training


def test_frozen_blocks_get_no_gradient_and_do_not_move() -> None:
    enc = _encoder(depth=3)
    task = FinetuneTask(enc, num_classes=4, tune=1, drop_path=0.2, lr=1e-2, crop_scale=None)
    before = {n: p.detach().clone() for n, p in enc.named_parameters()}
    task.train()
    assert not task.encoder.blocks[0].training and task.encoder.blocks[2].training
    opt = torch.optim.SGD([p for p in task.parameters() if p.requires_grad], lr=1.0)
    x, y = torch.randn(4, 13, 64, 64), torch.tensor([0, 1, 2, 3])
    torch.nn.functional.cross_entropy(task(x), y).backward()
    opt.step()
    for name, param in enc.named_parameters():
        moved = not torch.equal(before[name], param.detach())
        tuned = name.startswith(("blocks.2.", "norm."))
        assert param.grad is None or tuned, name
        assert moved == tuned or (tuned and "bias" in name), name
    cls = FinetuneTask(_encoder(depth=2), num_classes=4, tune="full", pool="cls")
    assert cls(x).shape == (4, 4) and isinstance(cls.head.norm, torch.nn.Identity)


def test_cached_features_equal_fresh_and_follow_the_backbone_file(tmp_path: Path) -> None:
    path = _backbone(tmp_path / "b.safetensors")
    enc, _ = load_for_task(path, S2, "s2-l1c", 64)
    images = torch.randn(6, 13, 64, 64, generator=torch.Generator().manual_seed(1))
    fresh = cached_features(enc, images, backbone_digest=file_digest(path), cache_dir=None)
    first = cached_features(enc, images, backbone_digest=file_digest(path), cache_dir=tmp_path / "cache")
    again = cached_features(enc, images, backbone_digest=file_digest(path), cache_dir=tmp_path / "cache")
    torch.testing.assert_close(first, fresh)
    torch.testing.assert_close(again, first)
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 1
    _backbone(path, seed=1)  # the file changes: the old entry must not be reused
    enc2, _ = load_for_task(path, S2, "s2-l1c", 64)
    changed = cached_features(enc2, images, backbone_digest=file_digest(path), cache_dir=tmp_path / "cache")
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 2 and not torch.allclose(changed, first)


def test_label_fractions_are_stratified_and_reproducible() -> None:
    labels = torch.arange(100) % 4  # 25 per class
    a, b = label_subset(labels, "25%", seed=3), label_subset(labels, "25%", seed=3)
    assert torch.equal(a, b) and not torch.equal(a, label_subset(labels, "25%", seed=4))
    assert torch.bincount(labels[a]).tolist() == [7, 7, 7, 7]  # ceil(0.25 * 25)
    assert torch.bincount(labels[label_subset(labels, "5-shot", 0)]).tolist() == [5] * 4
    assert len(label_subset(labels, "100%", 0)) == 100
    keep, held = stratified_split(labels, 0.2, seed=0)
    assert torch.bincount(labels[held]).tolist() == [5] * 4 and not set(keep.tolist()) & set(held.tolist())
    with pytest.raises(ValueError, match="label fraction"):
        label_subset(labels, "150%", 0)
    with pytest.raises(ValueError, match="'abc': give a share in"):
        label_subset(labels, "abc", 0)


def test_metrics_against_hand_computed_values(tmp_path: Path) -> None:
    target = torch.tensor([0, 0, 0, 1, 1, 2])
    pred = torch.tensor([0, 0, 1, 1, 0, 2])
    m = classification_metrics(pred, target, ["a", "b", "c", "d"], tmp_path)
    assert m["accuracy"] == pytest.approx(4 / 6)
    expected = {"a": pytest.approx(2 / 3), "b": pytest.approx(0.5), "c": 1.0, "d": None}
    assert m["per_class_accuracy"] == expected
    rows = Path(m["confusion_matrix"]).read_text().splitlines()
    assert rows[1] == "a,2,1,0,0" and rows[2] == "b,1,1,0,0"


def test_band_mismatch_is_refused_or_adapted_and_logged(tmp_path: Path) -> None:
    rgb = _backbone(tmp_path / "rgb.safetensors", bands=["R", "G", "B"], sensor="rgb", stats=True)
    with pytest.raises(BandError, match="not all in the data's bands"):
        load_for_task(rgb, S2, "s2-l1c", 64, adapt=False)
    enc, note = load_for_task(rgb, S2, "s2-l1c", 64)
    assert enc.patch_embed.proj.in_channels == 13 and "adapted by band name" in note
    assert enc.rsmae_meta.mean is None  # RGB statistics are not Sentinel-2 statistics


@pytest.mark.slow
def test_protocols_on_real_eurosat(tmp_path: Path) -> None:
    path = _backbone(tmp_path / "b.safetensors", stats=True)
    root = dict(train_root=EUROSAT / "train", test_root=EUROSAT / "test", cache_dir=tmp_path / "cache")
    knn = evaluate_classification(path, "knn", **root, out_dir=tmp_path / "knn")
    linear = evaluate_classification(path, "linear", **root, fraction="5-shot", seed=1)
    tuned = evaluate_classification(path, "last1", **root, epochs=1, batch_size=64, precision="32-true",
                                    out_dir=tmp_path / "tuned")
    assert knn["n_test"] == 54 and knn["n_val"] + 172 == 216 and linear["n_train"] == 50
    for r in (knn, linear, tuned):
        assert 0.1 <= r["accuracy"] <= 1.0 and r["wall_s"] > 0, r
        json.dumps(r)  # every result is JSON
    assert Path(knn["confusion_matrix"]).is_file() and knn["trainable_params"] == 0
    assert linear["lr"] in (1e-3, 3e-3, 1e-2, 3e-2) and linear["trainable_params"] == 64 * 10 + 10
    assert tuned["images_per_s"] > 0 and 0 < tuned["mfu"] < 1.5 and tuned["gflop_per_image"] > 0
    saved = load_backbone(tuned["model_path"])  # the supervised model of the landscape study
    assert saved.rsmae_meta.mean == [1000.0] * 13 and (tmp_path / "tuned" / "head.safetensors").is_file()
    assert not torch.equal(saved.blocks[1].mlp.fc1.weight, load_backbone(path).blocks[1].mlp.fc1.weight)
    with pytest.raises(InputNotFoundError, match="no class folders"):
        evaluate_classification(path, "knn", tmp_path / "none", EUROSAT / "test")


def test_evaluate_pipeline_prints_json_last_and_exits_2_on_bad_input(tmp_path: Path, capsys) -> None:
    evaluate = load_script("pipelines/evaluate.py")

    path = _backbone(tmp_path / "b.safetensors", stats=True)
    assert evaluate.main(["--backbone", str(path), "--protocol", "knn", "--root", str(EUROSAT),
                          "--cache-dir", "", "--out", str(tmp_path / "out")]) == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last["protocol"] == "knn" and (tmp_path / "out" / "metrics.json").is_file()
    assert evaluate.main(["--backbone", str(tmp_path / "none.safetensors"), "--protocol", "knn",
                          "--root", str(EUROSAT)]) == 2
    assert "none.safetensors" in capsys.readouterr().err
    assert evaluate.main(["--task", "oscd", "--test-root", str(tmp_path / "no_oscd")]) == 2
    assert "no_oscd" in capsys.readouterr().err
