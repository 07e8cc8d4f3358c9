"""BigEarthNet-S2 multi-label transfer through torchgeo's dataset class, on the 6 real sample patches."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from rsmae.datasets.bigearthnet import load_bigearthnet
from rsmae.errors import InputNotFoundError
from rsmae.evaluation.multilabel import evaluate_multilabel, multilabel_metrics
from tests.conftest import load_script


def test_samples_load_through_torchgeo_in_the_bigearthnet_band_order(tmp_path: Path,
                                                                       bigearthnet_layout) -> None:
    dataset = load_bigearthnet(bigearthnet_layout(tmp_path), "train")
    images = torch.stack([dataset[i]["image"] for i in range(len(dataset))])
    labels = torch.stack([dataset[i]["label"] for i in range(len(dataset))])
    assert images.shape == (3, 12, 120, 120) and labels.shape == (3, 19) and len(dataset.classes) == 19
    assert images.dtype == torch.float32 and labels.dtype == torch.int64
    assert labels.sum(1).min() >= 1  # every patch has a label
    # B09 (water vapour, 60 m) is the 10th band: smooth and bright next to B02 (blue, 10 m)
    assert images[:, 9].mean() > images[:, 1].mean()


@pytest.mark.parametrize("protocol", ["linear", "knn"])
def test_l1c_backbone_scores_bigearthnet_with_logged_adaptation(tmp_path: Path, protocol: str,
                                                                bigearthnet_layout,
                                                                multilabel_backbone) -> None:
    root = bigearthnet_layout(tmp_path / "ben")
    result = evaluate_multilabel(multilabel_backbone(tmp_path / "b.safetensors", 8), protocol, root)
    assert 0.0 <= result["map"] <= 1.0 and result["n_test"] == 2 and result["n_train"] == 3
    assert "adapted by band name" in result["adaptation"] and "training split" in result["adaptation"]
    assert "B10" not in result["bands"] and len(result["bands"]) == 12
    scored = [v for v in result["per_class_ap"].values() if v is not None]
    assert len(scored) == result["classes_scored"] and math.isclose(sum(scored) / len(scored), result["map"],
                                                                      rel_tol=1e-6)


# The metrics of the 6 samples before the splits were streamed (evaluate_multilabel as of 41017b3, which
# stacked each whole split in memory): streaming in chunks of any size gives exactly these.
BEFORE = {"linear": {"map": 0.6666666865348816, "map_micro": 0.2108440101146698, "f1_micro": 0.0,
                     "lr": 0.001, "val_map": 1.0},
          "knn": {"map": 0.75, "map_micro": 0.30921053886413574, "f1_micro": 0.1666666716337204, "k": 20}}


@pytest.mark.slow
@pytest.mark.parametrize("protocol", ["linear", "knn"])
def test_streamed_splits_score_as_the_whole_splits_did(tmp_path: Path, protocol: str,
                                                      monkeypatch: pytest.MonkeyPatch, bigearthnet_layout,
                                                      multilabel_backbone) -> None:
    import torchgeo.datasets

    import rsmae.evaluation.multilabel as multilabel

    root, backbone = bigearthnet_layout(tmp_path / "ben"), multilabel_backbone(tmp_path / "b.safetensors", 8)
    reads: list[int] = []
    load_image = torchgeo.datasets.BigEarthNet._load_image
    monkeypatch.setattr(torchgeo.datasets.BigEarthNet, "_load_image",
                        lambda self, index: reads.append(index) or load_image(self, index))
    assert len(load_bigearthnet(root, "train")) == 3 and not reads  # opening a split reads no patch
    held: list[int] = []
    extract = multilabel.cached_features
    monkeypatch.setattr(multilabel, "cached_features", lambda enc, images, **kw: held.append(len(images))
                        or extract(enc, images, **kw))
    for chunk_size in (256, 2):
        held.clear()
        result = evaluate_multilabel(backbone, protocol, root, chunk_size=chunk_size, accelerator="cpu")
        assert {key: result[key] for key in BEFORE[protocol]} == BEFORE[protocol], chunk_size
        assert max(held) <= chunk_size and sum(held) == 6 and result["device"] == "cpu"
    assert held == [2, 1, 1, 2]  # train 2 + 1, val 1, test 2: never a whole split at once


def test_patch16_backbone_gets_whole_patches(tmp_path: Path, bigearthnet_layout, multilabel_backbone) -> None:
    root = bigearthnet_layout(tmp_path / "ben")
    result = evaluate_multilabel(multilabel_backbone(tmp_path / "b.safetensors", 16), "knn", root)
    assert "resized from 120 to 128 px" in result["adaptation"]


def test_map_matches_hand_computed_values() -> None:
    scores = torch.tensor([[0.9, 0.1, 0.3], [0.2, 0.8, 0.4], [0.7, 0.6, 0.2]])
    target = torch.tensor([[1, 0, 0], [0, 1, 0], [0, 1, 0]])
    m = multilabel_metrics(scores, target, ["a", "b", "c"])
    # class a: positive ranked first -> AP 1; class b: positives at ranks 1 and 2 -> AP 1; c has none
    assert m["classes_scored"] == 2 and m["per_class_ap"]["c"] is None
    assert math.isclose(m["map"], 1.0)
    scores, target = torch.tensor([[0.1, 0.5], [0.9, 0.5]]), torch.tensor([[1, 1], [0, 1]])
    worse = multilabel_metrics(scores, target, ["a", "b"])
    assert math.isclose(worse["per_class_ap"]["a"], 0.5)  # the positive ranked second: precision 1/2
    assert math.isclose(worse["map"], 0.75)


def test_not_a_bigearthnet_folder_names_what_is_missing(tmp_path: Path, bigearthnet_layout) -> None:
    (tmp_path / "bigearthnet-train.csv").write_text("x,y\n")
    with pytest.raises(InputNotFoundError, match="missing bigearthnet-val.csv.*BigEarthNet-v1.0"):
        load_bigearthnet(tmp_path, "train")
    root = bigearthnet_layout(tmp_path / "ben")
    (root / "bigearthnet-test.csv").write_text("S2X_not_there,S1\n")
    with pytest.raises(InputNotFoundError, match="lists S2X_not_there"):
        load_bigearthnet(root, "test")


def test_pipeline_scores_bigearthnet_and_names_a_bad_root(tmp_path: Path, capsys, bigearthnet_layout,
                                                          multilabel_backbone) -> None:
    import json

    main = load_script("pipelines/evaluate.py").main

    backbone = str(multilabel_backbone(tmp_path / "b.safetensors", 8))
    root = bigearthnet_layout(tmp_path / "ben")
    assert main(["--task", "bigearthnet", "--backbone", backbone, "--protocol", "knn", "--root", str(root),
                 "--cache-dir", ""]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert json.loads(last)["task"] == "bigearthnet" and 0 <= json.loads(last)["map"] <= 1
    base = ["--task", "bigearthnet", "--backbone", backbone, "--protocol"]
    assert main([*base, "knn"]) == 2
    assert "needs --root" in capsys.readouterr().err
    assert main([*base, "full", "--root", str(root)]) == 2
    assert "choose one of knn, linear" in capsys.readouterr().err
    assert main([*base, "knn", "--root", str(tmp_path)]) == 2
    assert f"{tmp_path}: not a BigEarthNet-S2 v1.0 folder" in capsys.readouterr().err
