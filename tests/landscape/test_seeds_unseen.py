"""Issue 21: training seeds aggregated with the direction seeds; probe and classification losses on
EuroSAT test images (no model trained on them) with the probe head fitted on EuroSAT train."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rsmae.datasets import EuroSAT
from rsmae.errors import LandscapeError
from rsmae.landscape import Surface
from rsmae.landscape.config import DataSpec, LandscapeConfig, ModelSpec
from rsmae.landscape.inputs import Classifier, LoadedModel, build_objective, objective_images, probe_data
from rsmae.landscape.report import Measures, summarise, table_rows
from rsmae.landscape.study import run_study
from rsmae.models import BackboneMeta, create_encoder, save_backbone
from rsmae.tasks.finetune import PooledHead
from tests.conftest import EUROSAT

BANDS = list(EuroSAT.all_bands)
INFO = {"bands": BANDS, "sensor": EuroSAT.sensor, "mean": [1500.0] * 13, "std": [1000.0] * 13, "img_size": 64}


def _bowl(scale: float) -> Surface:
    xs = np.linspace(-1, 1, 5)
    xx, yy = np.meshgrid(xs, xs)
    return Surface(1.0 + scale * (xx**2 + yy**2), xs, xs.copy(), {})


def test_rows_aggregate_training_seeds_and_the_sentence_names_the_spread() -> None:
    # per training seed the direction seeds agree closely, but the training seeds differ a lot
    def seeds(name: str, scales: tuple[float, ...]) -> list[Measures]:
        return [Measures(name, "probe", 1.0, [_bowl(s), _bowl(s + 0.01)], seed=i)
                for i, s in enumerate(scales)]

    flat, sharp = seeds("flat", (0.2, 0.6, 1.0)), seeds("sharp", (0.7, 1.1, 1.5))
    rows = table_rows([*flat, *sharp], threshold=0.1)
    assert [(r["model"], r["training_seeds"], r["surface_seeds"], r["surfaces"]) for r in rows] == [
        ("flat", 3, 2, 6), ("sharp", 3, 2, 6)]
    rises = [float((b.values - b.centre).mean()) for m in flat for b in m.surfaces]
    assert rows[0]["mean_rise"] == pytest.approx(np.mean(rises))
    assert rows[0]["mean_rise_std"] == pytest.approx(np.std(rises, ddof=1))
    (sentence,) = summarise(rows)
    assert "indistinguishable" in sentence and "flatter" not in sentence
    assert "within the spread over 3 training seeds × 2 direction seeds" in sentence
    # one training seed each: the direction seeds alone would have ranked them
    (one,) = summarise(table_rows([flat[0], sharp[0]], threshold=0.1))
    assert "flat is flatter than sharp" in one and "beyond the spread over 2 direction seeds" in one


def test_models_sharing_a_name_need_seeds() -> None:
    base = {"out": "x", "models": [{"name": "A", "kind": "backbone", "path": "a0", "seed": 0},
                                    {"name": "A", "kind": "backbone", "path": "a1", "seed": 1}]}
    cfg = LandscapeConfig.from_dict(base)
    assert [m.label for m in cfg.models] == ["A_s0", "A_s1"] and cfg.data.probe_eval_split == "test"
    with pytest.raises(LandscapeError, match="give each a seed"):
        unseeded = {**base["models"][0], "seed": None}
        LandscapeConfig.from_dict({**base, "models": [unseeded, base["models"][1]]})
    assert LandscapeConfig.from_dict({**base, "models": base["models"][:1]}).models[0].seed == 0


def _encoder(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_encoder("vit_test", in_chans=13, img_size=64, patch_size=16).eval()


def test_probe_and_classification_losses_on_unseen_images() -> None:
    data = DataSpec(eurosat=str(EUROSAT), probe_samples=10, probe_steps=5, batch_size=10)
    enc = _encoder(0)
    model = LoadedModel(ModelSpec("A", "backbone", "a"), enc, enc, INFO)
    probe = build_objective("probe", model, data)
    test_x, test_y = probe_data(data, INFO, "test")
    train_x, train_y = probe_data(data, INFO, "train")
    assert torch.equal(probe.labels, test_y) and probe.options["eval_samples"] == 10
    with torch.no_grad():
        expected = F.cross_entropy(probe.head(enc.forward_features(test_x)[:, 0]), test_y)
        on_train = F.cross_entropy(probe.head(enc.forward_features(train_x)[:, 0]), train_y)
        assert float(probe(probe.params)) == pytest.approx(float(expected), rel=1e-4)
    assert abs(float(expected) - float(on_train)) > 1e-3  # the two splits give different losses
    same = build_objective("probe", model, DataSpec(**{**data.__dict__, "probe_eval_split": "train"}))
    assert torch.equal(same.labels, train_y) and "eval_samples" not in same.options  # the old objective
    clf = LoadedModel(ModelSpec("S", "classifier", "s", head="h"), Classifier(enc, PooledHead(64, 10)), enc,
                      INFO)
    assert torch.equal(build_objective("classification", clf, data).labels, test_y)
    images = objective_images(data)
    assert "fitted on EuroSAT train" in images["probe"] and "loss on EuroSAT test" in images["probe"]
    assert images["classification"].startswith("EuroSAT test")
    assert "no model trained on them" in images["probe"]



def test_study_with_two_training_seeds(tmp_path: Path) -> None:
    meta = BackboneMeta("vit_test", 64, 16, 13, BANDS, EuroSAT.sensor, INFO["mean"], INFO["std"], 10.0)
    files = [save_backbone(_encoder(s), tmp_path / f"b{s}.safetensors", meta) for s in range(3)]
    cfg = LandscapeConfig.from_dict({
        "out": str(tmp_path / "out"),
        "models": [{"name": "A", "kind": "backbone", "path": str(files[0]), "seed": 0},
                   {"name": "A", "kind": "backbone", "path": str(files[1]), "seed": 1},
                   {"name": "B", "kind": "backbone", "path": str(files[2])}],
        "objectives": ["probe"], "grid": {"size": 3}, "directions": {"seeds": [0]},
        "data": {"eurosat": str(EUROSAT), "probe_samples": 10, "probe_steps": 5, "batch_size": 10},
        "hessian": {"enabled": False}, "noise": {"sigmas": [0.1], "draws": 2}, "chunk_size": 3,
        "plots_per_model": False})
    result = run_study(cfg, progress=False)
    assert [(m.model, m.seed) for m in result.measures] == [("A", 0), ("A", 1), ("B", None)]
    assert (result.out / "surfaces" / "A_s1__probe__seed0.npz").is_file()
    table = result.table.read_text()
    assert "| A | probe | 2 × 1 |" in table and "| B | probe | 1 × 1 |" in table
    assert "loss on EuroSAT test" in table and "training seeds per model: A 2, B 1" in table
    assert len(result.csv.read_text().splitlines()) == 3
    (sentence,) = result.summary  # B has one training seed x one direction seed: no spread to rank against
    assert "B and A are not ranked" in sentence and "B has one surface (no spread)" in sentence
