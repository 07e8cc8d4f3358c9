"""k-fold fine-tuning of a backbone file: every image once, choices blind to the test fold, cache, verdict."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from rsmae.bands import get_sensor
from rsmae.datasets import EuroSAT
from rsmae.evaluation.folds import stratified_kfold
from rsmae.evaluation.kfold_finetune import FinetuneConfig, evaluate_fold, inner_holdout, tuned_protocol
from rsmae.models import BackboneMeta, create_encoder, save_backbone
from tests.conftest import EUROSAT, load_script

L1C = list(get_sensor("s2-l1c").names)
CONFIG = FinetuneConfig(lrs=(1e-3, 3e-2), epochs=2, batch_size=8, holdout=0.5, precision="32-true")


@pytest.fixture(scope="module")
def eurosat_small() -> tuple[torch.Tensor, torch.Tensor]:
    """Real EuroSAT images, 32 px crops, 6 of each of 3 classes (raw numbers, the files' band order)."""
    data = EuroSAT(EUROSAT, "train")
    keep = torch.cat([torch.nonzero(data.labels == c).flatten()[:6] for c in (0, 1, 9)])
    labels = torch.as_tensor([0, 1, 2]).repeat_interleave(6)
    return data.images[keep, :, :32, :32].float(), labels


@pytest.fixture(scope="module")
def backbone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-block vit_test S2 L1C backbone (32 px, patch 8)."""
    torch.manual_seed(0)
    encoder = create_encoder("vit_test", in_chans=13, img_size=32, patch_size=8, depth=2)
    meta = BackboneMeta(preset="vit_test", img_size=32, patch_size=8, in_chans=13, bands=L1C, sensor="s2-l1c",
                        mean=None, std=None, gsd=10.0, encoder_kwargs={"depth": 2})
    return save_backbone(encoder, tmp_path_factory.mktemp("b") / "backbone.safetensors", meta)


def _fold(backbone: Path, images: torch.Tensor, labels: torch.Tensor, fold: object, protocol: str = "last1"):
    return evaluate_fold(backbone, images, labels, fold, protocol, CONFIG, bands=EuroSAT.all_bands,
                         sensor=EuroSAT.sensor, num_classes=3)


def test_every_image_is_predicted_once_across_folds(backbone: Path, eurosat_small: tuple) -> None:
    images, labels = eurosat_small
    folds = stratified_kfold(labels.numpy(), 3, seed=0)
    results = [_fold(backbone, images, labels, f) for f in folds]
    tested = np.concatenate([r.test for r in results])
    assert sorted(tested.tolist()) == list(range(len(labels)))
    for r, f in zip(results, folds, strict=True):
        assert r.test.tolist() == f.test.tolist() and r.predictions.shape == f.test.shape
        assert set(r.predictions.tolist()) <= {0, 1, 2}
        assert r.lr in CONFIG.lrs and len(r.inner_accuracy) == len(CONFIG.lrs)


def test_the_lr_is_chosen_without_the_test_fold(backbone: Path, eurosat_small: tuple) -> None:
    images, labels = eurosat_small
    fold = stratified_kfold(labels.numpy(), 3, seed=0)[0]
    scrambled = labels.clone()
    scrambled[fold.test] = (labels[fold.test] + 1) % 3  # every test label wrong, training labels kept
    a = _fold(backbone, images, labels, fold, "full")
    b = _fold(backbone, images, scrambled, fold, "full")
    assert a.lr == b.lr and a.inner_accuracy == b.inner_accuracy
    np.testing.assert_array_equal(a.predictions, b.predictions)


def test_inner_holdout_is_stratified_and_inside_the_fold() -> None:
    labels = np.repeat(np.arange(4), 10)
    inner = inner_holdout(labels, 0.2, seed=0)
    assert np.bincount(labels[inner.test]).tolist() == [2, 2, 2, 2]
    assert sorted([*inner.train, *inner.test]) == list(range(40))
    with pytest.raises(ValueError, match="holdout=0.7"):
        inner_holdout(labels, 0.7, seed=0)


@pytest.mark.parametrize("name", ["linear", "knn", "head", "last0", "svm"])
def test_frozen_and_unknown_protocols_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match=repr(name)):
        tuned_protocol(name)


def test_a_resumed_run_reuses_the_cached_cells(backbone: Path, eurosat_small: tuple, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    bench = load_script("benchmarks/transfer_kfold.py")
    images, labels = eurosat_small
    fold = stratified_kfold(labels.numpy(), 3, seed=0)[1]
    first, cached = bench.cell_rows(backbone, "last1", fold, images, labels, CONFIG, tmp_path)
    assert not cached and [r["image"] for r in first] == fold.test.tolist()
    assert len(list(tmp_path.glob("last1-fold1-*.json"))) == 1

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a cached cell was fitted again")

    monkeypatch.setattr(bench, "evaluate_fold", refuse)
    again, cached = bench.cell_rows(backbone, "last1", fold, images, labels, CONFIG, tmp_path)
    assert cached and again == first
    with pytest.raises(AssertionError, match="fitted again"):  # another recipe is another cell
        bench.cell_rows(backbone, "last1", fold, images, labels, FinetuneConfig(epochs=3), tmp_path)


def _rows(correct: list[int], protocol: str = "last1") -> list[dict]:
    return [{"protocol": protocol, "fold": f"fold{i % 2}", "image": i, "prediction": 0, "correct": c,
             "lr": 1e-3} for i, c in enumerate(correct)]


def test_the_table_says_no_clear_difference_when_the_interval_includes_zero() -> None:
    bench = load_script("benchmarks/transfer_kfold.py")
    base = [1, 0] * 30
    close = base.copy()
    close[1] = 1  # one image more: the paired interval includes 0
    results = {bench.RANDOM: _rows(base), "close": _rows(close), "better": _rows([1] * 60)}
    floors = {bench.SPECTRAL: _rows([1, 1, 0] * 20, "spectral"), bench.RCF: _rows([1, 1, 1, 0] * 15, "rcf")}
    text = "\n".join(bench.tables(results, floors, ["last1"], 60,
                                   ["fold0", "fold1"], (1e-3, 3e-3)))
    assert "No clear difference between close and random init: +1.7 points" in text
    assert "better is higher than random init by 50.0 points" in text
    assert "| 0.001 0.001 |" in text  # the LR chosen per fold
    assert "| RCF floor (every protocol's floor, all folds) | 75.0 [" in text
    assert "better is higher than RCF floor by 25.0 points" in text
    assert "| init | accuracy % [95 % CI] | − random init [95 % CI] (McNemar p) | − spectral floor" in text
    assert "| RCF floor (same images) | 75.0 [" in text  # a row of its own, paired with the other floor
    assert "Chosen LR at the grid's edge in 6 of 6 cells (0 at its largest, 0.003; 6 at its smallest" in text


def test_a_time_limited_table_scores_the_folds_every_init_has() -> None:
    bench = load_script("benchmarks/transfer_kfold.py")
    base = _rows([1, 1, 0, 0] * 15)  # half right on each fold
    results = {bench.RANDOM: base, "half": [r for r in _rows([1] * 60) if r["fold"] == "fold0"]}
    floors = {bench.SPECTRAL: _rows([1, 1, 0] * 20, "spectral")}
    text = "\n".join(bench.tables(results, floors, ["last1", "full"], 60, ["fold0", "fold1"]))
    assert "Partial: scored on fold0 only (30 of 60 images); folds fold1 not computed" in text
    assert "half is higher than random init by 50.0 points" in text and "over 30 images" in text
    assert "## full\n\nNo fold is done for every init yet" in text


def test_the_table_compares_every_two_pretrained_inits_on_the_same_images() -> None:
    bench = load_script("benchmarks/transfer_kfold.py")
    base = [1, 0] * 30
    close = base.copy()
    close[1] = 1
    results = {bench.RANDOM: _rows(base), "close": _rows(close), "better": _rows([1] * 60),
               "same": _rows(close)}
    spectral = {bench.SPECTRAL: _rows([1, 1, 0] * 20, "spectral")}
    text = "\n".join(bench.tables(results, spectral, ["last1"], 60, ["fold0", "fold1"]))
    assert "### last1: between the inits (3 pairs, each paired on the same 60 images" in text
    assert "Bonferroni: each interval at 98.3 % so that all hold together with 95 %" in text
    assert "- last1: close is lower than better by 48.3 points (paired 98.3 % CI" in text
    assert "- last1: No clear difference between close and same: +0.0 points" in text
    assert "between random init and" not in text.split("between the inits")[1]  # random has its own column
    alone = {bench.RANDOM: _rows(base), "close": _rows(close)}
    assert "between the inits" not in "\n".join(bench.tables(alone, {"floor": _rows([1] * 60)}, ["last1"], 60,
                                                               ["fold0", "fold1"]))
