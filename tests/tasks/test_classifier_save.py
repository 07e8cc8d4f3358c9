"""A tuned scene classifier saved as one file (``save_classifier``) and rebuilt from it alone; the evaluation
CLI's tuned protocols write it under ``--out``."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from rsmae.errors import WeightsError
from rsmae.evaluation.classification import evaluate_classification
from rsmae.models import BackboneMeta, create_encoder, save_backbone
from rsmae.tasks.finetune import FinetuneTask, load_classifier, save_classifier
from tests.conftest import EUROSAT
from tests.predict.predict_helpers import S2

CLASSES = ["Forest", "River", "SeaLake"]
META = BackboneMeta(preset="vit_test", img_size=32, patch_size=8, in_chans=13, bands=S2, sensor="s2-l1c",
                    mean=[1500.0] * 13, std=[600.0] * 13, gsd=10.0)


def _task(pool: str = "avg") -> FinetuneTask:
    torch.manual_seed(0)
    encoder = create_encoder("vit_test", in_chans=13, img_size=32, patch_size=8)
    task = FinetuneTask(encoder, len(CLASSES), tune=1, lr=3e-4, pool=pool, seed=3)
    with torch.no_grad():
        task.head.fc.weight.normal_(0.0, 0.5)
    return task.eval()


@pytest.mark.parametrize("pool", ["avg", "cls"])
def test_a_saved_classifier_rebuilds_from_its_file_alone(tmp_path: Path, pool: str) -> None:
    task = _task(pool)
    path = save_classifier(task, tmp_path / "sub" / "classifier.safetensors", META, CLASSES)
    loaded, classes = load_classifier(path)
    x = torch.rand(3, 13, 32, 32) * 3000
    assert classes == CLASSES and not loaded.training
    assert torch.allclose(loaded(x), task(x), atol=1e-6)
    assert loaded.encoder.rsmae_meta.mean == META.mean and loaded.encoder.rsmae_meta.bands == S2
    assert loaded.hparams.pool == pool and loaded.hparams.lr == 3e-4 and loaded.tune == 1


def test_save_refuses_class_names_that_do_not_match_the_head(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="2 class names for 3 outputs"):
        save_classifier(_task(), tmp_path / "c.safetensors", META, CLASSES[:2])


def test_load_refuses_other_files_and_foreign_metadata_naming_the_file(tmp_path: Path) -> None:
    backbone = save_backbone(create_encoder("vit_test", in_chans=13, img_size=32, patch_size=8),
                             tmp_path / "backbone.safetensors", META)
    with pytest.raises(WeightsError, match=re.escape(f"{backbone}: no classifier metadata")):
        load_classifier(backbone)
    with pytest.raises(WeightsError, match="no such classifier"):
        load_classifier(tmp_path / "missing.safetensors")
    path = save_classifier(_task(), tmp_path / "c.safetensors", META, CLASSES)
    with safe_open(str(path), framework="pt") as f:
        meta, state = dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}
    info = json.loads(meta["rsmae_classifier"])
    info["task"]["checkpoint_path"] = "/elsewhere/weights.pt"
    tampered = tmp_path / "tampered.safetensors"
    save_file(state, str(tampered), metadata={**meta, "rsmae_classifier": json.dumps(info)})
    refused = f"{tampered}: classifier metadata key(s) ['checkpoint_path'] refused"
    with pytest.raises(WeightsError, match=re.escape(refused)):
        load_classifier(tampered)


def test_a_tuned_protocol_saves_the_classifier_under_out(tmp_path: Path) -> None:
    backbone = save_backbone(create_encoder("vit_test", in_chans=13, img_size=64, patch_size=8),
                             tmp_path / "backbone.safetensors",
                             dataclasses.replace(META, img_size=64))
    result = evaluate_classification(backbone, "last1", EUROSAT / "train", EUROSAT / "test", epochs=1,
                                     batch_size=64, precision="32-true", out_dir=tmp_path / "tuned",
                                     progress=False, accelerator="cpu")
    task, classes = load_classifier(result["classifier_path"])
    assert classes == sorted(p.name for p in (EUROSAT / "train").iterdir() if p.is_dir())
    assert task.encoder.rsmae_meta.mean == META.mean and task.encoder.rsmae_meta.img_size == 64
    assert task.tune == 1 and task.head.fc.out_features == 10
